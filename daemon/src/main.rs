//! kqd: parse flags, load config, start tracing, run until SIGINT or SIGTERM (SIGHUP
//! reloads the config).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use kq_daemon::ConfigSource;
use tokio_util::sync::CancellationToken;

/// jemalloc made the initial sync of 10 × 10k pods about a third faster than glibc malloc.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A background thread hands freed pages back within a second, so the initial sync's burst
/// of short-lived buffers does not stay resident for the weeks kqd runs.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// kqd watches every context of your kubeconfig files into one DuckDB file and serves it,
/// read-only, over Arrow Flight SQL on a Unix socket. Query it with `kq`.
#[derive(Parser, Debug)]
#[command(name = "kqd", version)]
struct Args {
    /// Kubeconfig file (repeat for several); default: $KUBECONFIG, else ~/.kube/config.
    #[arg(long)]
    kubeconfig: Vec<PathBuf>,
    /// Directory of the DuckDB file (kq.duckdb); default: $XDG_STATE_HOME/kq.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Unix socket to serve; default: $XDG_RUNTIME_DIR/kq/kq.sock, else /tmp/kq-$UID/kq.sock.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Log level or tracing filter (error, warn, info, debug, trace).
    #[arg(long)]
    log_level: Option<String>,
    /// Config file; default: ~/.config/kq/config.toml when it exists.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check the config and every kubeconfig file, print the contexts found and the errors
    /// per file, and exit (non-zero on errors).
    #[arg(long)]
    check_config: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let source = ConfigSource {
        file: args.config,
        kubeconfigs: args.kubeconfig,
        data_dir: args.data_dir,
        socket: args.socket,
        log_level: args.log_level,
    };
    let config = source.load()?;
    if args.check_config {
        std::process::exit(kq_daemon::check_config(&config));
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&config.log_level)
                .context("--log-level is not a valid filter")?,
        )
        .init();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("signal received");
            signals.cancel();
        });
        kq_daemon::run(config, source, shutdown).await
    })?;
    Ok(())
}
