//! Scripted changes for tests and demos: crashes, OOM kills, image pull failures, evictions,
//! node conditions, Warning events, job failures, rolling updates and deletes, each written
//! the way the kubelet and the controllers would write it.

use serde_json::{Value, json};

use crate::generate::cond;
use crate::status::ApiError;
use crate::store::{Store, now_rfc3339, random_suffix};

fn update_status(
    store: &Store,
    api_version: &str,
    kind: &str,
    ns: &str,
    name: &str,
    f: impl FnOnce(&mut Value),
) -> Result<Value, ApiError> {
    let (rt, mut obj) = store.find(api_version, kind, ns, name)?;
    f(&mut obj);
    let ns = if rt.namespaced { ns } else { "" };
    Ok(store.update(&rt, ns, name, obj, true)?.value())
}

fn container_status<'a>(pod: &'a mut Value, container: &str) -> Option<&'a mut Value> {
    let list = [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ]
    .into_iter()
    .find(|l| {
        pod["status"][*l]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["name"] == container))
    })?;
    pod["status"][list]
        .as_array_mut()?
        .iter_mut()
        .find(|c| c["name"] == container)
}

fn with_container(
    store: &Store,
    ns: &str,
    pod: &str,
    container: &str,
    f: impl FnOnce(&mut Value),
) -> Result<Value, ApiError> {
    let mut missing = false;
    let out = update_status(store, "v1", "Pod", ns, pod, |p| {
        match container_status(p, container) {
            Some(cs) => f(cs),
            None => missing = true,
        }
    })?;
    if missing {
        return Err(ApiError::new(
            404,
            "NotFound",
            format!("pod {ns}/{pod} has no container {container:?}"),
        ));
    }
    Ok(out)
}

/// The container exits with `exit_code` and `reason` and the kubelet backs off restarting it:
/// restartCount goes up, lastState.terminated records the exit, state is CrashLoopBackOff.
pub fn crash_container(
    store: &Store,
    ns: &str,
    pod: &str,
    container: &str,
    exit_code: i32,
    reason: &str,
    message: Option<&str>,
) -> Result<Value, ApiError> {
    let now = now_rfc3339();
    with_container(store, ns, pod, container, |cs| {
        let restarts = cs["restartCount"].as_i64().unwrap_or(0);
        let started = cs["state"]["running"]["startedAt"].clone();
        let mut terminated = json!({"exitCode": exit_code, "reason": reason, "startedAt": started, "finishedAt": now, "containerID": cs["containerID"]});
        if exit_code > 128 {
            terminated["signal"] = json!(exit_code - 128);
        }
        if let Some(m) = message {
            terminated["message"] = json!(m);
        }
        cs["restartCount"] = json!(restarts + 1);
        cs["lastState"] = json!({"terminated": terminated});
        cs["state"] = json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off 10s restarting failed container={} pod={pod}", cs["name"].as_str().unwrap_or_default())}});
        cs["ready"] = json!(false);
        cs["started"] = json!(false);
    })
}

/// The kernel's OOM killer ends the container: exit 137 with reason OOMKilled.
pub fn oom_kill(store: &Store, ns: &str, pod: &str, container: &str) -> Result<Value, ApiError> {
    crash_container(store, ns, pod, container, 137, "OOMKilled", None)
}

/// The image cannot be pulled: the container waits with `reason` (ErrImagePull or
/// ImagePullBackOff).
pub fn image_pull_failure(
    store: &Store,
    ns: &str,
    pod: &str,
    container: &str,
    reason: &str,
) -> Result<Value, ApiError> {
    with_container(store, ns, pod, container, |cs| {
        let image = cs["image"].as_str().unwrap_or_default().to_string();
        cs["state"] = json!({"waiting": {"reason": reason, "message": format!("Back-off pulling image \"{image}\": ErrImagePull: failed to pull and unpack image: not found")}});
        cs["ready"] = json!(false);
        cs["started"] = json!(false);
    })
}

/// The container runs and is ready again.
pub fn recover_container(
    store: &Store,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<Value, ApiError> {
    with_container(store, ns, pod, container, |cs| {
        cs["state"] = json!({"running": {"startedAt": now_rfc3339()}});
        cs["ready"] = json!(true);
        cs["started"] = json!(true);
    })
}

/// The kubelet evicts the pod under node pressure.
pub fn evict(store: &Store, ns: &str, pod: &str) -> Result<Value, ApiError> {
    update_status(store, "v1", "Pod", ns, pod, |p| {
        p["status"]["phase"] = json!("Failed");
        p["status"]["reason"] = json!("Evicted");
        p["status"]["message"] = json!(
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 52Mi."
        );
        if let Some(arr) = p["status"]["containerStatuses"].as_array_mut() {
            for cs in arr {
                cs["state"] = json!({"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown", "finishedAt": now_rfc3339()}});
                cs["ready"] = json!(false);
            }
        }
    })
}

/// Sets one node condition (Ready, MemoryPressure, DiskPressure, PIDPressure).
pub fn set_node_condition(
    store: &Store,
    node: &str,
    kind: &str,
    status: &str,
) -> Result<Value, ApiError> {
    update_status(store, "v1", "Node", "", node, |n| {
        let reason = match (kind, status) {
            ("Ready", "True") => "KubeletReady",
            ("Ready", _) => "KubeletNotReady",
            (_, "True") => "KubeletHasPressure",
            _ => "KubeletHasNoPressure",
        };
        let c = cond(kind, status, reason);
        let conds = n["status"]["conditions"].as_array_mut();
        match conds {
            Some(arr) => match arr.iter_mut().find(|x| x["type"] == kind) {
                Some(x) => *x = c,
                None => arr.push(c),
            },
            None => n["status"]["conditions"] = json!([c]),
        }
    })
}

/// The kubelet pulled an image: the node lists it in `status.images` under `names`.
pub fn add_node_image(
    store: &Store,
    node: &str,
    names: &[&str],
    size_bytes: u64,
) -> Result<Value, ApiError> {
    update_status(store, "v1", "Node", "", node, |n| {
        let entry = json!({"names": names, "sizeBytes": size_bytes});
        match n["status"]["images"].as_array_mut() {
            Some(list) => list.push(entry),
            None => n["status"]["images"] = json!([entry]),
        }
    })
}

/// Records a Warning event about an object, as a controller or the kubelet would.
pub fn warning_event(
    store: &Store,
    ns: &str,
    kind: &str,
    name: &str,
    reason: &str,
    message: &str,
) -> Result<Value, ApiError> {
    let rt = store
        .resolve_kind("v1", "Event")
        .expect("events are built in");
    let involved_uid = store
        .resolve_kind(
            if kind == "Pod" || kind == "Node" {
                "v1"
            } else {
                "apps/v1"
            },
            kind,
        )
        .and_then(|r| store.get(&r, if r.namespaced { ns } else { "" }, name).ok())
        .map(|o| o.uid.clone())
        .unwrap_or_default();
    let now = now_rfc3339();
    let ev = json!({
        "metadata": {"name": format!("{name}.{}", random_suffix()), "namespace": ns},
        "involvedObject": {"kind": kind, "namespace": ns, "name": name, "uid": involved_uid, "apiVersion": "v1"},
        "reason": reason, "message": message, "type": "Warning", "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": "kubelet"}, "reportingComponent": "kubelet", "reportingInstance": "node-001",
    });
    Ok(store.create(&rt, ns, ev)?.value())
}

/// The Job controller gives up: a Failed condition with `reason` (BackoffLimitExceeded or
/// DeadlineExceeded).
pub fn fail_job(store: &Store, ns: &str, job: &str, reason: &str) -> Result<Value, ApiError> {
    update_status(store, "batch/v1", "Job", ns, job, |j| {
        j["status"]["active"] = json!(0);
        j["status"]["failed"] = json!(j["spec"]["backoffLimit"].as_i64().unwrap_or(6) + 1);
        let mut c = cond("Failed", "True", reason);
        c["message"] = json!("Job has reached the specified backoff limit");
        j["status"]["conditions"] = json!([c]);
    })
}

/// Rolls a Deployment to `image` as its controller would: a new ReplicaSet with new pods,
/// then the old pods terminate gracefully (exit 143 after SIGTERM) and are deleted.
pub fn rolling_update(
    store: &Store,
    ns: &str,
    deployment: &str,
    image: &str,
) -> Result<Vec<String>, ApiError> {
    let (dep_rt, mut dep) = store.find("apps/v1", "Deployment", ns, deployment)?;
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
    let dep = store.update(&dep_rt, ns, deployment, dep, false)?.value();
    let rs_rt = store
        .resolve_kind("apps/v1", "ReplicaSet")
        .expect("built in");
    let pod_rt = store.resolve_kind("v1", "Pod").expect("built in");
    let dep_uid = dep["metadata"]["uid"].clone();
    let filter = crate::store::Filter {
        namespace: Some(ns.to_string()),
        ..Default::default()
    };
    let old_rs: Vec<Value> = store
        .list(&rs_rt, &filter, None, None)?
        .items
        .iter()
        .map(|o| o.value())
        .filter(|rs| rs["metadata"]["ownerReferences"][0]["uid"] == dep_uid)
        .collect();
    let Some(template_rs) = old_rs.first() else {
        return Err(ApiError::new(
            404,
            "NotFound",
            format!("deployment {ns}/{deployment} has no ReplicaSet"),
        ));
    };
    let hash = random_suffix();
    let mut rs = template_rs.clone();
    let rs_name = format!("{deployment}-{hash}");
    rs["metadata"] = json!({"name": rs_name, "labels": {"app.kubernetes.io/name": deployment, "pod-template-hash": hash}, "ownerReferences": template_rs["metadata"]["ownerReferences"]});
    rs["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
    let rs = store.create(&rs_rt, ns, rs)?.value();
    let old_uids: Vec<Value> = old_rs
        .iter()
        .map(|r| r["metadata"]["uid"].clone())
        .collect();
    let old_pods: Vec<Value> = store
        .list(&pod_rt, &filter, None, None)?
        .items
        .iter()
        .map(|o| o.value())
        .filter(|p| old_uids.contains(&p["metadata"]["ownerReferences"][0]["uid"]))
        .collect();
    let mut new_names = Vec::new();
    for old in &old_pods {
        let mut p = old.clone();
        let name = format!("{rs_name}-{}", random_suffix());
        p["metadata"] = json!({"name": name, "labels": {"app.kubernetes.io/name": deployment, "pod-template-hash": hash},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name, "uid": rs["metadata"]["uid"], "controller": true}]});
        for cs in p["status"]["containerStatuses"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            cs["image"] = json!(image);
            cs["restartCount"] = json!(0);
            cs["lastState"] = json!({});
        }
        p["spec"]["containers"][0]["image"] = json!(image);
        store.create(&pod_rt, ns, p)?;
        new_names.push(name);
        let old_name = old["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        update_status(store, "v1", "Pod", ns, &old_name, |op| {
            for cs in op["status"]["containerStatuses"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                cs["state"] = json!({"terminated": {"exitCode": 143, "reason": "Error", "finishedAt": now_rfc3339()}});
                cs["ready"] = json!(false);
            }
        })?;
        store.delete(&pod_rt, ns, &old_name)?;
    }
    for r in &old_rs {
        let name = r["metadata"]["name"].as_str().unwrap_or_default();
        let mut scaled = r.clone();
        scaled["spec"]["replicas"] = json!(0);
        store.update(&rs_rt, ns, name, scaled, false)?;
    }
    Ok(new_names)
}

/// A bare pod with one running container.
pub fn create_pod(store: &Store, ns: &str, name: &str, image: &str) -> Result<Value, ApiError> {
    let rt = store.resolve_kind("v1", "Pod").expect("built in");
    let now = now_rfc3339();
    let pod = json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": name}},
        "spec": {"containers": [{"name": "main", "image": image, "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}}], "nodeName": "node-001"},
        "status": {"phase": "Running", "startTime": now, "containerStatuses": [{"name": "main", "image": image, "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}, "lastState": {}}]},
    });
    Ok(store.create(&rt, ns, pod)?.value())
}

/// Deletes an object by apiVersion and kind.
pub fn delete(
    store: &Store,
    api_version: &str,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<(), ApiError> {
    let (rt, _) = store.find(api_version, kind, ns, name)?;
    store.delete(&rt, if rt.namespaced { ns } else { "" }, name)?;
    Ok(())
}
