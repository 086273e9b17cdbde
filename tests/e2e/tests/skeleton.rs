//! kqd and kq end to end against the simulator: counts, live changes, crash recovery, a
//! context that is down, read-only enforcement, and a Flight SQL client that is not kq.

use std::time::{Duration, Instant};

use kq_e2e::{Env, eventually, sim_container_count, sim_pod_uids};
use kube_sim::scenario;

#[tokio::test(flavor = "multi_thread")]
async fn kq_prints_exactly_the_simulators_pod_counts() {
    let env = Env::start(2, 120).await;
    let _kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let want = format!(
        "{}\n",
        env.fleet
            .clusters
            .iter()
            .map(|c| sim_container_count(c))
            .sum::<usize>()
    );
    let got = env.csv("select count(*) from containers").await.unwrap();
    assert_eq!(got.lines().nth(1).map(|l| format!("{l}\n")), Some(want));
    // Every context is ready, with its version and object count.
    env.wait_csv(
        "select name, state, server_version like 'v1.%' as versioned, object_count > 0 as counted from contexts order by 1",
        "name,state,versioned,counted\nsim-1,ready,true,true\nsim-2,ready,true,true\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_created_or_deleted_shows_within_two_seconds() {
    let env = Env::start(2, 30).await;
    let _kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let c = &env.fleet.clusters[1];
    let started = Instant::now();
    scenario::create_pod(&c.store, "default", "e2e-new", "nginx:1.27").unwrap();
    env.wait_csv(
        "select p.context, p.name as pod, c.name as container, c.image from pods p join containers c on c.context = p.context and c.pod_uid = p.uid where p.name = 'e2e-new'",
        "context,pod,container,image\nsim-2,e2e-new,main,nginx:1.27\n",
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let appeared = started.elapsed();
    let started = Instant::now();
    scenario::delete(&c.store, "v1", "Pod", "default", "e2e-new").unwrap();
    env.wait_csv(
        "select (select count(*) from pods where name = 'e2e-new') + (select count(*) from containers where pod = 'e2e-new') as n",
        "n\n0\n",
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    eprintln!(
        "appeared after {appeared:?}, disappeared after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_ingest_then_restart_converges_to_the_truth() {
    let env = Env::start(2, 3000).await;
    let kqd = env.kqd().await;
    // Kill as soon as some, but not all, pods are in.
    let mut partial = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(out) = env.csv("select count(*) from pods").await {
            let n: usize = out.lines().nth(1).and_then(|l| l.parse().ok()).unwrap_or(0);
            if n > 0 {
                partial = n < 6000;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(kqd); // SIGKILL
    // While kqd is down, the clusters change: deletes it must notice, and new pods.
    let c = &env.fleet.clusters[0];
    let rt = c.store.resolve_kind("v1", "Pod").unwrap();
    let victims: Vec<_> = c
        .store
        .list(&rt, &Default::default(), Some(25), None)
        .unwrap()
        .items;
    for p in &victims {
        c.store.delete(&rt, &p.namespace, &p.name).unwrap();
    }
    scenario::create_pod(&c.store, "default", "born-while-down", "redis:7").unwrap();
    let _kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(60)).await;
    for c in &env.fleet.clusters {
        let got = env
            .csv(&format!(
                "select uid from pods where context = '{}' order by uid",
                c.name
            ))
            .await
            .unwrap();
        let got: Vec<&str> = got.lines().skip(1).collect();
        assert_eq!(
            got,
            sim_pod_uids(c),
            "pods of {} differ from the simulator",
            c.name
        );
    }
    let want = env
        .fleet
        .clusters
        .iter()
        .map(|c| sim_container_count(c))
        .sum::<usize>();
    env.wait_csv(
        "select count(*) from containers",
        &format!("count_star()\n{want}\n"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    eprintln!("killed while partial: {partial}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_context_that_is_down_is_in_error_and_recovers() {
    let env = Env::start(2, 40).await;
    let down = env.fleet.clusters[1].clone();
    down.set_offline(true);
    let _kqd = env.kqd().await;
    let up = &env.fleet.clusters[0];
    env.wait_csv(
        "select context, count(*) from pods group by 1 order by 1",
        &format!(
            "context,count_star()\n{},{}\n",
            up.name,
            sim_pod_uids(up).len()
        ),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    env.wait_csv(
        "select name, state, coalesce(error, '') <> '' as has_error from contexts order by 1",
        "name,state,has_error\nsim-1,ready,false\nsim-2,error,true\n",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let err = env
        .csv("select error from contexts where name = 'sim-2'")
        .await
        .unwrap();
    assert!(
        err.contains("unreachable") || err.contains("onnect"),
        "the reason names the cause: {err}"
    );
    down.set_offline(false);
    env.wait_csv(
        "select name, state from contexts order by 1",
        "name,state\nsim-1,ready\nsim-2,ready\n",
        Duration::from_secs(45),
    )
    .await
    .unwrap();
    env.wait_pods_synced(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_through_kq_are_refused_and_change_nothing() {
    let env = Env::start(1, 20).await;
    let _kqd = env.kqd().await;
    let sql = "select count(*) from pods";
    env.wait_csv(sql, "count_star()\n20\n", Duration::from_secs(30))
        .await
        .unwrap();
    for stmt in [
        "insert into pods (context, name) values ('x', 'y')",
        "delete from pods",
        "drop table pods",
        "update pods set name = 'z'",
        "select 1; drop table pods",
    ] {
        let out = env.kq(&["-c", stmt]).await;
        assert!(!out.status.success(), "{stmt} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("read-only") || err.contains("one statement"),
            "{stmt}: {err}"
        );
    }
    assert_eq!(env.csv(sql).await.unwrap(), "count_star()\n20\n");
    // Exporting stays possible.
    let file = env.dir.path().join("pods.csv");
    let out = env
        .kq(&[
            "-c",
            &format!(
                "copy (select name from pods) to '{}' (header)",
                file.display()
            ),
        ])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 21);
    // Bad SQL is told apart from a missing daemon.
    let out = env.kq(&["-c", "selec nonsense"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("your SQL is wrong"));
}

/// Runs one of this crate's Python Flight SQL clients (pyarrow, ADBC) against `socket`
/// and returns what it printed; a client that fails fails the test.
fn python_client(script: &str, socket: &std::path::Path, args: &[&str]) -> String {
    // Located at run time, so a test binary built in another checkout finds this one's.
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    let out = std::process::Command::new("python3")
        .arg(format!("{dir}/{script}"))
        .arg(socket)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flight_sql_client_that_is_not_kq_can_query() {
    let env = Env::start(2, 15).await;
    let _kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let got = python_client(
        "flight_client.py",
        &env.socket,
        &["select context, count(*) as pods from pods group by 1 order by 1"],
    );
    assert_eq!(got, "\"context\",\"pods\"\n\"sim-1\",15\n\"sim-2\",15\n");
}

/// The long cross join of the cancellation tests: kqd logs that it cancelled it, and still
/// answers (5 pods).
const CROSS_JOIN: &str = "select sum(a.range * b.range) from range(100000000) a, range(100000) b";

async fn assert_cancelled_and_still_answering(env: &Env, kqd: &kq_e2e::Kqd) {
    assert!(
        eventually(Duration::from_secs(10), || kqd
            .log()
            .lines()
            .any(|l| l.contains("query cancelled: the client went away")
                && l.contains("range(100000000)")))
        .await,
        "kqd kept running the query: {}",
        kqd.log()
    );
    assert_eq!(
        env.csv("select count(*) from pods").await.unwrap(),
        "count_star()\n5\n"
    );
}

/// DuckDB answers GetFlightInfo once the plan is ready and runs the query on in the
/// background; a client that leaves before its DoGet must not leave it running.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_plans_and_leaves_before_fetching_cancels_its_query() {
    let env = Env::start(1, 5).await;
    let kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    python_client(
        "flight_client.py",
        &env.socket,
        &[CROSS_JOIN, "--plan-only"],
    );
    assert_cancelled_and_still_answering(&env, &kqd).await;
}

/// Python's ADBC Flight SQL driver, as it comes: no option beyond the URI.
#[tokio::test(flavor = "multi_thread")]
async fn the_adbc_driver_lists_describes_binds_fetches_and_is_refused_writes() {
    let env = Env::start(2, 15).await;
    let _kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let out = python_client("adbc_client.py", &env.socket, &[]);
    let got: serde_json::Value = serde_json::from_str(&out).expect("the client prints JSON");
    assert_eq!(got["vendor_name"], "kqd");
    assert_eq!(got["table_types"], serde_json::json!(["TABLE", "VIEW"]));
    // get_objects lists every catalog table, down to its columns in order.
    let want: serde_json::Map<String, serde_json::Value> = kq_schema::CATALOG
        .iter()
        .map(|t| {
            let cols: Vec<_> = t.columns.iter().map(|c| c.name).collect();
            (format!("kq.main.{}", t.name), serde_json::json!(cols))
        })
        .collect();
    assert_eq!(got["objects"], serde_json::Value::Object(want));
    // Each of the pods table's columns carries its catalog description as its remarks.
    let pods = kq_schema::CATALOG
        .iter()
        .find(|t| t.name == "pods")
        .unwrap();
    for c in pods.columns.iter() {
        assert_eq!(
            got["pods_remarks"][c.name], c.description,
            "column {}",
            c.name
        );
    }
    // A bound parameter selects what the same SQL with a literal does.
    let literal = env
        .csv("select count(*) from pods where context = 'sim-1'")
        .await
        .unwrap();
    assert_eq!(
        literal.lines().nth(1),
        Some(got["param_count"].to_string().as_str())
    );
    assert_eq!(got["fetched_rows"], 100_000);
    assert_eq!(got["fetched_sum"], 4_999_950_000u64);
    let refused = got["write_error"].as_str().expect("the write fails");
    assert!(refused.contains("read-only"), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_flushes_closes_and_removes_the_socket() {
    let env = Env::start(1, 10).await;
    let kqd = env.kqd().await;
    env.wait_csv(
        "select count(*) from pods",
        "count_star()\n10\n",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&env.socket).unwrap().permissions().mode() & 0o777;
    let dir_mode = std::fs::metadata(env.socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!((mode, dir_mode), (0o600, 0o700));
    let status = kqd.terminate();
    assert!(status.success(), "kqd exited with {status}");
    assert!(!env.socket.exists(), "the socket is removed");
    let sock = env.socket.clone();
    assert!(eventually(Duration::from_secs(1), || !sock.exists()).await);
}

/// A long query and a follower must not hold kqd's shutdown open (systemd would wait, then
/// kill it): both end at once, and their clients are told why.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_running_queries_and_followers_and_tells_their_clients() {
    let env = Env::start(1, 5).await;
    let mut kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let query = env.spawn_kq(&["-c", CROSS_JOIN]);
    let follower = env.spawn_kq(&["incidents", "--follow"]);
    assert!(
        eventually(Duration::from_secs(20), || {
            let log = kqd.log();
            log.contains("range(100000000)") && log.contains("a client follows incidents")
        })
        .await,
        "{}",
        kqd.log()
    );
    // Under the 5 s after which kqd closes connections that are still open.
    let status = kqd.terminate_within(Duration::from_secs(4)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "kqd did not stop at once ({status:?}): {}",
        kqd.log()
    );
    for (what, child) in [("the query", query), ("the follower", follower)] {
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains("kqd is shutting down"), "{what}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_goes_away_cancels_its_query() {
    let env = Env::start(1, 5).await;
    let kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    // A query that would run for minutes.
    let mut client = env.spawn_kq(&["-c", CROSS_JOIN]);
    let started = |log: &str| {
        log.lines()
            .any(|l| l.contains("query started") && l.contains("range(100000000)"))
    };
    assert!(
        eventually(Duration::from_secs(20), || started(&kqd.log())).await,
        "{}",
        kqd.log()
    );
    client.kill().unwrap();
    client.wait().unwrap();
    assert_cancelled_and_still_answering(&env, &kqd).await;
}
