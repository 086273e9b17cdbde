//! Field-level history end to end: `kubectl set image` and a replicas patch against the
//! simulator each give a `changes` row whose diff is exactly that path, old and new; a pod
//! status change gives an empty diff.

use std::process::Command;
use std::time::Duration;

use kq_e2e::Env;
use serde_json::{Value, json};

/// kubectl against the env's simulated cluster.
fn kubectl(env: &Env, args: &[&str]) {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", &env.kubeconfig)
        .env("HOME", env.dir.path())
        .args(args)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first Deployment of the simulator: namespace, name, first container and its image.
fn a_deployment(env: &Env) -> (String, String, String, String) {
    let store = &env.fleet.clusters[0].store;
    let rt = store.resolve_kind("apps/v1", "Deployment").unwrap();
    let mut all: Vec<Value> = store
        .list(&rt, &Default::default(), None, None)
        .unwrap()
        .items
        .iter()
        .map(|o| o.value())
        .collect();
    all.sort_by_key(|d| d["metadata"]["name"].as_str().unwrap().to_string());
    let d = &all[0];
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let s = |v: &Value| v.as_str().unwrap().to_string();
    (
        s(&d["metadata"]["namespace"]),
        s(&d["metadata"]["name"]),
        s(&c["name"]),
        s(&c["image"]),
    )
}

/// `kubectl set image deployment/NAME CONTAINER=IMAGE`.
fn set_image(env: &Env, ns: &str, name: &str, container: &str, image: &str) {
    let deployment = format!("deployment/{name}");
    let assignment = format!("{container}={image}");
    kubectl(env, &["-n", ns, "set", "image", &deployment, &assignment]);
}

/// Waits for the newest modify of `name` whose diff mentions `path`, and returns its diff.
async fn diff_with(env: &Env, kind: &str, name: &str, path: &str) -> (Vec<Value>, bool) {
    let sql = format!(
        "select diff, spec_changed from changes where kind = '{kind}' and name = '{name}' and operation = 'modify' and diff like '%{path}%' order by seq desc limit 1"
    );
    let found = kq_e2e::eventually_async(Duration::from_secs(10), || async {
        env.csv(&sql).await.is_ok_and(|c| c.lines().count() == 2)
    })
    .await;
    assert!(found, "no modify of {kind}/{name} touching {path}");
    let out = env.kq(&["--format", "json", "-c", &sql]).await;
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let diff: Vec<Value> = serde_json::from_str(rows[0]["diff"].as_str().unwrap()).unwrap();
    (diff, rows[0]["spec_changed"].as_bool().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_change_and_a_scale_are_recorded_as_the_fields_they_changed() {
    let env = Env::start(1, 10).await;
    let _kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let (ns, name, container, image) = a_deployment(&env);

    set_image(&env, &ns, &name, &container, "shop:1.5");
    let (diff, spec_changed) = diff_with(&env, "deployments", &name, "containers[0].image").await;
    assert_eq!(
        diff,
        [
            json!({"path": "spec.template.spec.containers[0].image", "old": image, "new": "shop:1.5"})
        ]
    );
    assert!(spec_changed);

    kubectl(
        &env,
        &[
            "-n",
            &ns,
            "patch",
            "deployment",
            &name,
            "-p",
            r#"{"spec":{"replicas":7}}"#,
        ],
    );
    let (diff, spec_changed) = diff_with(&env, "deployments", &name, "spec.replicas").await;
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert_eq!(diff[0]["path"], "spec.replicas");
    assert_eq!(diff[0]["new"], 7);
    assert!(spec_changed);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_status_change_records_no_diff() {
    let env = Env::start(1, 5).await;
    let _kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let store = &env.fleet.clusters[0].store;
    let rt = store.resolve_kind("v1", "Pod").unwrap();
    let pod = store
        .list(&rt, &Default::default(), None, None)
        .unwrap()
        .items[0]
        .value();
    let (ns, name) = (
        pod["metadata"]["namespace"].as_str().unwrap(),
        pod["metadata"]["name"].as_str().unwrap(),
    );
    let container = pod["spec"]["containers"][0]["name"].as_str().unwrap();
    kube_sim::scenario::crash_container(store, ns, name, container, 1, "Error", None).unwrap();
    let sql = format!(
        "select diff, spec_changed from changes where kind = 'pods' and name = '{name}' and operation = 'modify'"
    );
    env.wait_csv(
        &sql,
        "diff,spec_changed\n[],false\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
}

/// An image change, then a crash of the workload's pod: `kq why` lists the Deployment's
/// image change first.
#[tokio::test(flavor = "multi_thread")]
async fn kq_why_lists_the_workloads_image_change_first() {
    let env = Env::start(1, 10).await;
    let _kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let (ns, name, container, _) = a_deployment(&env);
    // A pod of that Deployment (through its ReplicaSet), and its container. The pods being
    // synced says nothing of the ReplicaSets and Deployments the chain goes through, which
    // other watchers list: wait for the chain.
    let sql = format!(
        "select p.name, c.name from pod_controllers pc join pods p on p.uid = pc.pod_uid join containers c on c.pod_uid = p.uid where pc.top_kind = 'Deployment' and pc.top_name = '{name}' and p.namespace = '{ns}' order by 1 limit 1"
    );
    assert!(
        kq_e2e::eventually_async(Duration::from_secs(10), || async {
            env.csv(&sql).await.is_ok_and(|c| c.lines().count() == 2)
        })
        .await,
        "no pod of Deployment {ns}/{name} in pod_controllers"
    );
    let pods = env.csv(&sql).await.unwrap();
    let (pod, pod_container) = pods.lines().nth(1).unwrap().split_once(',').unwrap();
    set_image(&env, &ns, &name, &container, "shop:1.5");
    diff_with(&env, "deployments", &name, "containers[0].image").await;
    let store = &env.fleet.clusters[0].store;
    kube_sim::scenario::crash_container(store, &ns, pod, pod_container, 1, "Error", None).unwrap();
    let id_sql = format!("select id from incidents where object_name = '{pod}'");
    assert!(
        kq_e2e::eventually_async(Duration::from_secs(10), || async {
            env.csv(&id_sql).await.is_ok_and(|c| c.lines().count() == 2)
        })
        .await
    );
    let id = env.first_value(&id_sql).await;
    let out = env.kq(&["why", &id, "--format", "json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two JSON arrays: the incident, then its changes.
    let text = String::from_utf8(out.stdout).unwrap();
    let mut parts = serde_json::Deserializer::from_str(&text).into_iter::<Value>();
    let incident = parts.next().unwrap().unwrap();
    assert_eq!(incident[0]["object_name"], pod);
    let changes = parts.next().unwrap().unwrap();
    let first = &changes[0];
    assert_eq!(first["relation"], "controller", "{changes}");
    assert_eq!(first["kind"], "deployments");
    assert_eq!(first["name"], name.as_str());
    assert!(
        first["diff"].as_str().unwrap().contains("shop:1.5"),
        "{first}"
    );
    // `kq incidents` names it as the likely suspect.
    let out = env.kq(&["incidents", "--format", "json"]).await;
    let open: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let row = open
        .iter()
        .find(|r| r["id"] == id.as_str())
        .expect("the incident is open");
    let suspect = row["suspect"].as_str().unwrap_or_default();
    assert!(
        suspect.starts_with(&format!(
            "deployments/{name} spec.template.spec.containers[0].image "
        )) && suspect.contains("→ shop:1.5, ")
            && suspect.ends_with("m before"),
        "{suspect}"
    );
    // A bad window or an unknown incident is a clear error.
    let out = env.kq(&["why", &id, "--window", "soon"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--window \"soon\""));
    let out = env.kq(&["why", "no-such-incident"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no incident"));
}

/// Every file kqd keeps in its data directory, as bytes.
fn data_files(env: &Env) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    std::fs::read_dir(&env.data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// A Secret's changed value: the diff names the key, and the value is nowhere kqd writes
/// (the DuckDB file, its WAL, its log), neither as text nor as the API's base64.
#[tokio::test(flavor = "multi_thread")]
async fn a_secrets_changed_value_shows_its_key_and_never_the_value() {
    use base64::Engine as _;
    let env = Env::start(1, 3).await;
    let kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let (old, new) = ("kq-old-value-7Hq2", "kq-new-value-9Zr4");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    // `kubectl create secret` speaks protobuf, which the simulator does not; a manifest
    // goes as JSON.
    let manifest = env.dir.path().join("secret.json");
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "db-creds", "namespace": "default"},
        "data": {"password": b64(old), "user": b64("shop")}});
    std::fs::write(&manifest, secret.to_string()).unwrap();
    let manifest = manifest.to_str().unwrap();
    kubectl(&env, &["create", "--validate=false", "-f", manifest]);
    env.wait_csv(
        "select keys from secrets where name = 'db-creds'",
        "keys\n\"[\"\"password\"\",\"\"user\"\"]\"\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    kubectl(
        &env,
        &[
            "-n",
            "default",
            "patch",
            "secret",
            "db-creds",
            "-p",
            &format!(r#"{{"data":{{"password":"{}"}}}}"#, b64(new)),
        ],
    );
    let (diff, spec_changed) = diff_with(&env, "secrets", "db-creds", "data.password").await;
    assert_eq!(
        diff,
        [json!({"path": "data.password", "old": "(hidden)", "new": "(hidden)"})],
        "only the key whose value changed, and no value"
    );
    assert!(spec_changed);

    assert_nowhere_kqd_writes(&env, kqd, &[old, new, &b64(old), &b64(new)]);
}

/// Stops kqd and checks that none of `needles` is in any file of its data directory or in
/// its log.
fn assert_nowhere_kqd_writes(env: &Env, kqd: kq_e2e::Kqd, needles: &[&str]) {
    let log = kqd.log();
    assert_eq!(kqd.terminate().code(), Some(0));
    let mut files = data_files(env);
    files.push(("kqd log".into(), log.into_bytes()));
    assert!(files.iter().any(|(p, _)| p.ends_with("kq.duckdb")));
    for (path, bytes) in &files {
        for needle in needles {
            let found = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
            assert!(!found, "{needle:?} is in {}", path.display());
        }
    }
}

/// `kubectl apply` keeps the manifest it applied in an annotation, so an applied Secret
/// carries its values in its metadata too: kqd shows that annotation as hidden, in the
/// typed row and in `objects`, and the values reach no file.
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_applied_with_kubectl_keeps_its_values_out_of_its_annotations() {
    use base64::Engine as _;
    let env = Env::start(1, 3).await;
    let kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    let (encoded, plain) = ("kq-applied-value-4Kd8", "kq-string-data-2Wx6");
    let b64 = base64::engine::general_purpose::STANDARD.encode(encoded);
    let manifest = env.dir.path().join("secret.json");
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "api-token", "namespace": "default", "labels": {"team": "shop"}},
        "data": {"token": b64}, "stringData": {"url": plain}});
    std::fs::write(&manifest, secret.to_string()).unwrap();
    kubectl(
        &env,
        &[
            "apply",
            "--validate=false",
            "-f",
            manifest.to_str().unwrap(),
        ],
    );
    let annotation = "kubectl.kubernetes.io/last-applied-configuration";
    env.wait_csv(
        &format!(
            "select keys, annotations->>'$.\"{annotation}\"' as applied,
                    (select o.object->'$.metadata.annotations'->>'$.\"{annotation}\"'
                     from objects o where o.uid = s.uid) as in_objects
             from secrets s where name = 'api-token'"
        ),
        "keys,applied,in_objects\n\"[\"\"token\"\",\"\"url\"\"]\",(hidden),(hidden)\n",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_nowhere_kqd_writes(&env, kqd, &[encoded, plain, &b64]);
}
