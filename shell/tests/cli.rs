//! The kq binary without a daemon: a clear message and a distinct exit status; shell
//! completions and the man page.

use std::process::Command;

#[test]
fn kq_without_kqd_says_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nothing.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_kq"))
        .arg("--socket")
        .arg(&sock)
        .args(["-c", "select 1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("kqd is not running at {}", sock.display())),
        "{err}"
    );
    assert!(err.contains("start it with `kqd`"), "{err}");
}

#[test]
fn an_unreadable_script_file_is_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_kq"))
        .args(["-f", "/nonexistent/q.sql"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/q.sql"));
}

/// bash loads the completion script and binds it to kq.
#[test]
fn bash_completion_loads_and_binds_kq() {
    let script = Command::new(env!("CARGO_BIN_EXE_kq"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(script.status.success());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kq.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p kq", file.display()))
        .output()
        .unwrap();
    let bound = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && bound.contains("_kq") && bound.trim_end().ends_with(" kq"),
        "{bound}"
    );
}

/// The man page is roff that man renders, with kq's subcommands in it.
#[test]
fn the_man_page_renders() {
    let out = Command::new(env!("CARGO_BIN_EXE_kq"))
        .arg("man")
        .output()
        .unwrap();
    let roff = String::from_utf8_lossy(&out.stdout);
    assert!(
        roff.starts_with(".ie") || roff.contains(".TH kq 1"),
        "{roff}"
    );
    for sub in ["status", "incidents", "completions"] {
        assert!(roff.contains(sub), "the man page names {sub}");
    }
}
