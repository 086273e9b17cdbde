//! The kqd binary's own failures: a broken config file, and a database from a newer kq.

use std::process::Command;

#[test]
fn a_broken_config_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "data_dir = [not toml").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kqd"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("config file {} is invalid", cfg.display())),
        "{err}"
    );
}

#[test]
fn a_database_from_a_newer_kq_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kq.duckdb");
    {
        let conn = duckdb::Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE kq_meta (key VARCHAR PRIMARY KEY, value VARCHAR); INSERT INTO kq_meta VALUES ('schema_version', '999');")
            .unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kqd"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--socket")
        .arg(dir.path().join("kq.sock"))
        .arg("--kubeconfig")
        .arg(dir.path().join("none"))
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("schema version 999, newer than this kqd supports"),
        "{err}"
    );
    assert!(err.contains(&db.display().to_string()), "{err}");
}
