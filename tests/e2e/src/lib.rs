//! The end-to-end harness: a simulated fleet, a kubeconfig for it, the real `kqd` and `kq`
//! binaries started as processes, and waits on conditions with deadlines.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kube_sim::{Fleet, FleetOptions, GenSpec};

pub mod pg;
pub mod pgbouncer;
pub mod pgproxy;
pub mod registry;
pub mod terminal;

/// A built binary of this workspace (`kqd`, `kq`, `kube-sim`), next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // Tests run from target/<profile>/deps, binaries (kq-bench) from target/<profile>.
    let mut dir = exe.parent().expect("an executable has a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo test --workspace` (or `cargo build --workspace`) first",
        p.display()
    );
    p
}

/// A fleet, its kubeconfig, and room for kqd's socket and database.
pub struct Env {
    pub fleet: Fleet,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
}

/// A running kqd; killed when dropped.
pub struct Kqd {
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Kqd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Kqd {
    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        let status = self.child.wait().expect("kqd exits");
        std::mem::forget(self);
        status
    }

    /// Sends SIGTERM and waits up to `deadline` for kqd to exit: its status, or `None` if
    /// it is still running (it is then killed when dropped).
    pub async fn terminate_within(
        &mut self,
        deadline: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        self.signal(rustix::process::Signal::TERM);
        let child = &mut self.child;
        let mut status = None;
        eventually(deadline, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        })
        .await;
        status
    }

    /// Sends SIGHUP (reload the config).
    pub fn hangup(&self) {
        self.signal(rustix::process::Signal::HUP);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid =
            rustix::process::Pid::from_raw(self.child.id() as i32).expect("a child has a pid");
        let _ = rustix::process::kill_process(pid, signal);
    }

    /// What kqd has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Env {
    /// `clusters` simulated clusters of `pods` pods each.
    pub async fn start(clusters: usize, pods: usize) -> Env {
        let spec = GenSpec {
            nodes: 4,
            namespaces: 4,
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
        Env {
            fleet,
            socket: dir.path().join("run/kq.sock"),
            data_dir: dir.path().join("state"),
            kubeconfig,
            dir,
        }
    }

    /// Starts kqd on this env and waits until its socket accepts connections.
    pub async fn kqd(&self) -> Kqd {
        self.kqd_with(&[]).await
    }

    /// Starts kqd with extra environment variables (`KQ_*` settings).
    pub async fn kqd_with(&self, vars: &[(&str, &str)]) -> Kqd {
        let (mut cmd, log) = self.kqd_command();
        cmd.envs(vars.iter().copied());
        self.start_kqd(cmd, log).await
    }

    /// The command that runs kqd on this env, and the log file it writes to.
    pub fn kqd_command(&self) -> (Command, PathBuf) {
        self.kqd_command_at(&self.data_dir, &self.socket)
    }

    /// The command that runs a kqd on this env's kubeconfig with its own data directory and
    /// socket (a second kqd beside the first), and the log file it writes to.
    pub fn kqd_command_at(
        &self,
        data_dir: &std::path::Path,
        socket: &std::path::Path,
    ) -> (Command, PathBuf) {
        self.kqd_command_on(&self.kubeconfig, data_dir, socket)
    }

    /// Like [`Env::kqd_command_at`], on another kubeconfig file.
    pub fn kqd_command_on(
        &self,
        kubeconfig: &std::path::Path,
        data_dir: &std::path::Path,
        socket: &std::path::Path,
    ) -> (Command, PathBuf) {
        let log = self.dir.path().join(format!("kqd-{}.log", uuid_like()));
        let mut cmd = Command::new(bin("kqd"));
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--socket")
            .arg(socket)
            .arg("--log-level")
            // KQ_E2E_LOG_LEVEL sets another filter for a run that needs to see more (the
            // writer's batches are at trace level).
            .arg(
                std::env::var("KQ_E2E_LOG_LEVEL").unwrap_or_else(|_| "info,kq_daemon=debug".into()),
            )
            .env_remove("KUBECONFIG")
            // The image cache and docker config live under the test's HOME, never the user's.
            .env_remove("XDG_CACHE_HOME")
            .env_remove("DOCKER_CONFIG")
            .env("HOME", self.dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        (cmd, log)
    }

    /// Spawns `cmd` (from [`Env::kqd_command`]) and waits until the socket accepts
    /// connections.
    pub async fn start_kqd(&self, mut cmd: Command, log: PathBuf) -> Kqd {
        let child = cmd.spawn().expect("kqd starts");
        let kqd = Kqd { child, log };
        let sock = self.socket.clone();
        let up = eventually(Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        })
        .await;
        assert!(up, "kqd did not open its socket; log:\n{}", kqd.log());
        kqd
    }

    /// Runs `kq` with these arguments against this env's socket.
    pub async fn kq(&self, args: &[&str]) -> Output {
        self.kq_at(&self.socket, args).await
    }

    /// Starts `kq` with these arguments against this env's socket, its stdout and stderr
    /// piped, for a test that signals it or waits on it.
    pub fn spawn_kq(&self, args: &[&str]) -> std::process::Child {
        Command::new(bin("kq"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kq starts")
    }

    /// Runs `kq` with these arguments against another kqd's socket.
    pub async fn kq_at(&self, socket: &std::path::Path, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("kq"));
        cmd.arg("--socket")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null());
        tokio::task::spawn_blocking(move || cmd.output().expect("kq runs"))
            .await
            .expect("kq finished")
    }

    /// `kq -c sql --format csv`, stdout on success.
    pub async fn csv(&self, sql: &str) -> Result<String, String> {
        let o = self.kq(&["-c", sql, "--format", "csv"]).await;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// The first column of the first row `sql` gives, as CSV text; panics when there is
    /// none or kq fails.
    pub async fn first_value(&self, sql: &str) -> String {
        let csv = self.csv(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let row = csv
            .lines()
            .nth(1)
            .unwrap_or_else(|| panic!("{sql}: no row"));
        row.split(',').next().unwrap_or_default().to_string()
    }

    /// Polls `sql` until its CSV output equals `want`, or `timeout` passes; returns the last
    /// output seen.
    pub async fn wait_csv(&self, sql: &str, want: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.csv(sql).await;
            if got.as_deref() == Ok(want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "after {timeout:?}, {sql:?} gave {got:?}, wanted {want:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Env {
    /// `select context, count(*) from pods …` as the simulator says it should print.
    pub fn expected_pod_counts(&self) -> String {
        // In the order SQL's `order by 1` gives: sim-10 sorts before sim-2.
        let mut clusters: Vec<_> = self.fleet.clusters.iter().collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        let mut s = String::from("context,count_star()\n");
        for c in clusters {
            s.push_str(&format!("{},{}\n", c.name, sim_pod_uids(c).len()));
        }
        s
    }

    /// Waits for each `(sql, csv)` pair in turn, each within `timeout`.
    pub async fn wait_all(&self, checks: &[(&str, &str)], timeout: Duration) {
        for (sql, want) in checks {
            if let Err(e) = self.wait_csv(sql, want, timeout).await {
                panic!("{e}");
            }
        }
    }

    /// Waits until kq's pod counts per context equal the simulator's.
    pub async fn wait_pods_synced(&self, timeout: Duration) {
        let sql = "select context, count(*) from pods group by 1 order by 1";
        if let Err(e) = self
            .wait_csv(sql, &self.expected_pod_counts(), timeout)
            .await
        {
            panic!("{e}");
        }
    }
}

/// A name unique within this process, for log files of successive kqd runs.
fn uuid_like() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// Polls an async `cond` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually_async<F: std::future::Future<Output = bool>>(
    timeout: Duration,
    mut cond: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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

/// The simulator's truth for one cluster: sorted pod uids.
pub fn sim_pod_uids(c: &kube_sim::Cluster) -> Vec<String> {
    let mut v: Vec<String> = sim_pod_objects(c).iter().map(|p| p.uid.clone()).collect();
    v.sort();
    v
}

/// Every pod the simulator stores.
fn sim_pod_objects(c: &kube_sim::Cluster) -> Vec<std::sync::Arc<kube_sim::store::Stored>> {
    let rt = c
        .store
        .resolve_kind("v1", "Pod")
        .expect("pods are built in");
    c.store
        .list(&rt, &Default::default(), None, None)
        .expect("list")
        .items
}

/// The simulator's truth: number of containers (init, app, ephemeral) over all pods.
pub fn sim_container_count(c: &kube_sim::Cluster) -> usize {
    let rt = c
        .store
        .resolve_kind("v1", "Pod")
        .expect("pods are built in");
    c.store
        .list(&rt, &Default::default(), None, None)
        .expect("list")
        .items
        .iter()
        .map(|p| {
            let v = p.value();
            ["containers", "initContainers", "ephemeralContainers"]
                .iter()
                .map(|k| v["spec"][k].as_array().map_or(0, |a| a.len()))
                .sum::<usize>()
        })
        .sum()
}

/// The simulator's pods as (namespace, name, first container), sorted.
pub fn sim_pods(c: &kube_sim::Cluster) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = sim_pod_objects(c)
        .iter()
        .map(|p| {
            let v = p.value();
            let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
            (
                s(&v["metadata"]["namespace"]),
                s(&v["metadata"]["name"]),
                s(&v["spec"]["containers"][0]["name"]),
            )
        })
        .collect();
    v.sort();
    v
}
