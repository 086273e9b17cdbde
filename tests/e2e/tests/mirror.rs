//! The PostgreSQL mirror end to end: the real kqd against a real PostgreSQL (initdb and
//! pg_ctl on a free loopback port), compared with DuckDB row by row and column by column.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kq_e2e::Env;
use kq_e2e::pg::{Postgres, mirror_differences};
use kq_e2e::pgbouncer::PgBouncer;
use kube_sim::patch::PatchType;
use kube_sim::scenario;
use serde_json::{Value, json};

fn create(c: &kube_sim::Cluster, api_version: &str, kind: &str, ns: &str, obj: Value) -> Value {
    let rt = c.store.resolve_kind(api_version, kind).unwrap();
    c.store.create(&rt, ns, obj).unwrap().value()
}

/// Objects beyond the generated pods, so that most tables have rows: a deployment, a
/// service, config, a failed job (an incident), a warning event, a CRD and its object.
fn fill(c: &kube_sim::Cluster, secret_value: &str) {
    create(
        c,
        "v1",
        "Namespace",
        "",
        json!({"metadata": {"name": "shop"}}),
    );
    create(
        c,
        "apps/v1",
        "Deployment",
        "shop",
        json!({"metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}),
    );
    create(
        c,
        "v1",
        "Service",
        "shop",
        json!({"metadata": {"name": "web"}, "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    );
    create(
        c,
        "v1",
        "ConfigMap",
        "shop",
        json!({"metadata": {"name": "cfg", "annotations": {"note": "ünïcode ✓"}}, "data": {"a.conf": "x=1"}}),
    );
    create(
        c,
        "v1",
        "Secret",
        "shop",
        // As `kubectl apply` leaves it: the manifest, value included, in an annotation.
        json!({"metadata": {"name": "db", "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration":
                json!({"apiVersion": "v1", "kind": "Secret", "stringData": {"password": secret_value}}).to_string()}},
            "type": "Opaque", "stringData": {"password": secret_value}}),
    );
    create(
        c,
        "batch/v1",
        "Job",
        "shop",
        json!({"metadata": {"name": "once"}, "spec": {"backoffLimit": 1,
               "template": {"spec": {"containers": [{"name": "j", "image": "busybox"}], "restartPolicy": "Never"}}}}),
    );
    scenario::fail_job(&c.store, "shop", "once", "BackoffLimitExceeded").unwrap();
    scenario::warning_event(
        &c.store,
        "shop",
        "Pod",
        "web-1",
        "BackOff",
        "Back-off restarting failed container",
    )
    .unwrap();
    create(
        c,
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "",
        json!({"metadata": {"name": "httproutes.gateway.networking.k8s.io"},
               "spec": {"group": "gateway.networking.k8s.io", "scope": "Namespaced",
                        "names": {"plural": "httproutes", "singular": "httproute", "kind": "HTTPRoute"},
                        "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}}]}}),
    );
}

fn route(c: &kube_sim::Cluster, name: &str) {
    create(
        c,
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        "default",
        json!({"metadata": {"name": name}, "spec": {"rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}),
    );
}

/// The nice value of each of kqd's threads whose name starts with `prefix`.
fn thread_nice(pid: u32, prefix: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("kqd runs")
        .flatten()
    {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The name is in parentheses and may hold anything; the fields after it are fixed,
        // the state (field 3) first and the nice value (field 19) seventeenth.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n);
        if name.starts_with(prefix) {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            out.push(fields[16].parse().expect("a nice value"));
        }
    }
    out
}

/// kqd with the mirror on, pointed at `pg`.
async fn kqd_mirroring(env: &Env, pg: &Postgres, extra: &[(&str, &str)]) -> kq_e2e::Kqd {
    let url = pg.url();
    let mut vars = vec![("KQ_POSTGRES_URL", url.as_str())];
    vars.extend_from_slice(extra);
    env.kqd_with(&vars).await
}

/// The `kq -c sql --format csv` output of the kqd on `socket`.
async fn csv_at(env: &Env, socket: &Path, sql: &str) -> Result<String, String> {
    let o = env.kq_at(socket, &["-c", sql, "--format", "csv"]).await;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// The instance id of the kqd on `socket`, from its `mirror` row.
async fn instance(env: &Env, socket: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(out) = csv_at(env, socket, "select instance from mirror").await
            && let Some(i) = out.lines().nth(1)
        {
            return i.to_string();
        }
        assert!(Instant::now() < deadline, "no mirror row");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the mirror streams with nothing owed and PostgreSQL equals DuckDB.
async fn wait_exact(env: &Env, pg: &Postgres, timeout: Duration) -> Duration {
    wait_exact_at(env, &env.socket, pg, "kq", timeout).await
}

/// [`wait_exact`] for the kqd on `socket`, mirroring into `schema`.
async fn wait_exact_at(
    env: &Env,
    socket: &Path,
    pg: &Postgres,
    schema: &str,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    let instance = instance(env, socket).await;
    loop {
        let state = csv_at(env, socket, "select state, outbox, last_error from mirror")
            .await
            .unwrap_or_default();
        let differences = if state
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("streaming,0,"))
        {
            mirror_differences(env, socket, pg, schema, &instance, &[]).await
        } else {
            vec![format!("mirror: {state}")]
        };
        if differences.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "the mirror is not exact after {timeout:?}:\n{}",
            differences.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls PostgreSQL until `sql` gives `want`.
async fn wait_pg(pg: &Postgres, sql: &str, want: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = pg.psql(sql).map(|s| s.trim_end().to_string());
        if got.as_deref() == Ok(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "after {timeout:?}, {sql} gave {got:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_initial_sync_postgres_equals_duckdb_row_by_row_and_holds_no_secret_value() {
    let pg = Postgres::start();
    let env = Env::start(2, 40).await;
    let secret = format!("hunter2-{}", std::process::id());
    fill(&env.fleet.clusters[0], &secret);
    route(&env.fleet.clusters[0], "shop");
    let kqd = kqd_mirroring(&env, &pg, &[]).await;
    env.wait_pods_synced(Duration::from_secs(60)).await;
    env.wait_csv(
        "select count(*) > 0 from incidents",
        "(count_star() > 0)\ntrue\n",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    env.wait_csv(
        "select count(*) from objects where kind = 'HTTPRoute'",
        "count_star()\n1\n",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let took = wait_exact(&env, &pg, Duration::from_secs(30)).await;
    eprintln!("exact {took:?} after the inventory was");
    // The mirror is background work: its threads (its runtime, and those that read DuckDB
    // for it) run at a lower priority than the writer's.
    let pid = kqd.child.id();
    let writer = thread_nice(pid, "kq-store-writer");
    let mirror = thread_nice(pid, "kq-mirror");
    assert_eq!(writer.len(), 1, "one writer thread");
    assert!(
        mirror.len() >= 2,
        "the mirror's thread and a reader: {mirror:?}"
    );
    assert!(
        mirror.iter().all(|n| *n > writer[0]),
        "mirror threads at nice {mirror:?}, the writer at {writer:?}"
    );
    // The comparison covered rows in the tables people query.
    for (table, at_least) in [
        ("pods", 80),
        ("containers", 80),
        ("objects", 100),
        ("deployments", 1),
        ("secrets", 1),
        ("incidents", 1),
        ("changes", 100),
        ("contexts", 2),
        ("resources", 10),
    ] {
        let n: i64 = pg
            .sql(&format!("select count(*) from kq.{table}"))
            .parse()
            .unwrap();
        assert!(n >= at_least, "{table}: {n} rows in PostgreSQL");
    }
    // Every row says which cluster it is from; the table comments come from the catalog.
    assert_eq!(
        pg.sql("select count(*) from kq.pods where cluster_id is null or instance = ''"),
        "0"
    );
    assert_eq!(
        pg.sql("select col_description('kq.pods'::regclass, attnum) from pg_attribute where attrelid = 'kq.pods'::regclass and attname = 'node'"),
        kq_schema::table("pods")
            .unwrap()
            .columns
            .iter()
            .find(|c| c.name == "node")
            .unwrap()
            .description
    );
    // The secret's key is there, its value nowhere.
    assert_eq!(
        pg.sql("select keys::text from kq.secrets where name = 'db'"),
        r#"["password"]"#
    );
    let dump = pg.dump();
    assert!(dump.len() > 100_000, "the dump has the inventory");
    assert!(
        !dump.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "a secret value reached PostgreSQL"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn creates_updates_deletes_and_a_removed_context_reach_postgres_within_two_seconds() {
    let pg = Postgres::start();
    let env = Env::start(2, 20).await;
    fill(&env.fleet.clusters[0], "x");
    let kqd = kqd_mirroring(&env, &pg, &[]).await;
    env.wait_pods_synced(Duration::from_secs(60)).await;
    wait_exact(&env, &pg, Duration::from_secs(30)).await;
    let c = env.fleet.clusters[0].clone();
    let two = Duration::from_secs(2);

    scenario::create_pod(&c.store, "default", "fresh", "nginx:1").unwrap();
    let t = wait_pg(
        &pg,
        "select count(*) from kq.pods where name = 'fresh'",
        "1",
        two,
    )
    .await;
    eprintln!("a new pod in PostgreSQL after {t:?}");
    wait_pg(
        &pg,
        "select image from kq.containers where pod = 'fresh'",
        "nginx:1",
        two,
    )
    .await;

    scenario::crash_container(&c.store, "default", "fresh", "main", 1, "Error", None).unwrap();
    let t = wait_pg(
        &pg,
        "select restarts || ',' || (select state from kq.containers where pod = 'fresh') from kq.pods where name = 'fresh'",
        "1,waiting",
        two,
    )
    .await;
    eprintln!("a modified pod in PostgreSQL after {t:?}");

    route(&c, "first");
    wait_pg(
        &pg,
        "select count(*) from kq.objects where kind = 'HTTPRoute'",
        "1",
        two,
    )
    .await;

    scenario::delete(&c.store, "v1", "Pod", "default", "fresh").unwrap();
    let t = wait_pg(
        &pg,
        "select (select count(*) from kq.pods where name = 'fresh') + (select count(*) from kq.containers where pod = 'fresh') + (select count(*) from kq.objects where name = 'fresh' and kind = 'Pod')",
        "0",
        two,
    )
    .await;
    eprintln!("a deleted pod gone from PostgreSQL after {t:?}");
    wait_pg(
        &pg,
        "select string_agg(operation, ',' order by seq) from kq.changes where name = 'fresh' and kind = 'pods'",
        "add,modify,delete",
        two,
    )
    .await;

    // The CRD goes: its objects go (a resource no longer served).
    scenario::delete(
        &c.store,
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "",
        "httproutes.gateway.networking.k8s.io",
    )
    .unwrap();
    wait_pg(
        &pg,
        "select count(*) from kq.objects where kind = 'HTTPRoute'",
        "0",
        two,
    )
    .await;

    // sim-2 leaves the kubeconfig: its rows go, sim-1's stay.
    let sim1_pods = pg.sql("select count(*) from kq.pods where context = 'sim-1'");
    let mut kubeconfig = env.fleet.kubeconfig();
    for list in ["contexts", "clusters", "users"] {
        kubeconfig[list]
            .as_array_mut()
            .unwrap()
            .retain(|e| e["name"] != "sim-2");
    }
    kube_sim::fleet::write_private(
        &env.kubeconfig,
        &serde_json::to_string(&kubeconfig).unwrap(),
    )
    .unwrap();
    let t = wait_pg(
        &pg,
        "select (select count(*) from kq.pods where context = 'sim-2') || ',' || (select count(*) from kq.contexts where name = 'sim-2') || ',' || (select count(*) from kq.objects where context = 'sim-2')",
        "0,0,0",
        two,
    )
    .await;
    eprintln!(
        "a removed context gone from PostgreSQL after {t:?} (the reload waits for the file to settle)"
    );
    assert_eq!(
        pg.sql("select count(*) from kq.pods where context = 'sim-1'"),
        sim1_pods
    );
    wait_exact(&env, &pg, Duration::from_secs(10)).await;
    assert!(kqd.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nul_in_json_arrives_replaced_and_counted() {
    let pg = Postgres::start();
    let env = Env::start(1, 5).await;
    let c = env.fleet.clusters[0].clone();
    create(
        &c,
        "v1",
        "ConfigMap",
        "default",
        json!({"metadata": {"name": "nul", "annotations": {"bad": "a\u{0}b"}}, "data": {"k": "v\u{0}w"}}),
    );
    let _kqd = kqd_mirroring(&env, &pg, &[]).await;
    env.wait_pods_synced(Duration::from_secs(60)).await;
    wait_pg(
        &pg,
        "select annotations->>'bad' from kq.configmaps where name = 'nul'",
        "a\u{fffd}b",
        Duration::from_secs(30),
    )
    .await;
    wait_pg(
        &pg,
        "select object->'data'->>'k' from kq.objects where name = 'nul' and kind = 'ConfigMap'",
        "v\u{fffd}w",
        Duration::from_secs(5),
    )
    .await;
    // Counted in the mirror row (rewritten every two seconds).
    env.wait_csv(
        "select nul_replaced >= 2 as counted from mirror",
        "counted\ntrue\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // The rest of the inventory went through.
    assert_eq!(
        pg.sql("select count(*) from kq.pods"),
        env.csv("select count(*) from pods")
            .await
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_postgres_refuses_is_set_aside_with_its_error_and_the_rest_arrives() {
    let pg = Postgres::start();
    let env = Env::start(1, 5).await;
    let c = env.fleet.clusters[0].clone();
    let kqd = kqd_mirroring(&env, &pg, &[]).await;
    env.wait_pods_synced(Duration::from_secs(60)).await;
    wait_exact(&env, &pg, Duration::from_secs(30)).await;
    // A rule of the team's database that DuckDB does not have: PostgreSQL refuses the
    // row for a reason no retry fixes (SQLSTATE 23514).
    pg.sql(
        "alter table kq.pods add constraint team_rule \
         check (labels->>'team' is distinct from 'refused') not valid",
    );
    // Two pods relabelled at once: changes that owe only their rows, sent together.
    let rt = c.store.resolve_kind("v1", "Pod").unwrap();
    let pods = kq_e2e::sim_pods(&c);
    let label = |(ns, name, _): &(String, String, String), team: &str| {
        let body = format!(r#"{{"metadata":{{"labels":{{"team":"{team}"}}}}}}"#);
        c.store
            .patch(&rt, ns, name, PatchType::Merge, body.as_bytes(), false)
            .unwrap();
    };
    label(&pods[0], "refused");
    label(&pods[1], "accepted");
    let team_of = |pod: &(String, String, String)| {
        format!(
            "select coalesce(labels->>'team', '') from kq.pods where name = '{}'",
            pod.1
        )
    };
    wait_pg(&pg, &team_of(&pods[1]), "accepted", Duration::from_secs(10)).await;
    env.wait_csv(
        "select set_aside >= 1 as set_aside, last_error like '%team_rule%' as said from mirror",
        "set_aside,said\ntrue,true\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // The mirror goes on: a later change arrives, the refused one never does, and DuckDB
    // has it.
    label(&pods[2], "later");
    wait_pg(&pg, &team_of(&pods[2]), "later", Duration::from_secs(10)).await;
    assert_eq!(pg.sql(&team_of(&pods[0])), "");
    assert_eq!(
        env.csv(&format!(
            "select labels->>'team' as team from pods where name = '{}'",
            pods[0].1
        ))
        .await
        .unwrap(),
        "team\nrefused\n"
    );
    // Setting a row aside is not a failure of the connection: the session went on.
    let log = kqd.log();
    assert!(
        !log.contains("postgres mirror failed"),
        "a refused row cost the session:\n{log}"
    );
}

/// Restarts the containers of some pods, deletes one and adds one: churn for outages.
fn churn(c: &kube_sim::Cluster, round: usize) {
    for (ns, name, container) in kq_e2e::sim_pods(c).into_iter().take(5) {
        scenario::crash_container(&c.store, &ns, &name, &container, 1, "Error", None).unwrap();
    }
    let _ = scenario::create_pod(&c.store, "default", &format!("churn-{round}"), "nginx:1");
    if round > 0 {
        let _ = scenario::delete(
            &c.store,
            "v1",
            "Pod",
            "default",
            &format!("churn-{}", round - 1),
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_down_for_30_seconds_under_churn_is_exact_within_10_seconds_of_its_return() {
    let pg = Postgres::start();
    let env = Env::start(2, 30).await;
    let _kqd = kqd_mirroring(&env, &pg, &[]).await;
    env.wait_pods_synced(Duration::from_secs(60)).await;
    wait_exact(&env, &pg, Duration::from_secs(30)).await;

    pg.stop();
    let down = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut round = 0;
    while down.elapsed() < Duration::from_secs(30) {
        for c in &env.fleet.clusters {
            churn(c, round);
        }
        round += 1;
        // DuckDB answers as usual meanwhile.
        let asked = Instant::now();
        env.csv("select count(*) from pods").await.unwrap();
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let state = env
        .csv("select state, connected, outbox > 0 as owes from mirror")
        .await
        .unwrap();
    assert_eq!(
        state, "state,connected,owes\nerror,false,true\n",
        "the outage is reported"
    );
    let error = env.csv("select last_error from mirror").await.unwrap();
    assert!(error.contains("postgres"), "{error}");
    eprintln!("slowest DuckDB query during the outage: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "a query stalled: {slowest:?}"
    );

    pg.start_again();
    let took = wait_exact(&env, &pg, Duration::from_secs(10)).await;
    eprintln!("exact {took:?} after PostgreSQL came back");
}

/// An outbox entry may say a pod's containers are as PostgreSQL had them (its status
/// message changed, nothing else): the mirror then sends the pod's rows alone. A later
/// restart must still reach the containers, and a database that never had them must
/// still get them.
#[tokio::test(flavor = "multi_thread")]
async fn a_status_change_sends_the_pod_alone_and_a_database_new_to_kqd_still_gets_its_containers() {
    let pg = Postgres::start();
    let env = Env::start(1, 10).await;
    let config = env.dir.path().join("config.toml");
    std::fs::write(&config, format!("postgres_url = \"{}\"\n", pg.url())).unwrap();
    let (mut cmd, log) = env.kqd_command();
    cmd.arg("--config").arg(&config);
    let kqd = env.start_kqd(cmd, log).await;
    env.wait_pods_synced(Duration::from_secs(60)).await;
    wait_exact(&env, &pg, Duration::from_secs(30)).await;

    let c = env.fleet.clusters[0].clone();
    let (ns, name, container) = kq_e2e::sim_pods(&c).into_iter().next().unwrap();
    let pods = c.store.resolve_kind("v1", "Pod").unwrap();
    let message = |m: &str| {
        c.store
            .patch(
                &pods,
                &ns,
                &name,
                kube_sim::patch::PatchType::Merge,
                json!({"status": {"message": m}}).to_string().as_bytes(),
                true,
            )
            .unwrap();
    };
    // A status message owes PostgreSQL the pod's rows, not its containers; the container's
    // restart after it owes them again.
    message("only a message");
    wait_pg(
        &pg,
        &format!("select object->'status'->>'message' from kq.objects where kind = 'Pod' and name = '{name}'"),
        "only a message",
        Duration::from_secs(2),
    )
    .await;
    // The change arrived in the transaction of the row it led to: a reader of PostgreSQL
    // never sees the one without the other.
    assert_eq!(
        pg.sql(&format!(
            "select count(*) from kq.changes ch join kq.pods p
                on ch.uid = p.uid and ch.resource_version = p.resource_version
             where p.name = '{name}' and ch.xmin = p.xmin"
        )),
        "1"
    );
    scenario::crash_container(&c.store, &ns, &name, &container, 1, "Error", None).unwrap();
    wait_pg(
        &pg,
        &format!("select restart_count from kq.containers where pod = '{name}'"),
        "1",
        Duration::from_secs(2),
    )
    .await;
    wait_exact(&env, &pg, Duration::from_secs(10)).await;

    // While PostgreSQL is away, the status message changes again: the outbox owes the pod,
    // and says its containers did not change.
    pg.stop();
    message("changed while away");
    env.wait_csv(
        &format!(
            "select object->'status'->>'message' as m from objects where kind = 'Pod' and name = '{name}'"
        ),
        "m\nchanged while away\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();

    // It comes back as another schema, which has none of this kqd's rows.
    std::fs::write(
        &config,
        format!(
            "postgres_url = \"{}\"\npostgres_schema = \"fresh\"\n",
            pg.url()
        ),
    )
    .unwrap();
    kqd.hangup();
    // The mirror takes the new schema before PostgreSQL is back, so the entry is still
    // owed when it connects.
    env.wait_csv(
        "select schema, outbox > 0 as owes from mirror",
        "schema,owes\nfresh,true\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    pg.start_again();
    wait_exact_at(&env, &env.socket, &pg, "fresh", Duration::from_secs(30)).await;
    assert_ne!(
        pg.sql(&format!(
            "select count(*) from fresh.containers where pod = '{name}'"
        )),
        "0"
    );
    assert!(kqd.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn kqd_killed_during_the_catch_up_converges_after_a_restart() {
    let pg = Postgres::start();
    let env = Env::start(1, 4000).await;
    let kqd = kqd_mirroring(&env, &pg, &[]).await;
    let started = Instant::now();
    let mirrored = loop {
        let n: i64 = pg
            .psql("select count(*) from kq.objects")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if n > 0 {
            break n;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing was mirrored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(kqd); // SIGKILL
    let _kqd = kqd_mirroring(&env, &pg, &[]).await;
    env.wait_pods_synced(Duration::from_secs(60)).await;
    wait_exact(&env, &pg, Duration::from_secs(60)).await;
    let objects: i64 = env
        .csv("select count(*) from objects")
        .await
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("killed with {mirrored} of {objects} objects rows in PostgreSQL");
    assert!(mirrored < objects, "killed in the middle of the catch-up");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_dropped_mid_copy_mid_commit_and_after_the_commit_converge_without_duplicates()
{
    use kq_e2e::pgproxy::{Fault, PgProxy};
    let pg = Postgres::start();
    let proxy = PgProxy::start(pg.port).await;
    let env = Env::start(1, 20).await;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port);
    let _kqd = env.kqd_with(&[("KQ_POSTGRES_URL", url.as_str())]).await;
    env.wait_pods_synced(Duration::from_secs(60)).await;
    wait_exact(&env, &pg, Duration::from_secs(30)).await;
    let c = env.fleet.clusters[0].clone();
    let faults = [Fault::MidCopy, Fault::BeforeCommit, Fault::AfterCommit];
    for (round, fault) in faults.into_iter().enumerate() {
        proxy.arm(fault);
        churn(&c, round);
        let started = Instant::now();
        while proxy.armed() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{fault:?} never happened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = wait_exact(&env, &pg, Duration::from_secs(10)).await;
        eprintln!("exact {took:?} after a connection dropped {fault:?}");
    }
    assert_eq!(proxy.fired(), faults);
    assert_eq!(
        pg.sql("select (select count(*) - count(distinct seq) from kq.changes) + (select count(*) - count(distinct id) from kq.incidents)"),
        "0"
    );
    let incidents: i64 = pg.sql("select count(*) from kq.incidents").parse().unwrap();
    assert!(
        incidents >= 5,
        "the crashes were mirrored as incidents: {incidents}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_on_one_database_keep_to_their_own_rows_and_the_views_show_each_pod_once() {
    let pg = Postgres::start();
    let env = Env::start(1, 25).await;
    // The same cluster under another context name, as a colleague's kubeconfig has it.
    let mut theirs = env.fleet.kubeconfig();
    theirs["contexts"][0]["name"] = json!("colleague");
    theirs["current-context"] = json!("colleague");
    let their_config = env.dir.path().join("their-kubeconfig");
    kube_sim::fleet::write_private(&their_config, &serde_json::to_string(&theirs).unwrap())
        .unwrap();
    let (their_data, their_socket) = (
        env.dir.path().join("theirs"),
        env.dir.path().join("theirs.sock"),
    );

    let url = pg.url();
    let _mine = kqd_mirroring(&env, &pg, &[]).await;
    let (mut cmd, log) = env.kqd_command_on(&their_config, &their_data, &their_socket);
    cmd.env("KQ_POSTGRES_URL", &url);
    let child = cmd.spawn().unwrap();
    let theirs_kqd = kq_e2e::Kqd { child, log };
    wait_exact(&env, &pg, Duration::from_secs(60)).await;
    wait_exact_at(&env, &their_socket, &pg, "kq", Duration::from_secs(60)).await;
    let (me, them) = (
        instance(&env, &env.socket).await,
        instance(&env, &their_socket).await,
    );
    assert_ne!(me, them);
    let pods = kq_e2e::sim_pods(&env.fleet.clusters[0]).len();
    assert_eq!(
        pg.sql("select string_agg(instance || '/' || context || '=' || n, ' ' order by instance) from (select instance, context, count(*) n from kq.pods group by 1, 2) t"),
        {
            let mut v = [format!("{me}/sim-1={pods}"), format!("{them}/colleague={pods}")];
            v.sort();
            v.join(" ")
        }
    );
    assert_eq!(
        pg.sql("select count(*) from kq.pods_current"),
        pods.to_string()
    );
    assert_eq!(
        pg.sql("select count(distinct cluster_id) from kq.pods"),
        "1",
        "both copies name the same cluster"
    );

    // Theirs stops; a pod goes: mine removes its own row and leaves theirs alone.
    assert!(theirs_kqd.terminate().success());
    let theirs_before = pg.sql(&format!(
        "select count(*) from kq.pods where instance = '{them}'"
    ));
    let (ns, name, _) = kq_e2e::sim_pods(&env.fleet.clusters[0]).remove(0);
    scenario::delete(&env.fleet.clusters[0].store, "v1", "Pod", &ns, &name).unwrap();
    wait_pg(
        &pg,
        &format!("select count(*) from kq.pods where instance = '{me}' and name = '{name}'"),
        "0",
        Duration::from_secs(5),
    )
    .await;
    wait_exact(&env, &pg, Duration::from_secs(10)).await;
    assert_eq!(
        pg.sql(&format!(
            "select count(*) from kq.pods where instance = '{them}'"
        )),
        theirs_before
    );

    // A second kqd claiming my instance id is refused, and says why.
    let _impostor = impostor_refused(&env, &url, &me).await;
    assert_eq!(
        pg.sql(&format!(
            "select count(*) from kq.pods where instance = '{me}'"
        )),
        (pods - 1).to_string(),
        "the refused kqd wrote nothing"
    );
}

/// Starts a second kqd, on a data directory of its own, claiming `instance` in the
/// database at `url`; waits until it says its mirror is refused, and why.
async fn impostor_refused(env: &Env, url: &str, instance: &str) -> (kq_e2e::Kqd, PathBuf) {
    let (data, socket) = (
        env.dir.path().join("impostor"),
        env.dir.path().join("impostor.sock"),
    );
    let (mut cmd, log) = env.kqd_command_at(&data, &socket);
    cmd.env("KQ_POSTGRES_URL", url)
        .env("KQ_MIRROR_INSTANCE", instance);
    let child = cmd.spawn().unwrap();
    let impostor = kq_e2e::Kqd { child, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = csv_at(env, &socket, "select state, last_error from mirror")
            .await
            .unwrap_or_default();
        if row.contains("refused") {
            assert!(
                row.contains("another kqd is mirroring as instance"),
                "{row}"
            );
            return (impostor, socket);
        }
        assert!(Instant::now() < deadline, "not refused: {row}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn through_pgbouncer_in_transaction_mode_the_mirror_is_exact_and_an_instance_stays_one_kqds()
{
    let pg = Postgres::start();
    // One server connection, which every client's transactions take in turn: what a
    // session holds (a lock, a prepared statement, a setting) stays on it for the next
    // client, as it does with any pool once it is busy.
    let bouncer = PgBouncer::transaction_pool(&pg, 1);
    let url = bouncer.url();
    let env = Env::start(1, 25).await;
    let mine = env.kqd_with(&[("KQ_POSTGRES_URL", url.as_str())]).await;
    wait_exact(&env, &pg, Duration::from_secs(60)).await;
    let me = instance(&env, &env.socket).await;

    // A second kqd claiming my instance id through the same pool is refused.
    let (impostor, other_socket) = impostor_refused(&env, &url, &me).await;

    // Mine, killed and started again on its data directory, is the same instance: it
    // takes the instance back at once (its claim has not lapsed, so the other cannot) and
    // mirrors what changed meanwhile.
    drop(mine); // SIGKILL
    let (ns, name, _) = kq_e2e::sim_pods(&env.fleet.clusters[0]).remove(0);
    scenario::delete(&env.fleet.clusters[0].store, "v1", "Pod", &ns, &name).unwrap();
    let mine = env.kqd_with(&[("KQ_POSTGRES_URL", url.as_str())]).await;
    wait_pg(
        &pg,
        &format!("select count(*) from kq.pods where instance = '{me}' and name = '{name}'"),
        "0",
        Duration::from_secs(30),
    )
    .await;
    wait_exact(&env, &pg, Duration::from_secs(30)).await;
    assert!(
        csv_at(&env, &other_socket, "select state from mirror")
            .await
            .unwrap_or_default()
            .contains("refused"),
        "the other kqd took the instance while mine was down"
    );

    // Mine stops and gives its claim up: the other, retrying, takes the instance well
    // before the claim would have lapsed.
    assert!(mine.terminate().success());
    let stopped = Instant::now();
    loop {
        let row = csv_at(&env, &other_socket, "select state from mirror")
            .await
            .unwrap_or_default();
        if row.contains("streaming") {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "the other kqd did not take the given-up instance: {row}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(impostor);
    let log = bouncer.log();
    assert!(!log.contains("ERROR"), "pgbouncer logged errors:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_names_the_privilege_a_role_lacks_and_never_prints_the_password() {
    let pg = Postgres::start();
    let env = Env::start(1, 1).await;
    pg.sql("CREATE ROLE limited LOGIN");
    let check = |url: String| {
        let (mut cmd, _) = env.kqd_command();
        cmd.arg("--check-config")
            .env("KQ_POSTGRES_URL", url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.output().unwrap()
    };
    let limited = check(format!(
        "postgres://limited:s3cret-pw@127.0.0.1:{}/postgres",
        pg.port
    ));
    let out = String::from_utf8_lossy(&limited.stdout).into_owned();
    assert_eq!(limited.status.code(), Some(1), "{out}");
    assert!(
        out.contains(
            "role limited lacks CREATE on database postgres (the mirror creates schema kq there)"
        ),
        "{out}"
    );
    assert!(
        !out.contains("s3cret-pw"),
        "the password was printed: {out}"
    );
    let fine = check(pg.url());
    let out = String::from_utf8_lossy(&fine.stdout).into_owned();
    assert_eq!(fine.status.code(), Some(0), "{out}");
    assert!(out.contains("every privilege the mirror needs"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_from_before_the_instance_claim_gains_its_columns_and_keeps_its_rows() {
    let pg = Postgres::start();
    // `mirror_instances` as the kqd before the lease made it, with another instance's row.
    pg.sql(
        "CREATE SCHEMA kq;
         CREATE TABLE kq.mirror_meta (key text PRIMARY KEY, value text NOT NULL);
         INSERT INTO kq.mirror_meta VALUES ('schema_version', '1'), ('ddl_digest', 'before-the-lease');
         CREATE TABLE kq.mirror_instances (
           instance text PRIMARY KEY,
           changes_seq bigint NOT NULL DEFAULT 0,
           host text, kqd_version text,
           applied_at timestamptz);
         INSERT INTO kq.mirror_instances VALUES ('older', 42, 'old-host', '0.1.0', now());",
    );
    let env = Env::start(1, 5).await;
    let _kqd = kqd_mirroring(&env, &pg, &[]).await;
    wait_exact(&env, &pg, Duration::from_secs(60)).await;
    let me = instance(&env, &env.socket).await;
    assert_eq!(
        pg.sql(&format!(
            "select instance, changes_seq > 0, holder is not null, held_until > now()
               from kq.mirror_instances where instance in ('older', '{me}') order by instance = 'older'"
        )),
        format!("{me}|t|t|t\nolder|t|f|"),
        "the columns were added, mine holds its claim, the older row is as it was"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwatched_kind_and_pruned_changes_leave_postgres_too() {
    let pg = Postgres::start();
    let env = Env::start(1, 10).await;
    fill(&env.fleet.clusters[0], "x");
    let kqd = kqd_mirroring(&env, &pg, &[]).await;
    env.wait_pods_synced(Duration::from_secs(60)).await;
    wait_exact(&env, &pg, Duration::from_secs(30)).await;
    assert_ne!(pg.sql("select count(*) from kq.services"), "0");
    let old_changes = pg.sql("select max(seq) from kq.changes");
    assert!(kqd.terminate().success());

    // Services are no longer watched, and changes are kept about a second.
    let config = env.dir.path().join("config.toml");
    std::fs::write(
        &config,
        "exclude_kinds = [\"services\"]\nchanges_retention_days = 0.00001\n",
    )
    .unwrap();
    let (mut cmd, log) = env.kqd_command();
    cmd.arg("--config")
        .arg(&config)
        .env("KQ_POSTGRES_URL", pg.url());
    let _kqd = env.start_kqd(cmd, log).await;
    env.wait_csv(
        "select count(*) from services",
        "count_star()\n0\n",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    wait_pg(
        &pg,
        "select count(*) from kq.services",
        "0",
        Duration::from_secs(5),
    )
    .await;
    wait_pg(
        &pg,
        &format!("select count(*) from kq.changes where seq <= {old_changes}"),
        "0",
        Duration::from_secs(10),
    )
    .await;
    wait_exact(&env, &pg, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_sets_changes_and_removes_the_postgres_url() {
    let pg = Postgres::start();
    let env = Env::start(1, 10).await;
    let config = env.dir.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    let (mut cmd, log) = env.kqd_command();
    cmd.arg("--config").arg(&config);
    let kqd = env.start_kqd(cmd, log).await;
    env.wait_pods_synced(Duration::from_secs(60)).await;
    assert_eq!(
        env.csv("select count(*) from mirror").await.unwrap(),
        "count_star()\n0\n"
    );

    // Set: everything arrives.
    std::fs::write(&config, format!("postgres_url = \"{}\"\n", pg.url())).unwrap();
    kqd.hangup();
    wait_exact(&env, &pg, Duration::from_secs(30)).await;

    // Changed (another schema): everything arrives there too, and the first one stops.
    std::fs::write(
        &config,
        format!(
            "postgres_url = \"{}\"\npostgres_schema = \"team\"\n",
            pg.url()
        ),
    )
    .unwrap();
    kqd.hangup();
    wait_exact_at(&env, &env.socket, &pg, "team", Duration::from_secs(30)).await;
    let c = env.fleet.clusters[0].clone();
    scenario::create_pod(&c.store, "default", "after-change", "nginx:1").unwrap();
    wait_pg(
        &pg,
        "select count(*) from team.pods where name = 'after-change'",
        "1",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        pg.sql("select count(*) from kq.pods where name = 'after-change'"),
        "0"
    );

    // Removed: the mirror row goes, and nothing more is sent.
    std::fs::write(&config, "").unwrap();
    kqd.hangup();
    env.wait_csv(
        "select count(*) from mirror",
        "count_star()\n0\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    scenario::create_pod(&c.store, "default", "after-removal", "nginx:1").unwrap();
    env.wait_csv(
        "select count(*) from pods where name = 'after-removal'",
        "count_star()\n1\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(
        pg.sql("select count(*) from team.pods where name = 'after-removal'"),
        "0"
    );
    assert!(kqd.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_verify_full_connects_encrypted_and_a_foreign_ca_is_refused() {
    let pg = Postgres::start_tls();
    let ca = pg.ca.clone().unwrap();
    let env = Env::start(1, 5).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}&application_name=kq-tls-test",
        pg.port,
        ca.display()
    );
    let kqd = env.kqd_with(&[("KQ_POSTGRES_URL", url.as_str())]).await;
    env.wait_pods_synced(Duration::from_secs(60)).await;
    wait_exact(&env, &pg, Duration::from_secs(30)).await;
    assert_eq!(
        pg.sql("select bool_and(s.ssl) from pg_stat_ssl s join pg_stat_activity a using (pid) where a.application_name = 'kq-tls-test'"),
        "t",
        "the mirror's connection is encrypted"
    );
    assert!(kqd.terminate().success());

    // A CA that did not sign the server's certificate: refused, and said so.
    let other = Postgres::start_tls();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port,
        other.ca.clone().unwrap().display()
    );
    let _kqd = env.kqd_with(&[("KQ_POSTGRES_URL", url.as_str())]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = env
            .csv("select state, last_error from mirror")
            .await
            .unwrap_or_default();
        if row.contains("error,") {
            assert!(row.to_lowercase().contains("certificate"), "{row}");
            break;
        }
        assert!(Instant::now() < deadline, "not refused: {row}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_role_can_query_the_mirror_and_not_change_it() {
    let pg = Postgres::start();
    pg.sql("CREATE ROLE grafana LOGIN");
    let env = Env::start(1, 5).await;
    let _kqd = kqd_mirroring(&env, &pg, &[("KQ_MIRROR_READ_ROLE", "grafana")]).await;
    env.wait_pods_synced(Duration::from_secs(60)).await;
    wait_exact(&env, &pg, Duration::from_secs(30)).await;
    let as_grafana = |sql: &str| pg.psql(&format!("SET ROLE grafana; {sql}"));
    let pods = as_grafana("select count(*) from kq.pods_current").unwrap();
    assert_eq!(pods.lines().last().unwrap(), "5");
    let refused = as_grafana("delete from kq.pods").unwrap_err();
    assert!(refused.contains("permission denied"), "{refused}");
}
