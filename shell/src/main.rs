//! kq: parse flags and run the shell; the exit status says whether everything succeeded.

use clap::Parser;

fn main() {
    let args = kq_shell::Args::parse();
    std::process::exit(kq_shell::run(args));
}
