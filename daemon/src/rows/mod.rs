//! Turns typed Kubernetes objects into table rows, once per watch event. Nothing here keeps
//! objects: each row is built, handed to the store, and dropped with the batch.

use std::collections::BTreeMap;
use std::sync::Arc;

use duckdb::types::{TimeUnit, Value};
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::quantity;

mod access;
mod config;
mod kinds;
mod raw;
mod scaling;
mod workloads;

pub use access::{
    clusterrole, clusterrolebinding, ingress, networkpolicy, persistentvolume,
    persistentvolumeclaim, role, rolebinding, serviceaccount, storageclass,
};
pub use config::{configmap, event, secret, service};
pub use kinds::{Kind, TypedKinds, TypedObject, for_each_typed};
pub use raw::{Raw, stored_json};
pub use scaling::{endpoints, horizontalpodautoscaler, poddisruptionbudget};
pub use workloads::{cronjob, daemonset, deployment, job, replicaset, statefulset};

/// One row, column values in catalog order.
pub type Row = Vec<Value>;

/// Names a resource: API group, version, kind and plural resource name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Gvk {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub resource: String,
}

/// The rows one object contributes: its own row, its children's (containers of a pod), and
/// for typed kinds its `objects` row.
#[derive(Debug, Clone)]
pub struct ObjectRows {
    pub uid: String,
    pub row: Row,
    pub children: Vec<Row>,
    pub object: Option<Row>,
    /// What the object says went wrong, for the incident tracker (pods, jobs, nodes and
    /// Warning events only).
    pub observed: Option<Box<crate::incidents::Observed>>,
    /// The images a pod uses or a node holds, for image sizing.
    pub images: Option<Box<crate::images::Sighting>>,
    /// A Secret's per-key value digests, so that its diff can name the keys that changed.
    pub secret: Option<Box<crate::diff::SecretDigests>>,
    /// The object's shape when the watcher could take it cheaply (`diff::text_shape`).
    pub shape: Option<u64>,
    /// A digest of `children`, taken here on the watcher's task rather than on the writer's
    /// thread, so that the writer tells unchanged child rows by comparing two numbers; 0 for
    /// an object without children.
    pub children_digest: u64,
}

impl ObjectRows {
    /// The bytes of text in every row this object contributes (see `Op::text_bytes`).
    pub fn text_bytes(&self) -> usize {
        std::iter::once(&self.row)
            .chain(&self.children)
            .chain(&self.object)
            .flatten()
            .map(|v| match v {
                Value::Text(s) => s.len(),
                _ => 0,
            })
            .sum()
    }
}

/// A digest of child rows, never 0.
fn rows_digest(rows: &[Row]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    rows.len().hash(&mut h);
    for v in rows.iter().flatten() {
        match v {
            Value::Null => 0u8.hash(&mut h),
            Value::Boolean(b) => (1u8, b).hash(&mut h),
            Value::Int(n) => (2u8, n).hash(&mut h),
            Value::BigInt(n) => (3u8, n).hash(&mut h),
            Value::Text(t) => (4u8, t).hash(&mut h),
            Value::Timestamp(_, n) => (5u8, n).hash(&mut h),
            Value::Double(x) => (6u8, x.to_bits()).hash(&mut h),
            other => (7u8, format!("{other:?}")).hash(&mut h),
        }
    }
    h.finish().max(1)
}

/// The `objects` row of an object: its metadata, already parsed, and its JSON, already
/// stripped of managedFields (and of a Secret's values) by the caller.
pub fn object_row(ctx: &Arc<str>, gvk: &Gvk, meta: &ObjectMeta, json: String) -> Row {
    let mut row = head(ctx, meta);
    row.extend([
        Value::Text(gvk.group.clone()),
        Value::Text(gvk.version.clone()),
        Value::Text(gvk.kind.clone()),
        Value::Text(gvk.resource.clone()),
        json_of(&meta.owner_references),
        Value::Text(json),
    ]);
    row
}

fn is_secret(gvk: &Gvk) -> bool {
    gvk.group.is_empty() && gvk.kind == "Secret"
}

/// Hides what in a Secret's metadata would carry its values: the manifest `kubectl apply`
/// keeps in an annotation. The annotation stays, so that a Secret applied with kubectl can
/// still be told from one that was not. Called on the watcher's task before any row is
/// built, so neither the typed row nor the `objects` JSON (nor the mirror) ever holds it.
pub fn hide_secret_values(gvk: &Gvk, meta: &mut ObjectMeta) {
    if !is_secret(gvk) {
        return;
    }
    if let Some(applied) = meta
        .annotations
        .as_mut()
        .and_then(|a| a.get_mut(crate::diff::LAST_APPLIED))
    {
        *applied = crate::diff::HIDDEN.to_string();
    }
}

/// Serialises an object for `objects`, without a Secret's `data` and `stringData`.
pub fn object_json<T: serde::Serialize>(gvk: &Gvk, o: &T) -> Option<String> {
    if is_secret(gvk) {
        let mut v = serde_json::to_value(o).ok()?;
        if let Some(m) = v.as_object_mut() {
            m.remove("data");
            m.remove("stringData");
        }
        return Some(v.to_string());
    }
    serde_json::to_string(o).ok()
}

pub(crate) fn text(s: Option<&str>) -> Value {
    s.map_or(Value::Null, |s| Value::Text(s.to_string()))
}

pub(crate) fn opt_text(s: &Option<String>) -> Value {
    text(s.as_deref())
}

fn json_map(m: &Option<BTreeMap<String, String>>) -> Value {
    match m {
        Some(m) => Value::Text(serde_json::to_string(m).expect("a string map serializes")),
        None => Value::Text("{}".to_string()),
    }
}

pub(crate) fn json_of<T: serde::Serialize>(v: &Option<T>) -> Value {
    match v {
        Some(v) => Value::Text(serde_json::to_string(v).expect("k8s types serialize")),
        None => Value::Null,
    }
}

pub(crate) fn time(t: &Option<Time>) -> Value {
    t.as_ref().map_or(Value::Null, |t| {
        Value::Timestamp(TimeUnit::Microsecond, t.0.as_microsecond())
    })
}

pub(crate) fn int(v: Option<i64>) -> Value {
    v.map_or(Value::Null, Value::BigInt)
}

/// `Value::Int` of an optional i32.
pub(crate) fn int32(v: Option<i32>) -> Value {
    v.map_or(Value::Null, Value::Int)
}

/// The first columns of a namespaced inventory row: context, namespace, then [`common`].
pub(crate) fn head(ctx: &Arc<str>, meta: &ObjectMeta) -> Row {
    let mut row = vec![Value::Text(ctx.to_string()), opt_text(&meta.namespace)];
    row.extend(common(meta));
    row
}

/// The first columns of a cluster-scoped inventory row: context, then [`common`].
pub(crate) fn head_cluster(ctx: &Arc<str>, meta: &ObjectMeta) -> Row {
    let mut row = vec![Value::Text(ctx.to_string())];
    row.extend(common(meta));
    row
}

/// An object's rows when it has no children.
pub(crate) fn single(meta: &ObjectMeta, row: Row) -> ObjectRows {
    ObjectRows {
        uid: meta.uid.clone().unwrap_or_default(),
        row,
        children: vec![],
        object: None,
        observed: None,
        images: None,
        secret: None,
        shape: None,
        children_digest: 0,
    }
}

/// The controlling owner reference (or the first), as kind and name.
pub(crate) fn controller(meta: &ObjectMeta) -> [Value; 2] {
    let owner = meta.owner_references.as_ref().and_then(|o| {
        o.iter()
            .find(|o| o.controller == Some(true))
            .or_else(|| o.first())
    });
    [
        text(owner.map(|o| o.kind.as_str())),
        text(owner.map(|o| o.name.as_str())),
    ]
}

/// The columns every inventory table starts with, after `context` and `namespace`.
fn common(meta: &ObjectMeta) -> [Value; 6] {
    [
        opt_text(&meta.name),
        opt_text(&meta.uid),
        json_map(&meta.labels),
        json_map(&meta.annotations),
        time(&meta.creation_timestamp),
        opt_text(&meta.resource_version),
    ]
}

pub fn namespace(ctx: &Arc<str>, ns: &Namespace) -> ObjectRows {
    let mut row = vec![Value::Text(ctx.to_string())];
    row.extend(common(&ns.metadata));
    row.push(text(ns.status.as_ref().and_then(|s| s.phase.as_deref())));
    single(&ns.metadata, row)
}

fn quantity_of(
    m: Option<&BTreeMap<String, Quantity>>,
    key: &str,
    f: fn(&str) -> Option<i64>,
) -> Value {
    int(m.and_then(|m| m.get(key)).and_then(|q| f(&q.0)))
}

pub fn node(ctx: &Arc<str>, n: &Node) -> ObjectRows {
    let spec = n.spec.as_ref();
    let status = n.status.as_ref();
    let info = status.and_then(|s| s.node_info.as_ref());
    let cap = status.and_then(|s| s.capacity.as_ref());
    let alloc = status.and_then(|s| s.allocatable.as_ref());
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    let internal_ip = status
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
        .map(|a| a.address.clone());
    let mut row = vec![Value::Text(ctx.to_string())];
    row.extend(common(&n.metadata));
    row.extend([
        opt_text(&ready),
        Value::Boolean(spec.and_then(|s| s.unschedulable).unwrap_or(false)),
        opt_text(&internal_ip),
        text(info.map(|i| i.kubelet_version.as_str())),
        text(info.map(|i| i.os_image.as_str())),
        text(info.map(|i| i.kernel_version.as_str())),
        text(info.map(|i| i.container_runtime_version.as_str())),
        text(info.map(|i| i.operating_system.as_str())),
        text(info.map(|i| i.architecture.as_str())),
        quantity_of(cap, "cpu", quantity::cpu_millis),
        quantity_of(cap, "memory", quantity::bytes),
        quantity_of(cap, "pods", quantity::bytes),
        quantity_of(alloc, "cpu", quantity::cpu_millis),
        quantity_of(alloc, "memory", quantity::bytes),
        json_of(&status.and_then(|s| s.conditions.clone())),
        json_of(&spec.and_then(|s| s.taints.clone())),
        Value::Int(
            status
                .and_then(|s| s.images.as_ref())
                .map_or(0, |i| i.len() as i32),
        ),
    ]);
    ObjectRows {
        uid: n.metadata.uid.clone().unwrap_or_default(),
        row,
        children: vec![],
        object: None,
        observed: Some(Box::new(crate::incidents::detect::node(n))),
        images: Some(Box::new(node_images(ctx, n))),
        secret: None,
        shape: None,
        children_digest: 0,
    }
}

pub fn pod(ctx: &Arc<str>, p: &Pod) -> ObjectRows {
    let meta = &p.metadata;
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let owner = meta.owner_references.as_ref().and_then(|o| {
        o.iter()
            .find(|o| o.controller == Some(true))
            .or_else(|| o.first())
    });
    let statuses =
        |f: fn(&k8s_openapi::api::core::v1::PodStatus) -> Option<&Vec<ContainerStatus>>| {
            status.and_then(f).map(Vec::as_slice).unwrap_or_default()
        };
    let app_statuses = statuses(|s| s.container_statuses.as_ref());
    let init_statuses = statuses(|s| s.init_container_statuses.as_ref());
    let eph_statuses = statuses(|s| s.ephemeral_container_statuses.as_ref());
    let restarts: i64 = app_statuses
        .iter()
        .chain(init_statuses)
        .chain(eph_statuses)
        .map(|c| c.restart_count as i64)
        .sum();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    let ns = Value::Text(meta.namespace.clone().unwrap_or_default());
    let mut row = vec![Value::Text(ctx.to_string()), ns.clone()];
    row.extend(common(meta));
    row.extend([
        text(status.and_then(|s| s.phase.as_deref())),
        text(status.and_then(|s| s.reason.as_deref())),
        text(status.and_then(|s| s.message.as_deref())),
        text(spec.and_then(|s| s.node_name.as_deref())),
        text(status.and_then(|s| s.pod_ip.as_deref())),
        text(status.and_then(|s| s.host_ip.as_deref())),
        text(status.and_then(|s| s.qos_class.as_deref())),
        text(spec.and_then(|s| s.service_account_name.as_deref())),
        text(owner.map(|o| o.kind.as_str())),
        text(owner.map(|o| o.name.as_str())),
        text(owner.map(|o| o.uid.as_str())),
        Value::Boolean(ready),
        Value::BigInt(restarts),
        Value::Int(spec.map_or(0, |s| s.containers.len() as i32)),
        time(&status.and_then(|s| s.start_time.clone())),
        Value::Boolean(meta.deletion_timestamp.is_some()),
    ]);
    let uid = meta.uid.clone().unwrap_or_default();
    let pod_name = meta.name.clone().unwrap_or_default();
    let mut children = Vec::new();
    let mut image_refs: Vec<String> = Vec::new();
    let mut push = |kind: &str,
                    name: &str,
                    image: Option<&str>,
                    res: Option<&k8s_openapi::api::core::v1::ResourceRequirements>,
                    st: &[ContainerStatus]| {
        let cs = st.iter().find(|c| c.name == name);
        let image_ref = image.and_then(crate::images::reference::canonical);
        if let Some(r) = &image_ref
            && !image_refs.contains(r)
        {
            image_refs.push(r.clone());
        }
        let mut row = container_row(ctx, &ns, &pod_name, &uid, kind, name, image, res, cs);
        row.push(opt_text(&image_ref));
        children.push(row);
    };
    if let Some(spec) = spec {
        for c in spec.init_containers.iter().flatten() {
            push(
                "init",
                &c.name,
                c.image.as_deref(),
                c.resources.as_ref(),
                init_statuses,
            );
        }
        for c in &spec.containers {
            let c: &Container = c;
            push(
                "container",
                &c.name,
                c.image.as_deref(),
                c.resources.as_ref(),
                app_statuses,
            );
        }
        for c in spec.ephemeral_containers.iter().flatten() {
            push(
                "ephemeral",
                &c.name,
                c.image.as_deref(),
                c.resources.as_ref(),
                eph_statuses,
            );
        }
    }
    let children_digest = rows_digest(&children);
    ObjectRows {
        uid,
        row,
        children,
        object: None,
        observed: Some(Box::new(crate::incidents::detect::pod(p))),
        images: Some(Box::new(crate::images::Sighting::Pod {
            context: ctx.clone(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            node: spec.and_then(|s| s.node_name.clone()),
            pull_secrets: spec
                .and_then(|s| s.image_pull_secrets.as_ref())
                .map(|v| v.iter().map(|r| r.name.clone()).collect())
                .unwrap_or_default(),
            refs: image_refs,
        })),
        secret: None,
        shape: None,
        children_digest,
    }
}

/// A node's platform and `status.images`, names in canonical form.
fn node_images(ctx: &Arc<str>, n: &Node) -> crate::images::Sighting {
    let status = n.status.as_ref();
    let info = status.and_then(|s| s.node_info.as_ref());
    let platform = info
        .filter(|i| !i.operating_system.is_empty())
        .map(|i| format!("{}/{}", i.operating_system, i.architecture));
    let images = status
        .and_then(|s| s.images.as_ref())
        .map(|list| {
            list.iter()
                .map(|im| crate::images::NodeImage {
                    names: im
                        .names
                        .iter()
                        .flatten()
                        .filter_map(|n| crate::images::reference::canonical(n))
                        .collect(),
                    size_bytes: im.size_bytes.unwrap_or(0),
                })
                .filter(|im| !im.names.is_empty())
                .collect()
        })
        .unwrap_or_default();
    crate::images::Sighting::Node {
        context: ctx.clone(),
        node: n.metadata.name.clone().unwrap_or_default(),
        platform,
        images,
    }
}

#[allow(clippy::too_many_arguments)]
fn container_row(
    ctx: &Arc<str>,
    ns: &Value,
    pod: &str,
    pod_uid: &str,
    kind: &str,
    name: &str,
    image: Option<&str>,
    res: Option<&k8s_openapi::api::core::v1::ResourceRequirements>,
    cs: Option<&ContainerStatus>,
) -> Row {
    let state = cs.and_then(|c| c.state.as_ref());
    let (state_name, reason, started) = match state {
        Some(s) if s.running.is_some() => (
            "running",
            None,
            s.running.as_ref().and_then(|r| r.started_at.clone()),
        ),
        Some(s) if s.waiting.is_some() => (
            "waiting",
            s.waiting.as_ref().and_then(|w| w.reason.clone()),
            None,
        ),
        Some(s) if s.terminated.is_some() => {
            let t = s.terminated.as_ref().expect("checked");
            ("terminated", t.reason.clone(), t.started_at.clone())
        }
        _ => ("", None, None),
    };
    // The last termination is lastState.terminated, or the current state when the container
    // has terminated and not restarted (init containers, completed jobs).
    let last = cs
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| state.and_then(|s| s.terminated.as_ref()));
    let requests = res.and_then(|r| r.requests.as_ref());
    let limits = res.and_then(|r| r.limits.as_ref());
    vec![
        Value::Text(ctx.to_string()),
        ns.clone(),
        Value::Text(pod.to_string()),
        Value::Text(pod_uid.to_string()),
        Value::Text(name.to_string()),
        Value::Text(kind.to_string()),
        text(image),
        text(cs.and_then(|c| (!c.image_id.is_empty()).then_some(c.image_id.as_str()))),
        text((!state_name.is_empty()).then_some(state_name)),
        opt_text(&reason),
        cs.map_or(Value::Null, |c| Value::Boolean(c.ready)),
        cs.map_or(Value::Null, |c| Value::Int(c.restart_count)),
        last.map_or(Value::Null, |t| Value::Int(t.exit_code)),
        text(last.and_then(|t| t.reason.as_deref())),
        time(&last.and_then(|t| t.finished_at.clone())),
        time(&started),
        quantity_of(requests, "cpu", quantity::cpu_millis),
        quantity_of(limits, "cpu", quantity::cpu_millis),
        quantity_of(requests, "memory", quantity::bytes),
        quantity_of(limits, "memory", quantity::bytes),
    ]
}
