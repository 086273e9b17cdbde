//! The real kubectl against a running simulator: create, apply, get, watch, delete, CRDs.

mod common;

use std::io::Read as _;
use std::process::Stdio;
use std::time::Duration;

use kube_sim::scenario;
use serde_json::Value;

const DEPLOYMENT: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
"#;

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_creates_applies_gets_and_deletes() {
    let t = common::start(2, 30).await;
    let f = t.write("dep.yaml", DEPLOYMENT);
    let f = f.to_str().unwrap();
    let out = t.kubectl(&["create", "--validate=false", "-f", f]);
    assert!(out.ok, "create failed: {}", out.stderr);
    assert!(
        out.stdout.contains("deployment.apps/web created"),
        "{}",
        out.stdout
    );

    let again = t.kubectl(&["create", "--validate=false", "-f", f]);
    assert!(!again.ok);
    assert!(
        again.stderr.contains("AlreadyExists") || again.stderr.contains("already exists"),
        "{}",
        again.stderr
    );

    let scaled = t.write(
        "dep3.yaml",
        &DEPLOYMENT.replace("replicas: 2", "replicas: 5"),
    );
    let out = t.kubectl(&["apply", "--validate=false", "-f", scaled.to_str().unwrap()]);
    assert!(out.ok, "apply failed: {}", out.stderr);
    let out = t.kubectl(&["get", "deploy", "-n", "shop", "web", "-o", "json"]);
    let dep: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(dep["spec"]["replicas"], 5);
    assert_eq!(
        dep["metadata"]["generation"], 2,
        "a spec change bumps generation"
    );

    let out = t.kubectl(&["get", "deployments", "-n", "shop"]);
    assert!(
        out.ok && out.stdout.contains("web"),
        "{} {}",
        out.stdout,
        out.stderr
    );

    let out = t.kubectl(&["delete", "deployment", "-n", "shop", "web"]);
    assert!(out.ok, "{}", out.stderr);
    let out = t.kubectl(&["get", "deployment", "-n", "shop", "web"]);
    assert!(!out.ok && out.stderr.contains("NotFound"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_lists_the_generated_pods_in_every_context() {
    let t = common::start(2, 25).await;
    for c in &t.fleet.clusters {
        let out = t.kubectl(&["--context", &c.name, "get", "pods", "-A", "-o", "json"]);
        assert!(out.ok, "{}", out.stderr);
        let list: Value = serde_json::from_str(&out.stdout).unwrap();
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 25, "context {}", c.name);
        let uids: Vec<String> = items
            .iter()
            .map(|p| p["metadata"]["uid"].as_str().unwrap().to_string())
            .collect();
        let rt = c.store.resolve_kind("v1", "Pod").unwrap();
        let page = c.store.list(&rt, &Default::default(), None, None).unwrap();
        let want: Vec<String> = page.items.iter().map(|p| p.uid.clone()).collect();
        let (mut a, mut b) = (uids, want);
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }
    // Paging: kubectl's --chunk-size makes it follow continue tokens.
    let out = t.kubectl(&["get", "pods", "-A", "--chunk-size=7", "-o", "name"]);
    assert_eq!(out.stdout.lines().count(), 25, "{}", out.stderr);
    // Selectors.
    let out = t.kubectl(&[
        "get",
        "pods",
        "-A",
        "--field-selector",
        "spec.nodeName=node-001",
        "-o",
        "json",
    ]);
    let list: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["spec"]["nodeName"] == "node-001")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_watch_sees_a_scenario_change() {
    let t = common::start(1, 10).await;
    let c = t.fleet.clusters[0].clone();
    let rt = c.store.resolve_kind("v1", "Pod").unwrap();
    let pod = c
        .store
        .list(&rt, &Default::default(), Some(1), None)
        .unwrap()
        .items[0]
        .clone();
    let container = pod.value()["spec"]["containers"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let mut child = t
        .kubectl_cmd(&[
            "get",
            "pods",
            "-n",
            &pod.namespace,
            "-w",
            "-o",
            "json",
            "--output-watch-events",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for kubectl's watch request to reach the server before changing anything.
    assert!(common::eventually(Duration::from_secs(10), || !c.traffic.watches().is_empty()).await);
    scenario::crash_container(
        &c.store,
        &pod.namespace,
        &pod.name,
        &container,
        1,
        "Error",
        None,
    )
    .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&buf).contains("CrashLoopBackOff") {
                break;
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    let seen = common::eventually(Duration::from_secs(10), || reader.is_finished()).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen, "kubectl get -w did not print the change");
    let out = reader.join().unwrap();
    assert!(
        out.contains("\"MODIFIED\"") && out.contains("CrashLoopBackOff"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crd_makes_its_kind_servable_and_deleting_it_removes_them() {
    let t = common::start(1, 5).await;
    let crd = t.write(
        "crd.yaml",
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wg]}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#,
    );
    let w = t.write("w.yaml", "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1, namespace: default}\nspec: {size: 3}\n");
    assert!(
        t.kubectl(&["create", "--validate=false", "-f", crd.to_str().unwrap()])
            .ok
    );
    let out = t.kubectl(&["api-resources"]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("widgets") && l.contains("Widget")),
        "{}",
        out.stdout
    );
    let out = t.kubectl(&["create", "--validate=false", "-f", w.to_str().unwrap()]);
    assert!(out.ok, "{}", out.stderr);
    let out = t.kubectl(&["get", "widgets", "-A", "-o", "name"]);
    assert_eq!(out.stdout.trim(), "widget.example.com/w1");
    let out = t.kubectl(&["get", "crd"]);
    assert!(out.stdout.contains("widgets.example.com"));
    assert!(t.kubectl(&["delete", "crd", "widgets.example.com"]).ok);
    let out = t.kubectl(&["get", "widgets", "-A"]);
    assert!(
        !out.ok,
        "widgets still served after the CRD was deleted: {}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_status_objects_with_the_right_codes() {
    let t = common::start(1, 3).await;
    let bad = t.write(
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name, namespace: default}\n",
    );
    let out = t.kubectl(&["create", "--validate=false", "-f", bad.to_str().unwrap()]);
    assert!(
        !out.ok && out.stderr.contains("is invalid"),
        "{}",
        out.stderr
    );
    let out = t.kubectl(&["get", "pod", "-n", "default", "nope"]);
    assert!(
        out.stderr.contains("NotFound") && out.stderr.contains("\"nope\" not found"),
        "{}",
        out.stderr
    );
    // A stale resourceVersion on update is a 409 Conflict.
    let c = &t.fleet.clusters[0];
    let cm = t.write("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1, namespace: default}\ndata: {a: '1'}\n");
    assert!(
        t.kubectl(&["create", "--validate=false", "-f", cm.to_str().unwrap()])
            .ok
    );
    let rt = c.store.resolve_kind("v1", "ConfigMap").unwrap();
    let mut stale = c.store.get(&rt, "default", "c1").unwrap().value();
    let mut fresh = stale.clone();
    fresh["data"]["a"] = "2".into();
    c.store.update(&rt, "default", "c1", fresh, false).unwrap();
    stale["data"]["a"] = "3".into();
    let err = c
        .store
        .update(&rt, "default", "c1", stale, false)
        .unwrap_err();
    assert_eq!((err.code, err.reason), (409, "Conflict"));
    // An unauthenticated client gets 401.
    c.expire_token();
    let out = t.kubectl(&["get", "ns"]);
    assert!(
        !out.ok && out.stderr.to_lowercase().contains("unauthorized"),
        "{}",
        out.stderr
    );
    c.restore_token();
    assert!(t.kubectl(&["get", "ns"]).ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_fleets_work_too() {
    let mut opts = kube_sim::FleetOptions::new(1);
    opts.tls = false;
    let spec = kube_sim::GenSpec {
        pods: 4,
        ..Default::default()
    };
    let fleet = kube_sim::Fleet::start_generated(opts, &spec).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    fleet.write_kubeconfig(&kc).unwrap();
    assert!(fleet.clusters[0].server_url().starts_with("http://"));
    let out = std::process::Command::new("kubectl")
        .env("KUBECONFIG", &kc)
        .env("HOME", dir.path())
        .args(["get", "pods", "-A", "-o", "name"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
}
