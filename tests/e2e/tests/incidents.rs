//! Incidents end to end: each simulator scenario yields exactly one incident of the right
//! type, repeats raise occurrences, restarts and relists add nothing, rolling updates and
//! short image-pull failures are not incidents, and `kq incidents --follow` streams them.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kq_e2e::Env;
use kube_sim::scenario;
use serde_json::Value;

/// A running pod of the simulator: namespace, name, first container and its memory limit.
#[derive(Debug, Clone)]
struct SimPod {
    ns: String,
    name: String,
    container: String,
    memory_limit: Option<String>,
}

/// Running pods owned by ReplicaSets (so none is a Job's), in a stable order.
fn running_pods(c: &kube_sim::Cluster) -> Vec<SimPod> {
    let rt = c.store.resolve_kind("v1", "Pod").unwrap();
    let mut pods: Vec<SimPod> = c
        .store
        .list(&rt, &Default::default(), None, None)
        .unwrap()
        .items
        .iter()
        .map(|o| o.value())
        .filter(|p| {
            p["status"]["phase"] == "Running"
                && p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        })
        .map(|p: Value| SimPod {
            ns: p["metadata"]["namespace"].as_str().unwrap().into(),
            name: p["metadata"]["name"].as_str().unwrap().into(),
            container: p["spec"]["containers"][0]["name"].as_str().unwrap().into(),
            memory_limit: p["spec"]["containers"][0]["resources"]["limits"]["memory"]
                .as_str()
                .map(str::to_string),
        })
        .collect();
    pods.sort_by(|a, b| (&a.ns, &a.name).cmp(&(&b.ns, &b.name)));
    pods
}

fn names_of(c: &kube_sim::Cluster, api_version: &str, kind: &str) -> Vec<(String, String)> {
    let rt = c.store.resolve_kind(api_version, kind).unwrap();
    let mut v: Vec<(String, String)> = c
        .store
        .list(&rt, &Default::default(), None, None)
        .unwrap()
        .items
        .iter()
        .map(|o| (o.namespace.clone(), o.name.clone()))
        .collect();
    v.sort();
    v
}

async fn synced(env: &Env) {
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let want = format!("n\n{}\n", env.fleet.clusters.len());
    env.wait_csv(
        "select count(*) as n from contexts where state = 'ready'",
        &want,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn each_scenario_produces_exactly_one_incident_of_its_type() {
    let env = Env::start(1, 80).await;
    let c = env.fleet.clusters[0].clone();
    let _kqd = env
        .kqd_with(&[
            ("KQ_IMAGE_PULL_GRACE_SECS", "1"),
            ("KQ_PENDING_TIMEOUT_SECS", "1"),
        ])
        .await;
    synced(&env).await;
    assert_eq!(
        env.csv("select count(*) from incidents").await.unwrap(),
        "count_star()\n0\n",
        "a healthy fleet has no incidents"
    );

    let pods = running_pods(&c);
    assert!(pods.len() >= 25, "enough running pods: {}", pods.len());
    let p = |i: usize| pods[i].clone();
    scenario::crash_container(
        &c.store,
        &p(0).ns,
        &p(0).name,
        &p(0).container,
        1,
        "Error",
        Some("panic: boom"),
    )
    .unwrap();
    scenario::oom_kill(&c.store, &p(1).ns, &p(1).name, &p(1).container).unwrap();
    scenario::crash_container(
        &c.store,
        &p(2).ns,
        &p(2).name,
        &p(2).container,
        137,
        "Error",
        None,
    )
    .unwrap();
    scenario::crash_container(
        &c.store,
        &p(3).ns,
        &p(3).name,
        &p(3).container,
        139,
        "Error",
        None,
    )
    .unwrap();
    scenario::image_pull_failure(
        &c.store,
        &p(4).ns,
        &p(4).name,
        &p(4).container,
        "ImagePullBackOff",
    )
    .unwrap();
    scenario::image_pull_failure(
        &c.store,
        &p(5).ns,
        &p(5).name,
        &p(5).container,
        "CreateContainerConfigError",
    )
    .unwrap();
    scenario::evict(&c.store, &p(6).ns, &p(6).name).unwrap();
    let nodes = names_of(&c, "v1", "Node");
    scenario::set_node_condition(&c.store, &nodes[0].1, "Ready", "False").unwrap();
    scenario::set_node_condition(&c.store, &nodes[1].1, "MemoryPressure", "True").unwrap();
    let jobs = names_of(&c, "batch/v1", "Job");
    scenario::fail_job(&c.store, &jobs[0].0, &jobs[0].1, "BackoffLimitExceeded").unwrap();
    scenario::warning_event(
        &c.store,
        &p(7).ns,
        "Pod",
        &p(7).name,
        "FailedScheduling",
        "0/4 nodes are available: 4 Insufficient cpu.",
    )
    .unwrap();
    let mut pending = serde_json::json!({
        "metadata": {"name": "stuck"},
        "spec": {"containers": [{"name": "main", "image": "nginx:1"}]},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]},
    });
    let rt = c.store.resolve_kind("v1", "Pod").unwrap();
    pending["metadata"]["namespace"] = p(0).ns.clone().into();
    c.store.create(&rt, &p(0).ns, pending).unwrap();

    let mut want = vec![
        (
            p(0).name,
            "error",
            "medium",
            "1",
            "",
            p(0).container.clone(),
        ),
        (
            p(1).name,
            "oom_killed",
            "high",
            "137",
            "SIGKILL",
            p(1).container.clone(),
        ),
        (
            p(2).name,
            "killed",
            "high",
            "137",
            "SIGKILL",
            p(2).container.clone(),
        ),
        (
            p(3).name,
            "signal",
            "medium",
            "139",
            "SIGSEGV",
            p(3).container.clone(),
        ),
        (
            p(4).name,
            "image_pull",
            "high",
            "",
            "",
            p(4).container.clone(),
        ),
        (
            p(5).name,
            "config_error",
            "high",
            "",
            "",
            p(5).container.clone(),
        ),
        (p(6).name, "evicted", "high", "", "", String::new()),
        (
            nodes[0].1.clone(),
            "node_not_ready",
            "critical",
            "",
            "",
            String::new(),
        ),
        (
            nodes[1].1.clone(),
            "memory_pressure",
            "high",
            "",
            "",
            String::new(),
        ),
        (
            jobs[0].1.clone(),
            "job_failed",
            "high",
            "",
            "",
            String::new(),
        ),
        (
            p(7).name,
            "failed_scheduling",
            "medium",
            "",
            "",
            String::new(),
        ),
        (
            "stuck".to_string(),
            "pending",
            "medium",
            "",
            "",
            String::new(),
        ),
    ];
    // The rest of the exit-code table, the other waiting reasons, Warning events, a failed
    // pod and the other node conditions: one pod (or node) each.
    let exits = [
        (0, "graceful", "low", ""),
        (2, "misuse", "medium", ""),
        (3, "exited", "medium", ""),
        (125, "runtime_error", "high", ""),
        (126, "not_executable", "high", ""),
        (127, "command_not_found", "high", ""),
        (128, "invalid_exit_argument", "medium", ""),
        (130, "interrupted", "low", "SIGINT"),
        (143, "terminated", "medium", "SIGTERM"),
    ];
    let mut next = 8;
    for (code, typ, sev, sig) in exits {
        let q = p(next);
        next += 1;
        let reason = if code == 0 { "Completed" } else { "Error" };
        scenario::crash_container(&c.store, &q.ns, &q.name, &q.container, code, reason, None)
            .unwrap();
        want.push((q.name, typ, sev, code.to_string().leak(), sig, q.container));
    }
    for (reason, typ) in [
        ("CrashLoopBackOff", "crash_loop"),
        ("InvalidImageName", "invalid_image"),
        ("CreateContainerError", "create_error"),
    ] {
        let q = p(next);
        next += 1;
        scenario::image_pull_failure(&c.store, &q.ns, &q.name, &q.container, reason).unwrap();
        want.push((q.name, typ, "high", "", "", q.container));
    }
    for (reason, typ, sev) in [
        ("FailedMount", "failed_mount", "medium"),
        ("BackOff", "back_off", "low"),
        ("Unhealthy", "probe_failed", "medium"),
        ("FailedCreatePodSandBox", "failed_create", "medium"),
        ("FailedKillPod", "warning", "low"),
    ] {
        let q = p(next);
        next += 1;
        scenario::warning_event(&c.store, &q.ns, "Pod", &q.name, reason, "something failed")
            .unwrap();
        want.push((q.name, typ, sev, "", "", String::new()));
    }
    scenario::set_node_condition(&c.store, &nodes[2].1, "DiskPressure", "True").unwrap();
    scenario::set_node_condition(&c.store, &nodes[3].1, "PIDPressure", "True").unwrap();
    want.push((
        nodes[2].1.clone(),
        "disk_pressure",
        "high",
        "",
        "",
        String::new(),
    ));
    want.push((
        nodes[3].1.clone(),
        "pid_pressure",
        "high",
        "",
        "",
        String::new(),
    ));
    let failed = serde_json::json!({
        "metadata": {"name": "failed-pod", "namespace": p(0).ns},
        "spec": {"containers": [{"name": "main", "image": "nginx:1"}]},
        "status": {"phase": "Failed", "reason": "NodeAffinity", "message": "Pod was rejected"},
    });
    c.store.create(&rt, &p(0).ns, failed).unwrap();
    want.push((
        "failed-pod".into(),
        "pod_failed",
        "high",
        "",
        "",
        String::new(),
    ));
    // Every documented type is exercised once.
    let mut covered: Vec<&str> = want.iter().map(|w| w.1).collect();
    covered.sort();
    let mut documented: Vec<&str> = kq_schema::incidents::INCIDENT_TYPES
        .iter()
        .map(|t| t.name)
        .collect();
    documented.sort();
    assert_eq!(covered, documented);

    let mut expected: Vec<String> = want
        .iter()
        .map(|(n, t, s, e, sig, c)| format!("{n},{t},{s},{e},{sig},{c}"))
        .collect();
    expected.sort();
    let expected = format!(
        "object_name,type,severity,exit_code,signal,container\n{}\n",
        expected.join("\n")
    );
    env.wait_csv(
        "select object_name, type, severity, exit_code, signal, container from incidents order by all",
        &expected,
        Duration::from_secs(15),
    )
    .await
    .unwrap();

    // The container's limits at the time, the message, the controller and the cluster.
    let limit = kube_sim_bytes(p(1).memory_limit.as_deref());
    let row = env
        .csv(&format!(
            "select memory_limit_bytes, occurrences, restart_count, reason, controller like 'Deployment/%' as by_deployment, cluster_id is not null as has_cluster
             from incidents where object_name = '{}'",
            p(1).name
        ))
        .await
        .unwrap();
    assert_eq!(
        row,
        format!(
            "memory_limit_bytes,occurrences,restart_count,reason,by_deployment,has_cluster\n{limit},1,1,OOMKilled,true,true\n"
        )
    );
    let msg = env
        .csv(&format!(
            "select message from incidents where object_name = '{}'",
            p(0).name
        ))
        .await
        .unwrap();
    assert_eq!(msg, "message\npanic: boom\n");
}

/// "512Mi" → bytes, as kq stores quantities.
fn kube_sim_bytes(q: Option<&str>) -> i64 {
    let q = q.expect("the pod has a memory limit");
    let n: i64 = q.trim_end_matches("Mi").parse().unwrap();
    n * 1024 * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_crashes_raise_occurrences_and_a_restart_adds_no_duplicate() {
    let env = Env::start(1, 20).await;
    let c = env.fleet.clusters[0].clone();
    let vars = [("KQ_HEALTHY_AFTER_SECS", "1")];
    let kqd = env.kqd_with(&vars).await;
    synced(&env).await;
    let p = running_pods(&c)[0].clone();
    let crash = || {
        scenario::crash_container(&c.store, &p.ns, &p.name, &p.container, 1, "Error", None)
            .unwrap();
    };
    let sql = format!(
        "select count(*) as n, max(occurrences) as occ, max(restart_count) as restarts from incidents where object_name = '{}'",
        p.name
    );
    for i in 1..=3 {
        crash();
        env.wait_csv(
            &sql,
            &format!("n,occ,restarts\n1,{i},{i}\n"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    }

    // A crash while kqd is down is one more occurrence of the same incident after restart.
    assert!(kqd.terminate().success());
    crash();
    let kqd = env.kqd_with(&vars).await;
    synced(&env).await;
    env.wait_csv(&sql, "n,occ,restarts\n1,4,4\n", Duration::from_secs(10))
        .await
        .unwrap();

    // Healthy again for `healthy_after`: it ends. A restart then raises nothing, although
    // the pod still shows its last termination.
    scenario::recover_container(&c.store, &p.ns, &p.name, &p.container).unwrap();
    let ended = format!(
        "select count(*) as n, count(resolved_at) as ended from incidents where object_name = '{}'",
        p.name
    );
    env.wait_csv(&ended, "n,ended\n1,1\n", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(kqd.terminate().success());
    let _kqd = env.kqd_with(&vars).await;
    synced(&env).await;
    // A fresh crash elsewhere proves the restarted kqd processes incidents; then the first
    // pod must still have its one ended incident.
    let q = running_pods(&c)[1].clone();
    scenario::crash_container(&c.store, &q.ns, &q.name, &q.container, 2, "Error", None).unwrap();
    env.wait_csv(
        &format!(
            "select type from incidents where object_name = '{}'",
            q.name
        ),
        "type\nmisuse\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(env.csv(&ended).await.unwrap(), "n,ended\n1,1\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_pod_ends_its_incident() {
    let env = Env::start(1, 10).await;
    let c = env.fleet.clusters[0].clone();
    let _kqd = env.kqd().await;
    synced(&env).await;
    let p = running_pods(&c)[0].clone();
    scenario::crash_container(&c.store, &p.ns, &p.name, &p.container, 127, "Error", None).unwrap();
    let sql = format!(
        "select type, severity, resolved_at is not null as ended from incidents where object_name = '{}'",
        p.name
    );
    env.wait_csv(
        &sql,
        "type,severity,ended\ncommand_not_found,high,false\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    scenario::delete(&c.store, "v1", "Pod", &p.ns, &p.name).unwrap();
    env.wait_csv(
        &sql,
        "type,severity,ended\ncommand_not_found,high,true\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_update_and_a_short_image_pull_failure_are_not_incidents() {
    let env = Env::start(1, 30).await;
    let c = env.fleet.clusters[0].clone();
    let _kqd = env.kqd_with(&[("KQ_IMAGE_PULL_GRACE_SECS", "2")]).await;
    synced(&env).await;

    // A rolling update: the old pods exit 143 and are deleted, new pods start.
    let deployments = names_of(&c, "apps/v1", "Deployment");
    let (ns, dep) = deployments[0].clone();
    let new_pods = scenario::rolling_update(&c.store, &ns, &dep, "registry.example/app:2").unwrap();
    assert!(!new_pods.is_empty());
    env.wait_pods_synced(Duration::from_secs(10)).await;

    // An image pull that fails briefly, next to one that keeps failing past the grace
    // period: when the second is recorded, the first has had its chance.
    let pods = running_pods(&c);
    let (brief, lasting) = (pods[0].clone(), pods[1].clone());
    scenario::image_pull_failure(
        &c.store,
        &brief.ns,
        &brief.name,
        &brief.container,
        "ErrImagePull",
    )
    .unwrap();
    scenario::image_pull_failure(
        &c.store,
        &lasting.ns,
        &lasting.name,
        &lasting.container,
        "ImagePullBackOff",
    )
    .unwrap();
    env.wait_csv(
        &format!("select reason from containers where pod = '{}'", brief.name),
        "reason\nErrImagePull\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    scenario::recover_container(&c.store, &brief.ns, &brief.name, &brief.container).unwrap();
    env.wait_csv(
        "select object_name, type from incidents",
        &format!("object_name,type\n{},image_pull\n", lasting.name),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_streams_an_incident_within_two_seconds() {
    let env = Env::start(1, 10).await;
    let c = env.fleet.clusters[0].clone();
    let _kqd = env.kqd().await;
    synced(&env).await;
    let mut follower = Command::new(kq_e2e::bin("kq"))
        .arg("--socket")
        .arg(&env.socket)
        .args([
            "incidents",
            "--follow",
            "--format",
            "jsonl",
            "--min-severity",
            "high",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The follower is subscribed once it says so.
    let mut err = BufReader::new(follower.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("following incidents"), "{line}");
    let (tx, rx) = std::sync::mpsc::channel();
    let out = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), l)).is_err() {
                break;
            }
        }
    });

    let pods = running_pods(&c);
    // A medium incident is filtered out; the high one comes through.
    scenario::crash_container(
        &c.store,
        &pods[1].ns,
        &pods[1].name,
        &pods[1].container,
        1,
        "Error",
        None,
    )
    .unwrap();
    let started = Instant::now();
    scenario::oom_kill(&c.store, &pods[0].ns, &pods[0].name, &pods[0].container).unwrap();
    let (at, line) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("an incident line");
    let _ = follower.kill();
    let _ = follower.wait();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["object_name"], pods[0].name.as_str(), "{line}");
    assert_eq!(v["type"], "oom_killed");
    let took = at.duration_since(started);
    assert!(took < Duration::from_secs(2), "the incident took {took:?}");
    eprintln!("follow latency: {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ended_incidents_are_pruned_only_once_their_object_is_gone() {
    let env = Env::start(1, 10).await;
    let c = env.fleet.clusters[0].clone();
    let vars = [
        ("KQ_HEALTHY_AFTER_SECS", "1"),
        ("KQ_INCIDENTS_RETENTION_DAYS", "0"),
    ];
    let kqd = env.kqd_with(&vars).await;
    synced(&env).await;
    let pods = running_pods(&c);
    let (kept, gone) = (pods[0].clone(), pods[1].clone());
    for p in [&kept, &gone] {
        scenario::crash_container(&c.store, &p.ns, &p.name, &p.container, 1, "Error", None)
            .unwrap();
    }
    scenario::recover_container(&c.store, &kept.ns, &kept.name, &kept.container).unwrap();
    scenario::delete(&c.store, "v1", "Pod", &gone.ns, &gone.name).unwrap();
    let mut both = [kept.name.clone(), gone.name.clone()];
    both.sort();
    env.wait_csv(
        "select object_name, resolved_at is not null as ended from incidents order by 1",
        &format!("object_name,ended\n{},true\n{},true\n", both[0], both[1]),
        Duration::from_secs(10),
    )
    .await
    .unwrap();

    // Retention runs when kqd starts: the deleted pod's incident goes; the other stays,
    // and the relist of its pod (still showing the exit) raises nothing new.
    assert!(kqd.terminate().success());
    let _kqd = env.kqd_with(&vars).await;
    synced(&env).await;
    assert_eq!(
        env.csv("select object_name, resolved_at is not null as ended from incidents")
            .await
            .unwrap(),
        format!("object_name,ended\n{},true\n", kept.name)
    );
}

/// `on_incident` runs once per new incident, with the incident on stdin, in its variables
/// and in its arguments; not for a repeat; and a hook that hangs holds up neither the next
/// incident's row nor its hook.
#[tokio::test(flavor = "multi_thread")]
async fn the_incident_hook_runs_once_per_new_incident_and_a_hanging_one_delays_nothing() {
    let env = Env::start(1, 20).await;
    let c = env.fleet.clusters[0].clone();
    let pods = running_pods(&c);
    let (a, b) = (pods[0].clone(), pods[1].clone());
    let stdin_log = env.dir.path().join("hook-stdin.jsonl");
    let args_log = env.dir.path().join("hook-args.txt");
    let script = env.dir.path().join("hook.sh");
    // The hook for pod a's incident hangs (past the test, short of the hook's deadline).
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat >> {stdin}\necho \"$1|$KQ_INCIDENT_OBJECT_NAME|$KQ_INCIDENT_SEVERITY\" >> {args}\n[ \"$KQ_INCIDENT_OBJECT_NAME\" = \"{a}\" ] && sleep 20\nexit 0\n",
            stdin = stdin_log.display(),
            args = args_log.display(),
            a = a.name,
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let command = serde_json::json!([script.to_str().unwrap(), "{type} {namespace}/{object_name}"])
        .to_string();
    let vars = [
        ("KQ_ON_INCIDENT", command.as_str()),
        ("KQ_ON_INCIDENT_MIN_SEVERITY", "low"),
        ("KQ_HEALTHY_AFTER_SECS", "1"),
    ];
    let _kqd = env.kqd_with(&vars).await;
    synced(&env).await;
    let lines = |p: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let crash = |p: &SimPod| {
        scenario::crash_container(&c.store, &p.ns, &p.name, &p.container, 1, "Error", None)
            .unwrap();
    };
    crash(&a);
    assert!(
        kq_e2e::eventually(Duration::from_secs(10), || lines(&args_log).len() == 1).await,
        "the hook did not run for the first incident"
    );
    // A repeat raises occurrences and runs nothing.
    crash(&a);
    env.wait_csv(
        &format!(
            "select max(occurrences) as occ from incidents where object_name = '{}'",
            a.name
        ),
        "occ\n2\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // With a's hook still hanging, b's incident is recorded and its hook runs.
    let started = Instant::now();
    crash(&b);
    env.wait_csv(
        &format!(
            "select count(*) as n from incidents where object_name = '{}'",
            b.name
        ),
        "n\n1\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(
        kq_e2e::eventually(Duration::from_secs(10), || lines(&args_log).len() == 2).await,
        "the hook did not run for the second incident: {:?}",
        lines(&args_log)
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "b waited on a's hook"
    );
    // The arguments and variables carry the incident's own fields.
    let args = lines(&args_log);
    for (line, p) in args.iter().zip([&a, &b]) {
        let csv = env
            .csv(&format!(
                "select type, severity from incidents where object_name = '{}'",
                p.name
            ))
            .await
            .unwrap();
        let (typ, severity) = csv.lines().nth(1).unwrap().split_once(',').unwrap();
        assert_eq!(
            line,
            &format!("{typ} {}/{}|{}|{severity}", p.ns, p.name, p.name)
        );
    }
    let json: Vec<Value> = lines(&stdin_log)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json.len(), 2, "{json:?}");
    assert_eq!(json[0]["object_name"], a.name.as_str());
    assert_eq!(json[1]["object_name"], b.name.as_str());
    assert_eq!(json[0]["exit_code"], 1);
    assert_eq!(json[0]["context"], "sim-1");
}
