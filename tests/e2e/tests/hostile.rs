//! kqd on a hostile workstation: programs that keep reading the kubeconfig, a umask that
//! would share the inventory, a database file that is not one, a disk that fills up, and a
//! socket that belongs to another user.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kq_e2e::{Env, Kqd, bin, eventually, eventually_async};
use kube_sim::fleet::{kubeconfig_for, write_private};
use kube_sim::scenario;

const RELOADING: &str = "a kubeconfig file changed; reloading";

fn reloads(kqd: &Kqd) -> usize {
    kqd.log().matches(RELOADING).count()
}

/// Writes a kubeconfig naming only the first `n` clusters of the fleet.
fn write_kubeconfig(env: &Env, n: usize) {
    let kc = kubeconfig_for(
        env.fleet.clusters.iter().take(n).map(|c| &**c),
        env.fleet.ca_pem(),
    );
    write_private(&env.kubeconfig, &serde_json::to_string_pretty(&kc).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_the_kubeconfig_never_reloads_it_and_an_edit_still_does_within_a_second() {
    let env = Env::start(2, 5).await;
    write_kubeconfig(&env, 1);
    let kqd = env.kqd().await;
    env.wait_csv(
        "select name, state from contexts",
        "name,state\nsim-1,ready\n",
        Duration::from_secs(20),
    )
    .await
    .unwrap();

    // Fifty kubectl runs, each of which opens and reads the kubeconfig.
    let (kubeconfig, home) = (env.kubeconfig.clone(), env.dir.path().to_path_buf());
    tokio::task::spawn_blocking(move || {
        for _ in 0..50 {
            let out = Command::new("kubectl")
                .env("KUBECONFIG", &kubeconfig)
                .env("HOME", &home)
                .args(["get", "ns", "-o", "name"])
                .output()
                .expect("kubectl runs");
            assert!(
                out.status.success(),
                "kubectl failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    })
    .await
    .unwrap();
    assert_eq!(
        reloads(&kqd),
        0,
        "kubectl's reads reloaded kqd:\n{}",
        kqd.log()
    );

    // A second kqd on the same kubeconfig, which reads it at start and on every reload of
    // its own: for 10 s, neither may reload.
    let second_dir = env.dir.path().join("second");
    let (cmd, log) = env.kqd_command_at(&second_dir.join("state"), &second_dir.join("kq.sock"));
    let second = {
        let mut cmd = cmd;
        let child = cmd.spawn().expect("the second kqd starts");
        Kqd { child, log }
    };
    let sock = second_dir.join("kq.sock");
    assert!(
        eventually(Duration::from_secs(30), || sock.exists()).await,
        "the second kqd did not open its socket:\n{}",
        second.log()
    );
    // The observation window is the point of this test: any reload within it is a failure.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        (reloads(&kqd), reloads(&second)),
        (0, 0),
        "two kqds on one kubeconfig reloaded each other; first:\n{}\nsecond:\n{}",
        kqd.log(),
        second.log()
    );
    drop(second);

    // A real edit still reloads, within a second.
    let edited = Instant::now();
    write_kubeconfig(&env, 2);
    assert!(
        eventually(Duration::from_secs(1), || reloads(&kqd) == 1).await,
        "an edit did not reload within a second:\n{}",
        kqd.log()
    );
    eprintln!("edit reloaded after {:?}", edited.elapsed());
    env.wait_csv(
        "select name from contexts order by name",
        "name\nsim-1\nsim-2\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // Rewriting the same bytes is a write, but changes nothing: no reload.
    write_kubeconfig(&env, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(reloads(&kqd), 1, "{}", kqd.log());
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn the_inventory_and_image_cache_are_private_whatever_the_umask() {
    let env = Env::start(1, 5).await;
    // An existing data directory that everyone may read, as an older kqd left it.
    std::fs::create_dir_all(&env.data_dir).unwrap();
    std::fs::set_permissions(&env.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (mut cmd, log) = env.kqd_command();
    // SAFETY: umask is async-signal-safe and touches nothing but the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
            Ok(())
        });
    }
    let kqd = env.start_kqd(cmd, log).await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let cache = env.dir.path().join(".cache/kq");
    let sqlite = cache.join("images.sqlite");
    assert!(
        eventually(Duration::from_secs(10), || sqlite.exists()).await,
        "no image cache at {}:\n{}",
        sqlite.display(),
        kqd.log()
    );
    let db = env.data_dir.join("kq.duckdb");
    let wal = env.data_dir.join("kq.duckdb.wal");
    assert!(wal.exists(), "kqd keeps a WAL while it runs");
    let modes: Vec<String> = [&env.data_dir, &db, &wal, &cache, &sqlite]
        .iter()
        .map(|p| format!("{} {:o}", p.display(), mode(p)))
        .collect();
    let want: Vec<String> = [
        (&env.data_dir, 0o700),
        (&db, 0o600),
        (&wal, 0o600),
        (&cache, 0o700),
        (&sqlite, 0o600),
    ]
    .iter()
    .map(|(p, m)| format!("{} {m:o}", p.display()))
    .collect();
    assert_eq!(modes, want, "modes under umask 022");
    assert!(
        kqd.log().contains("narrowed its permissions"),
        "the widened data directory was narrowed silently:\n{}",
        kqd.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_database_is_moved_aside_and_kqd_starts_fresh() {
    let env = Env::start(2, 10).await;
    std::fs::create_dir_all(&env.data_dir).unwrap();
    let junk: Vec<u8> = (0..256 * 1024).map(|_| fastrand::u8(..)).collect();
    std::fs::write(env.data_dir.join("kq.duckdb"), &junk).unwrap();

    let kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;

    let moved: Vec<PathBuf> = std::fs::read_dir(&env.data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kq.duckdb.corrupt-") && !n.ends_with(".wal"))
        })
        .collect();
    assert_eq!(moved.len(), 1, "one file moved aside: {moved:?}");
    assert_eq!(
        std::fs::read(&moved[0]).unwrap(),
        junk,
        "the bad file is kept as it was"
    );
    let status = env
        .csv("select context, state, error from status where context = 'kqd'")
        .await
        .unwrap();
    let moved_name = moved[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        status.starts_with("context,state,error\nkqd,notice,")
            && status.contains("moved it aside")
            && status.contains(&moved_name),
        "status has no kqd row naming the moved file: {status}"
    );
    assert!(
        kqd.log().contains("ERROR") && kqd.log().contains("corrupt"),
        "kqd did not say so loudly:\n{}",
        kqd.log()
    );
    // The notice lasts until the next restart.
    kqd.terminate();
    let _kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    assert_eq!(
        env.csv("select count(*) as n from status where context = 'kqd'")
            .await
            .unwrap(),
        "n\n0\n"
    );
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs as kqd's data directory and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` until a write fails with ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    while !chunk.is_empty() {
        match f.write(&chunk) {
            Ok(0) => chunk.truncate(chunk.len() / 2),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => chunk.truncate(chunk.len() / 2),
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    let _ = f.sync_all();
    path
}

/// Full relists of pods so far, summed over the fleet (kqd lists pods once per relist).
fn pod_lists(env: &Env) -> usize {
    env.fleet
        .clusters
        .iter()
        .map(|c| {
            c.traffic
                .requests()
                .iter()
                .filter(|r| r.method == "GET" && !r.watch && r.path == "/api/v1/pods")
                .count()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_named_holds_off_relisting_and_recovers_when_space_returns() {
    let env = Env::start(2, 20).await;
    let _mount = Tmpfs::mount(&env.data_dir, "48m");
    let kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let lists_before = pod_lists(&env);

    let filler = fill(&env.data_dir);
    // Changes keep coming while the disk is full.
    let churn = |i: usize| {
        let c = &env.fleet.clusters[i % 2];
        scenario::create_pod(&c.store, "default", &format!("while-full-{i}"), "nginx:1").unwrap();
    };
    let mut i = 0;
    let named = eventually_async(Duration::from_secs(30), || {
        churn(i);
        i += 1;
        async {
            env.csv("select distinct error from status")
                .await
                .is_ok_and(|e| e.contains("disk full: could not write "))
        }
    })
    .await;
    assert!(
        named,
        "status never named the full disk: {:?}\n{}",
        env.csv("select * from status").await,
        kqd.log()
    );
    let error = env.csv("select distinct error from status").await.unwrap();
    assert!(
        error.contains(&env.data_dir.display().to_string()),
        "the error names the file: {error}"
    );
    // Fifteen seconds of churn into a full disk.
    let full_since = Instant::now();
    while full_since.elapsed() < Duration::from_secs(15) {
        churn(i);
        i += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let lists_while_full = pod_lists(&env) - lists_before;
    assert!(
        lists_while_full <= env.fleet.clusters.len(),
        "{lists_while_full} pod relists while the disk was full: kqd relisted into a disk that could not take them"
    );

    // Space returns: kqd converges by itself, relisting once.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    env.wait_pods_synced(Duration::from_secs(60)).await;
    env.wait_csv(
        "select count(*) as n from status where error is not null",
        "n\n0\n",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let lists = pod_lists(&env) - lists_before;
    eprintln!(
        "converged {:?} after space returned; {lists} pod relists in all ({lists_while_full} while full)",
        freed.elapsed()
    );
    assert!(
        lists <= 2 * env.fleet.clusters.len(),
        "{lists} pod relists for one outage"
    );
}

/// A directory `nobody` owns, inside one it can enter.
fn nobody_dir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn kq_says_when_the_kqd_at_its_socket_belongs_to_another_user() {
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "this test runs kqd as the user nobody, which needs root (CI runs as root)"
    );
    // Under /tmp rather than the test's temp dir or the target directory, which `nobody`
    // cannot enter; the binaries are copied there for the same reason.
    let top = tempfile::Builder::new()
        .prefix("kq-other-user")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bins = top.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    std::fs::set_permissions(&bins, std::fs::Permissions::from_mode(0o755)).unwrap();
    for b in ["kqd", "kq"] {
        std::fs::copy(bin(b), bins.join(b)).unwrap();
    }
    let home = nobody_dir(top.path(), "home");
    let socket = home.join("run/kq.sock");
    let log = top.path().join("kqd.log");
    let mut child = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(bins.join("kqd"))
        .arg("--kubeconfig")
        .arg(home.join("no-kubeconfig"))
        .arg("--data-dir")
        .arg(home.join("state"))
        .arg("--socket")
        .arg(&socket)
        .env("HOME", &home)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_STATE_HOME")
        .env("KQ_IMAGES", "off")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("runuser starts kqd as nobody");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let up = eventually(Duration::from_secs(30), || {
        log_text().contains("serving Flight SQL")
    })
    .await;
    // runuser runs kqd as its child: killing runuser (SIGKILL) would leave kqd running, so
    // it is asked to stop with SIGTERM, which it passes on to kqd.
    let stop = |child: &mut std::process::Child| {
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child has a pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = child.wait();
    };
    if !up {
        stop(&mut child);
        panic!("kqd as nobody did not start:\n{}", log_text());
    }

    // Root may enter nobody's 0700 directory, so its connection reaches kqd, which closes it.
    let out = Command::new(bins.join("kq"))
        .arg("--socket")
        .arg(&socket)
        .args(["-c", "select 1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let refused_log = log_text();
    stop(&mut child);
    assert!(
        refused_log.contains("refused a connection from another user"),
        "kqd did not refuse root:\n{refused_log}"
    );
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let want = format!(
        "kqd at {} refused the connection: it belongs to another user",
        socket.display()
    );
    assert!(stderr.contains(&want), "kq said: {stderr}");

    // The other way round: nobody's kq cannot even enter root's socket directory.
    let env = Env::start(1, 1).await;
    let _kqd = env.kqd().await;
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(bins.join("kq"))
        .arg("--socket")
        .arg(&env.socket)
        .args(["-c", "select 1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused the connection: it belongs to another user (uid 0"),
        "nobody's kq said: {stderr}"
    );
}
