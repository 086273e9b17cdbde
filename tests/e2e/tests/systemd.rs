//! kqd under systemd: the units pass `systemd-analyze verify`, and kqd speaks the notify
//! protocol (READY=1 once its socket accepts connections, then watchdog keepalives).

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use kq_e2e::Env;

fn unit(name: &str) -> String {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    std::fs::read_to_string(format!("{dir}/../../systemd/{name}")).expect("the unit file")
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let service = unit("kqd.service");
    let socket = unit("kqd.socket");
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
    ] {
        assert!(service.contains(line), "kqd.service has {line}");
    }
    for line in ["ListenStream=%t/kq/kq.sock", "SocketMode=0600"] {
        assert!(socket.contains(line), "kqd.socket has {line}");
    }
    let dir = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at the kqd this build made.
    let service = service.replace(
        "%h/.local/bin/kqd",
        &kq_e2e::bin("kqd").display().to_string(),
    );
    std::fs::write(dir.path().join("kqd.service"), service).unwrap();
    std::fs::write(dir.path().join("kqd.socket"), socket).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["--user", "verify"])
        .arg(dir.path().join("kqd.socket"))
        .arg(dir.path().join("kqd.service"))
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .expect("systemd-analyze runs (.ci/run installs systemd when it is missing)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    assert!(stderr.trim().is_empty(), "verify warned: {stderr}");
}

/// `kqd install` writes the units for the binary that runs it; systemd accepts them.
#[test]
fn kqd_install_writes_units_for_itself_that_systemd_verifies() {
    let kqd = kq_e2e::bin("kqd").canonicalize().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("systemd/user");
    let dry = Command::new(&kqd)
        .args(["install", "--dry-run", "--unit-dir"])
        .arg(&units)
        .output()
        .unwrap();
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let printed = String::from_utf8_lossy(&dry.stdout);
    assert!(
        printed.contains(&format!("\nExecStart={}\n", kqd.display())),
        "{printed}"
    );
    assert!(printed.contains("would run systemctl --user enable --now kqd.socket"));
    assert!(!units.exists(), "a dry run writes nothing");

    let wrote = Command::new(&kqd)
        .args(["install", "--no-enable", "--unit-dir"])
        .arg(&units)
        .output()
        .unwrap();
    assert!(
        wrote.status.success(),
        "{}",
        String::from_utf8_lossy(&wrote.stderr)
    );
    let service = std::fs::read_to_string(units.join("kqd.service")).unwrap();
    assert!(service.contains(&format!("ExecStart={}", kqd.display())));
    let runtime = tempfile::tempdir().unwrap();
    let out = Command::new("systemd-analyze")
        .args(["--user", "verify"])
        .arg(units.join("kqd.socket"))
        .arg(units.join("kqd.service"))
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    assert!(stderr.trim().is_empty(), "verify warned: {stderr}");

    let removed = Command::new(&kqd)
        .args(["uninstall", "--no-enable", "--unit-dir"])
        .arg(&units)
        .output()
        .unwrap();
    assert!(removed.status.success());
    assert!(!units.join("kqd.service").exists() && !units.join("kqd.socket").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn kqd_notifies_ready_once_listening_and_sends_watchdog_keepalives() {
    let env = Env::start(1, 5).await;
    let notify_path = env.kubeconfig.with_file_name("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // As systemd does: WATCHDOG_PID names kqd's own pid, hence the exec from a shell.
    let (cmd, log) = env.kqd_command();
    let child = Command::new("sh")
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_remove("KUBECONFIG")
        .env("HOME", env.kubeconfig.parent().unwrap())
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _kqd = kq_e2e::Kqd { child, log };

    let mut buf = [0u8; 512];
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = notify.recv(&mut buf).expect("a notification within 30 s");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.contains("READY=1") {
            assert!(
                std::os::unix::net::UnixStream::connect(&env.socket).is_ok(),
                "READY=1 came before the socket accepted connections"
            );
        }
        seen.push(msg);
    }
    assert!(
        seen.first().is_some_and(|m| m.contains("READY=1")),
        "READY=1 first: {seen:?}"
    );
}
