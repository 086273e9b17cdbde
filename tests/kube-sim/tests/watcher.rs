//! kube-rs's watcher against the simulator: the event sequence, and recovery from a forced
//! 410 Gone and from dropped connections.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use kube_sim::scenario;

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Init,
    InitApply(String),
    InitDone,
    Apply(String),
    Delete(String),
}

async fn client(t: &common::TestFleet, context: &str) -> Client {
    let kc = Kubeconfig::read_from(&t.kubeconfig).unwrap();
    let opts = KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let cfg = kube::Config::from_custom_kubeconfig(kc, &opts)
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

fn record(api: Api<Pod>) -> Arc<Mutex<Vec<Seen>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    tokio::spawn(async move {
        let mut s = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = s.next().await {
            let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
            let e = match ev {
                Ok(watcher::Event::Init) => Seen::Init,
                Ok(watcher::Event::InitApply(p)) => Seen::InitApply(name(&p)),
                Ok(watcher::Event::InitDone) => Seen::InitDone,
                Ok(watcher::Event::Apply(p)) => Seen::Apply(name(&p)),
                Ok(watcher::Event::Delete(p)) => Seen::Delete(name(&p)),
                Err(_) => continue,
            };
            out.lock().unwrap().push(e);
        }
    });
    seen
}

fn count(seen: &Arc<Mutex<Vec<Seen>>>, want: &Seen) -> usize {
    seen.lock().unwrap().iter().filter(|s| *s == want).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn watcher_sees_init_apply_delete_and_recovers_by_relisting() {
    let t = common::start(1, 12).await;
    let c = t.fleet.clusters[0].clone();
    let client = client(&t, "sim-1").await;
    let seen = record(Api::<Pod>::all(client));
    let s = seen.clone();
    assert!(common::eventually(Duration::from_secs(10), || count(&s, &Seen::InitDone) == 1).await);
    {
        let v = seen.lock().unwrap();
        assert_eq!(v[0], Seen::Init);
        assert_eq!(
            v.iter().filter(|e| matches!(e, Seen::InitApply(_))).count(),
            12
        );
    }

    scenario::create_pod(&c.store, "default", "fresh", "nginx:1.27").unwrap();
    let s = seen.clone();
    assert!(
        common::eventually(Duration::from_secs(10), || count(
            &s,
            &Seen::Apply("fresh".into())
        ) == 1)
        .await
    );
    scenario::delete(&c.store, "v1", "Pod", "default", "fresh").unwrap();
    let s = seen.clone();
    assert!(
        common::eventually(Duration::from_secs(10), || count(
            &s,
            &Seen::Delete("fresh".into())
        ) == 1)
        .await
    );

    // A forced 410 makes the watcher list again: a second Init … InitDone.
    c.force_gone();
    let s = seen.clone();
    assert!(
        common::eventually(Duration::from_secs(15), || count(&s, &Seen::InitDone) == 2).await,
        "no relist after 410: {:?}",
        seen.lock()
            .unwrap()
            .iter()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_eq!(count(&seen, &Seen::Init), 2);

    // A dropped connection is re-established, and later changes still arrive.
    let watches_before = c.traffic.watches().len();
    c.faults.drop_watches();
    let cc = c.clone();
    assert!(
        common::eventually(Duration::from_secs(15), || cc.traffic.watches().len()
            > watches_before)
        .await
    );
    scenario::create_pod(&c.store, "default", "after-drop", "nginx:1.27").unwrap();
    let s = seen.clone();
    assert!(
        common::eventually(Duration::from_secs(10), || count(
            &s,
            &Seen::Apply("after-drop".into())
        ) == 1)
        .await
    );

    // An offline cluster comes back on the same port and the watcher resumes.
    c.set_offline(true);
    let s = seen.clone();
    let before = seen.lock().unwrap().len();
    c.set_offline(false);
    scenario::create_pod(&c.store, "default", "after-outage", "nginx:1.27").unwrap();
    assert!(
        common::eventually(Duration::from_secs(20), || s.lock().unwrap()[before..]
            .iter()
            .any(
                |e| matches!(e, Seen::Apply(n) | Seen::InitApply(n) if n == "after-outage")
            ))
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_errors_and_stalls_are_observable() {
    let t = common::start(1, 3).await;
    let c = t.fleet.clusters[0].clone();
    c.faults.fail_next(2, 429, Some(1));
    let out = t.kubectl(&["get", "ns", "-o", "name"]);
    // kubectl retries 429 after Retry-After, so it still succeeds, and the log shows both.
    assert!(out.ok, "{}", out.stderr);
    let codes: Vec<u16> = c.traffic.requests().iter().map(|r| r.status).collect();
    assert!(
        codes.iter().filter(|s| **s == 429).count() == 2,
        "{codes:?}"
    );
    c.faults.fail_next(1, 500, None);
    let client = client(&t, "sim-1").await;
    let api: Api<Pod> = Api::all(client);
    let err = api.list(&Default::default()).await.unwrap_err();
    assert!(
        err.to_string().contains("500") || err.to_string().contains("injected"),
        "{err}"
    );
    assert!(api.list(&Default::default()).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_connection_whose_resource_version_expired_is_repaired_by_relisting() {
    let t = common::start(1, 6).await;
    let c = t.fleet.clusters[0].clone();
    let seen = record(Api::<Pod>::all(client(&t, "sim-1").await));
    let s = seen.clone();
    assert!(common::eventually(Duration::from_secs(10), || count(&s, &Seen::InitDone) == 1).await);
    // The connection drops, and while the client is away the store compacts past its
    // resource version and a pod is deleted: resuming is impossible, only a relist repairs.
    c.set_offline(true);
    let rt = c.store.resolve_kind("v1", "Pod").unwrap();
    let victim = c
        .store
        .list(&rt, &Default::default(), Some(1), None)
        .unwrap()
        .items[0]
        .clone();
    c.store
        .delete(&rt, &victim.namespace, &victim.name)
        .unwrap();
    c.store.compact();
    c.set_offline(false);
    let s = seen.clone();
    assert!(
        common::eventually(Duration::from_secs(30), || count(&s, &Seen::InitDone) == 2).await,
        "no relist after the dropped connection: {:?}",
        seen.lock()
            .unwrap()
            .iter()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
    );
    let v = seen.lock().unwrap();
    let relist = &v[v.iter().rposition(|e| *e == Seen::Init).unwrap()..];
    assert_eq!(
        relist
            .iter()
            .filter(|e| matches!(e, Seen::InitApply(_)))
            .count(),
        5
    );
    assert!(!relist.contains(&Seen::InitApply(victim.name.clone())));
}
