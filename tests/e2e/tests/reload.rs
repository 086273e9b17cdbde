//! kqd follows its kubeconfig files and config while it runs: contexts added by an atomic
//! rename, removed, edited (only that one restarts), a broken file (reported, old contexts
//! keep working, fixed clears it), files that appear later or are symlinks, SIGHUP with new
//! globs or kinds, `kq status`, and socket activation.

use std::time::{Duration, Instant};

use kq_e2e::{Env, Kqd, sim_pod_uids};
use kube_sim::fleet::{kubeconfig_for, write_private};

/// A kubeconfig naming only the clusters `names`.
fn kubeconfig_of(env: &Env, names: &[&str]) -> serde_json::Value {
    let clusters = env
        .fleet
        .clusters
        .iter()
        .filter(|c| names.contains(&c.name.as_str()))
        .map(|c| &**c);
    kubeconfig_for(clusters, env.fleet.ca_pem())
}

/// Writes a kubeconfig naming only `names`, by temporary file and rename, as editors do.
fn write_kubeconfig(env: &Env, names: &[&str], edit: impl FnOnce(&mut serde_json::Value)) {
    let mut kc = kubeconfig_of(env, names);
    edit(&mut kc);
    write_private(&env.kubeconfig, &serde_json::to_string_pretty(&kc).unwrap()).unwrap();
}

/// Starts kqd on `env` with a config file holding `toml`; returns kqd and the file's path,
/// for a test to rewrite before a SIGHUP.
async fn kqd_with_config(env: &Env, toml: &str) -> (Kqd, std::path::PathBuf) {
    let config = env.kubeconfig.with_file_name("config.toml");
    std::fs::write(&config, toml).unwrap();
    let (mut cmd, log) = env.kqd_command();
    cmd.arg("--config").arg(&config);
    (env.start_kqd(cmd, log).await, config)
}

async fn contexts(env: &Env, want: &str) {
    env.wait_csv(
        "select name, state from contexts order by name",
        want,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
}

fn pods_of(env: &Env, i: usize) -> usize {
    sim_pod_uids(&env.fleet.clusters[i]).len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_context_added_by_rename_is_queryable_within_three_seconds_and_removing_it_removes_its_rows()
 {
    let env = Env::start(3, 10).await;
    write_kubeconfig(&env, &["sim-1", "sim-2"], |_| {});
    let _kqd = env.kqd().await;
    contexts(&env, "name,state\nsim-1,ready\nsim-2,ready\n").await;

    let started = Instant::now();
    write_kubeconfig(&env, &["sim-1", "sim-2", "sim-3"], |_| {});
    env.wait_csv(
        "select count(*) as n from pods where context = 'sim-3'",
        &format!("n\n{}\n", pods_of(&env, 2)),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    eprintln!("new context queryable after {:?}", started.elapsed());

    write_kubeconfig(&env, &["sim-1", "sim-2"], |_| {});
    contexts(&env, "name,state\nsim-1,ready\nsim-2,ready\n").await;
    env.wait_csv(
        "select count(*) as n from objects where context = 'sim-3'",
        "n\n0\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_context_can_be_kept_and_marked() {
    let env = Env::start(2, 5).await;
    let _kqd = env.kqd_with(&[("KQ_KEEP_REMOVED_CONTEXTS", "1")]).await;
    contexts(&env, "name,state\nsim-1,ready\nsim-2,ready\n").await;
    write_kubeconfig(&env, &["sim-1"], |_| {});
    contexts(&env, "name,state\nsim-1,ready\nsim-2,removed\n").await;
    let n = env
        .csv("select count(*) as n from pods where context = 'sim-2'")
        .await
        .unwrap();
    assert_eq!(n, format!("n\n{}\n", pods_of(&env, 1)), "its rows stay");
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_one_context_restarts_only_that_one() {
    let env = Env::start(3, 10).await;
    let _kqd = env.kqd().await;
    contexts(&env, "name,state\nsim-1,ready\nsim-2,ready\nsim-3,ready\n").await;
    let traffic = |i: usize| {
        let t = &env.fleet.clusters[i].traffic;
        (t.connections().len(), t.requests().len())
    };
    let before = [traffic(0), traffic(1), traffic(2)];

    // sim-3's context now defaults to another namespace: its content changed.
    write_kubeconfig(&env, &["sim-1", "sim-2", "sim-3"], |kc| {
        kc["contexts"][2]["context"]["namespace"] = "kube-system".into();
    });
    env.wait_csv(
        "select namespace, state from contexts where name = 'sim-3'",
        "namespace,state\nkube-system,ready\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let after = [traffic(0), traffic(1), traffic(2)];
    assert!(
        after[2].0 > before[2].0,
        "sim-3 reconnected: {before:?} → {after:?}"
    );
    assert_eq!(
        (after[0], after[1]),
        (before[0], before[1]),
        "sim-1 and sim-2 kept their connections and made no new requests"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_kubeconfig_is_reported_and_fixing_it_clears_the_error() {
    let env = Env::start(2, 5).await;
    let _kqd = env.kqd().await;
    contexts(&env, "name,state\nsim-1,ready\nsim-2,ready\n").await;
    let good = std::fs::read_to_string(&env.kubeconfig).unwrap();

    write_private(&env.kubeconfig, "apiVersion: v1\nclusters: [ {name: \n").unwrap();
    env.wait_csv(
        "select name, config_error like 'kubeconfig %using its last good version' as reported from contexts order by name",
        "name,reported\nsim-1,true\nsim-2,true\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // The contexts keep streaming.
    let c = &env.fleet.clusters[0];
    kube_sim::scenario::create_pod(&c.store, "default", "after-break", "nginx:1").unwrap();
    env.wait_csv(
        "select count(*) as n from pods where name = 'after-break'",
        "n\n1\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();

    write_private(&env.kubeconfig, &good).unwrap();
    env.wait_csv(
        "select count(config_error) as errors from contexts",
        "errors\n0\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_changed_exclude_glob() {
    let env = Env::start(3, 5).await;
    let (kqd, config) = kqd_with_config(&env, "exclude_contexts = []\n").await;
    contexts(&env, "name,state\nsim-1,ready\nsim-2,ready\nsim-3,ready\n").await;

    std::fs::write(&config, "exclude_contexts = [\"sim-[23]\"]\n").unwrap();
    kqd.hangup();
    contexts(&env, "name,state\nsim-1,ready\n").await;

    std::fs::write(
        &config,
        "include_contexts = [\"sim-*\"]\nexclude_contexts = [\"sim-1\"]\n",
    )
    .unwrap();
    kqd.hangup();
    contexts(&env, "name,state\nsim-2,ready\nsim-3,ready\n").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watching_only_objects_makes_the_context_ready_with_every_object_and_no_typed_rows() {
    let env = Env::start(1, 5).await;
    let (kqd, _) = kqd_with_config(&env, "kinds = [\"objects\"]\n").await;
    contexts(&env, "name,state\nsim-1,ready\n").await;
    // Discovered resources (those no typed table covers) are listed and watched into
    // `objects`; no typed table fills.
    env.wait_csv(
        "select count(*) > 0 as listed, count(*) filter (where state <> 'ready') as pending from resources",
        "listed,pending\ntrue,0\n",
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let c = &env.fleet.clusters[0];
    let rt = c
        .store
        .resolve_kind("apiextensions.k8s.io/v1", "CustomResourceDefinition")
        .unwrap();
    c.store
        .create(
            &rt,
            "",
            serde_json::json!({
                "metadata": {"name": "widgets.example.com"},
                "spec": {"group": "example.com", "scope": "Namespaced",
                         "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                         "versions": [{"name": "v1", "served": true, "storage": true}]},
            }),
        )
        .unwrap();
    env.wait_csv(
        "select (select string_agg(name) from crds) as crds, (select count(*) from pods) as pods",
        "crds,pods\nwidgets.example.com,0\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // It stays ready: the supervisor does not take a quiet channel for failed watchers.
    assert!(
        !kqd.log().contains("watchers stopped"),
        "the context fell over:\n{}",
        kqd.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn under_socket_activation_kq_can_query() {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;

    let env = Env::start(1, 5).await;
    // What systemd does for kqd.socket: bind and listen, then start kqd with the socket as
    // fd 3, LISTEN_FDS=1 and LISTEN_PID set to kqd's own pid.
    std::fs::create_dir_all(env.socket.parent().unwrap()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&env.socket).unwrap();
    let fd = listener.as_raw_fd();
    let (cmd, log) = env.kqd_command();
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_remove("KUBECONFIG")
        .env("HOME", env.kubeconfig.parent().unwrap())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: between fork and exec this only calls dup2, which is async-signal-safe; the
    // listener outlives the spawn.
    unsafe {
        sh.pre_exec(move || {
            use std::os::fd::FromRawFd as _;
            let src = std::os::fd::BorrowedFd::borrow_raw(fd);
            let mut three = std::os::fd::OwnedFd::from_raw_fd(3);
            let r = rustix::io::dup2(src, &mut three).map_err(std::io::Error::from);
            std::mem::forget(three);
            r
        });
    }
    let kqd = env.start_kqd(sh, log).await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    assert!(
        kqd.log().contains("using the socket passed by systemd"),
        "{}",
        kqd.log()
    );
    drop(listener);
}

#[tokio::test(flavor = "multi_thread")]
async fn kq_status_shows_state_progress_counts_and_errors() {
    let env = Env::start(2, 5).await;
    let _kqd = env.kqd().await;
    contexts(&env, "name,state\nsim-1,ready\nsim-2,ready\n").await;
    // Discovery registers resources without typed tables a moment after the typed kinds
    // made the context ready, so wait for every resource to be listed.
    env.wait_csv(
        "select context, state, split_part(synced, '/', 1) = split_part(synced, '/', 2) as all_listed,
                split_part(synced, '/', 2)::INT >= 26 as typed_kinds_too,
                objects = (select count(*) from objects o where o.context = s.context) as counted,
                error is null as no_error
         from status s order by 1",
        "context,state,all_listed,typed_kinds_too,counted,no_error\nsim-1,ready,true,true,true,true\nsim-2,ready,true,true,true,true\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let out = env.kq(&["status", "--format", "csv"]).await;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "context,state,synced,objects,last_event,error");
    assert!(
        lines[1].starts_with("sim-1,ready,") && lines[2].starts_with("sim-2,ready,"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_changed_kind_list() {
    let env = Env::start(1, 5).await;
    let (kqd, config) = kqd_with_config(&env, "").await;
    contexts(&env, "name,state\nsim-1,ready\n").await;
    let n = env
        .csv("select count(*) > 0 as any from configmaps")
        .await
        .unwrap();
    assert_eq!(n, "any\ntrue\n");

    std::fs::write(&config, "exclude_kinds = [\"configmaps\"]\n").unwrap();
    kqd.hangup();
    env.wait_csv(
        "select (select count(*) from configmaps) as typed, (select count(*) from objects where resource = 'configmaps') as objects",
        "typed,objects\n0,0\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    contexts(&env, "name,state\nsim-1,ready\n").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kubeconfig_file_that_appears_later_and_a_symlinked_one_are_followed() {
    let env = Env::start(3, 5).await;
    // env.kubeconfig is a symlink into another directory (a dotfiles repository, say).
    let dotfiles = env.kubeconfig.with_file_name("dotfiles");
    std::fs::create_dir_all(&dotfiles).unwrap();
    let target = dotfiles.join("config");
    let only = |names: &[&str]| serde_json::to_string(&kubeconfig_of(&env, names)).unwrap();
    write_private(&target, &only(&["sim-1"])).unwrap();
    let _ = std::fs::remove_file(&env.kubeconfig);
    std::os::unix::fs::symlink(&target, &env.kubeconfig).unwrap();
    // A second file that does not exist yet.
    let later = env.kubeconfig.with_file_name("later.yaml");
    let (mut cmd, log) = env.kqd_command();
    cmd.arg("--kubeconfig").arg(&later);
    let _kqd = env.start_kqd(cmd, log).await;
    contexts(&env, "name,state\nsim-1,ready\n").await;

    write_private(&later, &only(&["sim-2"])).unwrap();
    contexts(&env, "name,state\nsim-1,ready\nsim-2,ready\n").await;

    // Saving the symlink's target (by rename, in its own directory) is seen too.
    write_private(&target, &only(&["sim-1", "sim-3"])).unwrap();
    contexts(&env, "name,state\nsim-1,ready\nsim-2,ready\nsim-3,ready\n").await;
}
