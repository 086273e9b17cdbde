//! Crash logs end to end: a crash whose container logged text in the simulator gets its
//! last lines in `incidents.last_log`, credentials masked, fetched once per occurrence; a
//! context whose RBAC forbids `pods/log` is asked once, not on every crash.

use std::process::Command;
use std::time::Duration;

use kq_e2e::Env;
use kube_sim::scenario;

/// The simulator's requests for one pod's log.
fn log_requests(c: &kube_sim::Cluster, pod: &str) -> Vec<kube_sim::faults::RequestRecord> {
    let suffix = format!("/pods/{pod}/log");
    c.traffic
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(&suffix))
        .collect()
}

/// What the container logged before it crashed: 60 lines, a credential among the last.
fn crash_output(run: u32) -> String {
    let mut lines: Vec<String> = (1..=57).map(|i| format!("run {run} line {i}")).collect();
    lines.push(format!(
        "run {run} connecting to db with password=hunter2-{run}"
    ));
    lines.push(format!("run {run} Authorization: Bearer eyJtoken{run}"));
    lines.push(format!("run {run} panic: cart is nil"));
    lines.join("\n") + "\n"
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_keeps_its_last_lines_masked_and_each_occurrence_is_fetched_once() {
    let env = Env::start(1, 4).await;
    let c = env.fleet.clusters[0].clone();
    let kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let (ns, pod, container) = kq_e2e::sim_pods(&c)[0].clone();

    // The simulator's log endpoint is what kubectl reads, too.
    c.logs.set(&ns, &pod, &container, true, &crash_output(1));
    let out = Command::new("kubectl")
        .env("KUBECONFIG", &env.kubeconfig)
        .env("HOME", env.dir.path())
        .args([
            "-n",
            &ns,
            "logs",
            &pod,
            "-c",
            &container,
            "--previous",
            "--tail=1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "run 1 panic: cart is nil\n"
    );
    let before = log_requests(&c, &pod).len();

    scenario::crash_container(&c.store, &ns, &pod, &container, 1, "Error", None).unwrap();
    let sql = format!(
        "select occurrences, last_log from incidents where object_name = '{pod}' and last_log like '%run %'"
    );
    let log_of = |run: u32| {
        let env = &env;
        let sql = sql.clone();
        async move {
            let want = format!("run {run} panic");
            let found = kq_e2e::eventually_async(Duration::from_secs(10), || async {
                env.csv(&sql).await.is_ok_and(|c| c.contains(&want))
            })
            .await;
            assert!(found, "no last_log of run {run}");
            let out = env.kq(&["--format", "json", "-c", &sql]).await;
            let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
            rows[0]["last_log"].as_str().unwrap().to_string()
        }
    };
    let log = log_of(1).await;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 50, "tailLines=50 by default:\n{log}");
    assert_eq!(lines[0], "run 1 line 11");
    assert_eq!(lines[47], "run 1 connecting to db with password=***");
    assert_eq!(lines[48], "run 1 Authorization: ***");
    assert_eq!(lines[49], "run 1 panic: cart is nil");
    assert!(!log.contains("hunter2") && !log.contains("eyJtoken"));

    let fetched = log_requests(&c, &pod);
    assert_eq!(fetched.len(), before + 1, "one fetch for one occurrence");
    let q = &fetched[before].query;
    for p in [
        "previous=true",
        "tailLines=50",
        "limitBytes=16384",
        "container=",
    ] {
        assert!(q.contains(p), "{p} missing in {q}");
    }

    // Another crash is another occurrence: its own log, fetched once.
    c.logs.set(&ns, &pod, &container, true, &crash_output(2));
    scenario::crash_container(&c.store, &ns, &pod, &container, 1, "Error", None).unwrap();
    assert!(log_of(2).await.ends_with("run 2 panic: cart is nil\n"));
    assert_eq!(log_requests(&c, &pod).len(), before + 2);

    // `kq why` shows the lines under the incident; JSON carries them as a field.
    let id = env
        .first_value(&format!(
            "select id from incidents where object_name = '{pod}'"
        ))
        .await;
    let out = env.kq(&["why", &id]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Last log lines:\n  run 2 line 11\n")
            && text.contains("  run 2 panic: cart is nil\n"),
        "{text}"
    );
    let out = env.kq(&["why", &id, "--format", "json"]).await;
    let text = String::from_utf8(out.stdout).unwrap();
    let incident: serde_json::Value = serde_json::Deserializer::from_str(&text)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    assert!(
        incident[0]["last_log"]
            .as_str()
            .unwrap()
            .ends_with("run 2 panic: cart is nil\n")
    );

    // `kq incidents` shows the log's last line.
    let out = env.kq(&["incidents", "--format", "json"]).await;
    let open: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let row = open.iter().find(|r| r["id"] == id.as_str()).unwrap();
    assert_eq!(row["last_line"], "run 2 panic: cart is nil");

    // A restart relists the pod, whose last termination is already recorded: no fetch,
    // and the stored log stays.
    assert!(kqd.terminate().success());
    let _kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let other = kq_e2e::sim_pods(&c)[1].clone();
    scenario::crash_container(&c.store, &other.0, &other.1, &other.2, 1, "Error", None).unwrap();
    // The other pod's fetch (the simulator has no log for it: a 400) shows kqd has
    // processed the relist and the new crash.
    let seen = kq_e2e::eventually(Duration::from_secs(10), || {
        !log_requests(&c, &other.1).is_empty()
    })
    .await;
    assert!(seen, "the other pod's crash log was never asked for");
    assert_eq!(
        log_requests(&c, &pod).len(),
        before + 2,
        "no fetch after restart"
    );
    assert!(log_of(2).await.ends_with("run 2 panic: cart is nil\n"));
}

/// The fetcher handles incidents in the order they commit, so once a crash committed later
/// has been fetched, every earlier one has been handled (fetched or skipped).
#[tokio::test(flavor = "multi_thread")]
async fn a_forbidden_log_is_asked_for_once_and_crash_logs_can_be_turned_off() {
    let env = Env::start(2, 4).await;
    let (c, other) = (env.fleet.clusters[0].clone(), env.fleet.clusters[1].clone());
    c.faults.forbid("", "pods/log");
    let kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let pods = kq_e2e::sim_pods(&c);
    let crash = |c: &kube_sim::Cluster, (ns, pod, container): &(String, String, String)| {
        c.logs.set(ns, pod, container, true, "boom\n");
        scenario::crash_container(&c.store, ns, pod, container, 1, "Error", None).unwrap();
    };
    crash(&c, &pods[0]);
    let warned = kq_e2e::eventually(Duration::from_secs(10), || {
        kqd.log()
            .contains("crash logs are forbidden in this context")
    })
    .await;
    assert!(warned, "{}", kqd.log());
    crash(&c, &pods[1]);
    crash(&c, &pods[2]);
    env.wait_csv(
        "select count(*) as n from incidents",
        "n\n3\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // The other cluster is not forbidden: its crash gets its log.
    let theirs = kq_e2e::sim_pods(&other)[0].clone();
    crash(&other, &theirs);
    env.wait_csv(
        &format!(
            "select last_log = 'boom' || chr(10) as fetched from incidents where context = 'sim-2' and object_name = '{}'",
            theirs.1
        ),
        "fetched\ntrue\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let asked: usize = pods[..3].iter().map(|p| log_requests(&c, &p.1).len()).sum();
    assert_eq!(asked, 1, "the 403 is remembered for the context");
    assert_eq!(
        env.csv("select count(last_log) as n from incidents where context = 'sim-1'")
            .await
            .unwrap(),
        "n\n0\n"
    );

    // Off: nothing is asked at all.
    assert!(kqd.terminate().success());
    let kqd = env.kqd_with(&[("KQ_CRASH_LOGS", "off")]).await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    assert!(kqd.log().contains("crash logs are off"));
    let theirs = kq_e2e::sim_pods(&other)[1].clone();
    crash(&other, &theirs);
    env.wait_csv(
        &format!(
            "select count(*) as n from incidents where context = 'sim-2' and object_name = '{}'",
            theirs.1
        ),
        "n\n1\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(log_requests(&other, &theirs.1).is_empty());
}

/// With `per_minute = 1`, a context's second and third crash in a minute get no fetch, and
/// the other context, with its own budget, still gets its log.
#[tokio::test(flavor = "multi_thread")]
async fn crash_logs_are_rate_limited_per_context() {
    let env = Env::start(2, 4).await;
    let (c, other) = (env.fleet.clusters[0].clone(), env.fleet.clusters[1].clone());
    let config = env.dir.path().join("kq.toml");
    std::fs::write(&config, "[crash_logs]\nper_minute = 1\n").unwrap();
    let (mut cmd, log) = env.kqd_command();
    cmd.arg("--config").arg(&config);
    let _kqd = env.start_kqd(cmd, log).await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let pods = kq_e2e::sim_pods(&c);
    for (i, (ns, pod, container)) in pods[..3].iter().enumerate() {
        c.logs.set(ns, pod, container, true, "boom\n");
        scenario::crash_container(&c.store, ns, pod, container, 1, "Error", None).unwrap();
        env.wait_csv(
            "select count(*) as n from incidents where context = 'sim-1'",
            &format!("n\n{}\n", i + 1),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    let (ns, pod, container) = kq_e2e::sim_pods(&other)[0].clone();
    other.logs.set(&ns, &pod, &container, true, "boom\n");
    scenario::crash_container(&other.store, &ns, &pod, &container, 1, "Error", None).unwrap();
    env.wait_csv(
        "select count(last_log) as n from incidents where context = 'sim-2'",
        "n\n1\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let asked: usize = pods[..3].iter().map(|p| log_requests(&c, &p.1).len()).sum();
    assert_eq!(asked, 1, "one fetch a minute in sim-1");
}
