//! The kq binary without a daemon: a clear message and a distinct exit status.

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
