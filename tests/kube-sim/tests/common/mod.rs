//! Helpers shared by kube-sim's tests: a fleet in a temp dir and kubectl runs against it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kube_sim::{Fleet, FleetOptions, GenSpec};

pub struct TestFleet {
    pub fleet: Fleet,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

pub async fn start(clusters: usize, pods: usize) -> TestFleet {
    let spec = GenSpec {
        nodes: 3,
        namespaces: 3,
        pods,
        seed: 1,
    };
    let fleet = Fleet::start_generated(FleetOptions::new(clusters), &spec)
        .await
        .expect("fleet starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    fleet
        .write_kubeconfig(&kubeconfig)
        .expect("kubeconfig written");
    TestFleet {
        fleet,
        dir,
        kubeconfig,
    }
}

/// The output of one kubectl run.
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl TestFleet {
    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args);
        c
    }

    pub fn kubectl(&self, args: &[&str]) -> Out {
        let o = self
            .kubectl_cmd(args)
            .output()
            .expect("kubectl runs (install kubernetes-client)");
        Out {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).expect("fixture written");
        p
    }
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
