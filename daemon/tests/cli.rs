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

#[test]
fn check_config_lists_contexts_and_names_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c1\n  cluster: {server: 'https://10.0.0.1:6443'}\nusers:\n- name: u1\n  user: {token: t}\ncontexts:\n- name: prod\n  context: {cluster: c1, user: u1}\n- name: dev\n  context: {cluster: c1, user: u1}\n",
    )
    .unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "clusters: [ {name: \n").unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "exclude_contexts = [\"dev\"]\n").unwrap();
    let run = |files: &[&std::path::Path]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kqd"));
        cmd.arg("--check-config").arg("--config").arg(&cfg);
        for f in files {
            cmd.arg("--kubeconfig").arg(f);
        }
        cmd.env("HOME", dir.path()).output().unwrap()
    };

    let out = run(&[&good]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("context prod: https://10.0.0.1:6443 (watched"),
        "{text}"
    );
    assert!(
        text.contains("context dev: https://10.0.0.1:6443 (excluded"),
        "{text}"
    );

    let out = run(&[&good, &broken]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("kubeconfig {}: error:", broken.display())),
        "{text}"
    );
    assert!(
        text.contains("context prod"),
        "the good file still counts: {text}"
    );
}
