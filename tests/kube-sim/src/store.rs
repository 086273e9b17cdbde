//! The object store of one simulated cluster: etcd-like storage with resource versions, a
//! bounded change log for watches, and the API server's create/update/patch/delete semantics.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::patch::{self, PatchType};
use crate::resources::{ResKey, ResourceType, builtins};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;

/// One stored object: its serialized JSON (served without re-encoding) and the fields that
/// selectors, owner-reference garbage collection and paging need.
#[derive(Debug)]
pub struct Stored {
    pub json: Bytes,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub rv: u64,
    pub labels: BTreeMap<String, String>,
    node_name: String,
    phase: String,
    owners: Vec<String>,
}

impl Stored {
    fn from_value(v: &Value, rv: u64) -> Stored {
        let md = &v["metadata"];
        let s = |x: &Value| x.as_str().unwrap_or_default().to_string();
        Stored {
            json: Bytes::from(serde_json::to_vec(v).expect("a JSON value always serializes")),
            namespace: s(&md["namespace"]),
            name: s(&md["name"]),
            uid: s(&md["uid"]),
            rv,
            labels: md["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            node_name: s(&v["spec"]["nodeName"]),
            phase: s(&v["status"]["phase"]),
            owners: md["ownerReferences"]
                .as_array()
                .map(|a| a.iter().map(|o| s(&o["uid"])).collect())
                .unwrap_or_default(),
        }
    }

    /// The object as a JSON value, for code that modifies it.
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).expect("stored objects are valid JSON")
    }

    fn field(&self, f: &str) -> String {
        match f {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.namespace.clone(),
            "spec.nodeName" => self.node_name.clone(),
            "status.phase" => self.phase.clone(),
            _ => String::new(),
        }
    }

    /// Whether the object passes a list or watch filter.
    pub fn matches(&self, f: &Filter) -> bool {
        f.namespace.as_ref().is_none_or(|ns| *ns == self.namespace)
            && f.labels.matches(&self.labels)
            && f.fields.matches(|k| self.field(k))
    }
}

/// What a list or watch request selects.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

/// The kind of a change, as watch events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One entry of the change log that watches replay and follow.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub key: ResKey,
    pub kind: EventType,
    pub obj: Arc<Stored>,
    pub prev: Option<Arc<Stored>>,
}

/// A page of a list.
pub struct ListPage {
    pub items: Vec<Arc<Stored>>,
    pub rv: u64,
    pub continue_token: Option<String>,
    /// `remainingItemCount`: an estimate, and only for lists without selectors, as the API
    /// server gives it.
    pub remaining: Option<usize>,
}

/// Where a new watch starts: the synthetic ADDED events or the replayed backlog, then `rx`.
pub struct WatchStart {
    pub initial: Vec<Arc<Stored>>,
    pub backlog: Vec<Arc<Change>>,
    pub rx: broadcast::Receiver<Arc<Change>>,
    pub start_rv: u64,
}

struct Table {
    /// One entry per served version; the first is the storage version.
    types: Vec<ResourceType>,
    objects: BTreeMap<(String, String), Arc<Stored>>,
}

struct State {
    rv: u64,
    tables: BTreeMap<ResKey, Table>,
    log: VecDeque<Arc<Change>>,
    log_cap: usize,
    /// Changes at or below this resource version are no longer in the log.
    compacted_rv: u64,
}

/// The store of one cluster. All mutations take the one lock, so resource versions are
/// strictly ordered and watches see changes in that order.
pub struct Store {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<Change>>,
}

const NAMESPACES: (&str, &str) = ("", "namespaces");
const CRDS: (&str, &str) = ("apiextensions.k8s.io", "customresourcedefinitions");

impl Store {
    /// A store serving the built-in resources, keeping `log_cap` changes for watches to
    /// resume from (the compaction window).
    pub fn new(log_cap: usize) -> Store {
        let tables = builtins()
            .into_iter()
            .map(|t| {
                (
                    t.key(),
                    Table {
                        types: vec![t],
                        objects: BTreeMap::new(),
                    },
                )
            })
            .collect();
        let (tx, _) = broadcast::channel(65_536);
        Store {
            state: Mutex::new(State {
                rv: 1000,
                tables,
                log: VecDeque::new(),
                log_cap: log_cap.max(1),
                compacted_rv: 1000,
            }),
            tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every served resource type, all versions.
    pub fn resource_types(&self) -> Vec<ResourceType> {
        self.lock()
            .tables
            .values()
            .flat_map(|t| t.types.iter().cloned())
            .collect()
    }

    /// Finds the resource served at `/{group}/{version}/{plural}`.
    pub fn resolve(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        let st = self.lock();
        let t = st.tables.get(&ResKey::new(group, plural))?;
        t.types.iter().find(|t| t.version == version).cloned()
    }

    /// Finds a resource by `apiVersion` and `kind`, as manifests name them.
    pub fn resolve_kind(&self, api_version: &str, kind: &str) -> Option<ResourceType> {
        self.lock()
            .tables
            .values()
            .flat_map(|t| t.types.iter())
            .find(|t| t.api_version() == api_version && t.kind == kind)
            .cloned()
    }

    /// The number of objects per resource, for status output and memory figures.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.lock()
            .tables
            .iter()
            .filter(|(_, t)| !t.objects.is_empty())
            .map(|(k, t)| (k.plural.clone(), t.objects.len()))
            .collect()
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Arc<Stored>, ApiError> {
        let st = self.lock();
        let table = table(&st, rt)?;
        table
            .objects
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    pub fn list(
        &self,
        rt: &ResourceType,
        filter: &Filter,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let st = self.lock();
        let table = table(&st, rt)?;
        let (list_rv, start, left) = match continue_token {
            Some(tok) => {
                let token = Continue::decode(tok)?;
                if token.rv < st.compacted_rv {
                    return Err(ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ));
                }
                (token.rv, Some(token.after), Some(token.left))
            }
            None => (st.rv, None, None),
        };
        let lower = match &start {
            Some(k) => std::ops::Bound::Excluded(k.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let range = table
            .objects
            .range::<(String, String), _>((lower, std::ops::Bound::Unbounded))
            .map(|(_, v)| v);
        let mut matching = range.filter(|o| o.matches(filter));
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let items: Vec<Arc<Stored>> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        // Counting what is left on every page made a paginated list quadratic in the
        // table's size. The first page counts once; later pages carry the count forward in
        // their token, an estimate as the API server's own is.
        let left = match (more, left) {
            (false, _) => 0,
            (true, Some(before)) => before.saturating_sub(items.len()).max(1),
            (true, None) => 1 + matching.count(),
        };
        let continue_token = more.then(|| {
            let last = items.last().expect("a full page is not empty");
            Continue {
                rv: list_rv,
                after: (last.namespace.clone(), last.name.clone()),
                left,
            }
            .encode()
        });
        let selected = !filter.labels.is_empty() || !filter.fields.is_empty();
        Ok(ListPage {
            items,
            rv: list_rv,
            continue_token,
            remaining: (more && !selected).then_some(left),
        })
    }

    /// Creates an object, as `POST` does: defaults metadata, refuses duplicates and
    /// invalid names, and requires the namespace to exist.
    pub fn create(
        &self,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
    ) -> Result<Arc<Stored>, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        check_kind(rt, &mut obj)?;
        let mut st = self.lock();
        let md = obj
            .as_object_mut()
            .expect("checked above")
            .entry("metadata")
            .or_insert_with(|| json!({}));
        if !md.is_object() {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
        let name = match md["name"].as_str() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match md["generateName"].as_str() {
                Some(prefix) => format!("{prefix}{}", random_suffix()),
                None => {
                    return Err(ApiError::invalid(
                        rt,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            },
        };
        validate_name(rt, &name)?;
        if rt.namespaced {
            match md["namespace"].as_str() {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
            let ns_key = (String::new(), ns.to_string());
            let ns_exists = st.tables[&ResKey::new(NAMESPACES.0, NAMESPACES.1)]
                .objects
                .contains_key(&ns_key);
            if !ns_exists {
                return Err(ApiError::not_found_kind("namespaces", ns));
            }
            md["namespace"] = json!(ns);
        } else if let Some(m) = md.as_object_mut() {
            m.remove("namespace");
        }
        let key = (
            if rt.namespaced { ns } else { "" }.to_string(),
            name.clone(),
        );
        if table(&st, rt)?.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        md["name"] = json!(name);
        md["uid"] = json!(uuid::Uuid::new_v4().to_string());
        md["creationTimestamp"] = json!(now_rfc3339());
        md["generation"] = json!(1);
        if let Some(m) = md.as_object_mut() {
            m.remove("deletionTimestamp");
        }
        apply_defaults(rt, &mut obj);
        let stored = st.put(rt.key(), key, obj, EventType::Added, &self.tx);
        if rt.key() == ResKey::new(CRDS.0, CRDS.1) {
            st.register_crd(&stored.value());
        }
        Ok(stored)
    }

    /// Replaces an object, as `PUT` does, with optimistic concurrency on resourceVersion.
    /// With `status` only the status is taken from `obj`; without, the status is kept when
    /// the resource has a status subresource.
    pub fn update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        mut obj: Value,
        status: bool,
    ) -> Result<Arc<Stored>, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        check_kind(rt, &mut obj)?;
        self.modify(rt, ns, name, status, |_| Ok(obj))
    }

    /// Applies a patch of the given type, then stores the result as an update would.
    pub fn patch(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        patch_type: PatchType,
        body: &[u8],
        status: bool,
    ) -> Result<Arc<Stored>, ApiError> {
        self.modify(rt, ns, name, status, |old| {
            patch::apply(patch_type, old, body).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the patch could not be applied: {e}"),
                )
            })
        })
    }

    /// The common path of update and patch: `f` builds the new object from the stored one;
    /// a resourceVersion in it must match (optimistic concurrency), its name must not change.
    fn modify(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        status: bool,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Arc<Stored>, ApiError> {
        let mut st = self.lock();
        let key = (ns.to_string(), name.to_string());
        let old = table(&st, rt)?
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let old_value = old.value();
        let obj = f(&old_value)?;
        if let Some(rv) = obj["metadata"]["resourceVersion"].as_str()
            && !rv.is_empty()
            && rv != old.rv.to_string()
        {
            return Err(ApiError::conflict(rt, name));
        }
        if let Some(n) = obj["metadata"]["name"].as_str()
            && n != name
        {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let new = merge_update(rt, &old_value, obj, status);
        Ok(st.replace(rt, key, &old, new, &self.tx))
    }

    /// Deletes an object and, as the garbage collector would in the background, everything
    /// it owns; deleting a namespace deletes its contents, deleting a CRD its objects.
    pub fn delete(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Arc<Stored>, ApiError> {
        let mut st = self.lock();
        let key = (ns.to_string(), name.to_string());
        if !table(&st, rt)?.objects.contains_key(&key) {
            return Err(ApiError::not_found(rt, name));
        }
        Ok(st.delete_cascading(rt.key(), key, &self.tx))
    }

    /// Deletes every object a filter selects; returns how many.
    pub fn delete_collection(&self, rt: &ResourceType, filter: &Filter) -> Result<usize, ApiError> {
        let mut st = self.lock();
        let keys: Vec<(String, String)> = table(&st, rt)?
            .objects
            .iter()
            .filter(|(_, o)| o.matches(filter))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            if st.tables[&rt.key()].objects.contains_key(k) {
                st.delete_cascading(rt.key(), k.clone(), &self.tx);
            }
        }
        Ok(keys.len())
    }

    /// Starts a watch. `from` is the resource version to resume after; `None` (or `0`)
    /// asks for the current state first, as synthetic ADDED events.
    pub fn watch(
        &self,
        rt: &ResourceType,
        filter: &Filter,
        from: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        let st = self.lock();
        let table = table(&st, rt)?;
        let rx = self.tx.subscribe();
        match from {
            None | Some(0) => Ok(WatchStart {
                initial: table
                    .objects
                    .values()
                    .filter(|o| o.matches(filter))
                    .cloned()
                    .collect(),
                backlog: Vec::new(),
                rx,
                start_rv: st.rv,
            }),
            Some(rv) if rv < st.compacted_rv => Err(ApiError::gone(&format!(
                "too old resource version: {rv} ({})",
                st.compacted_rv
            ))),
            Some(rv) => Ok(WatchStart {
                initial: Vec::new(),
                // The log is in resource-version order: a watch that resumes where its list
                // left off skips the generated fleet's whole history instead of filtering it.
                backlog: st
                    .log
                    .range(st.log.partition_point(|c| c.rv <= rv)..)
                    .filter(|c| c.key == rt.key())
                    .cloned()
                    .collect(),
                rx,
                start_rv: st.rv,
            }),
        }
    }

    /// Forgets the change log, as an etcd compaction does: every watch or continue token
    /// older than now gets 410 Gone.
    pub fn compact(&self) {
        let mut st = self.lock();
        st.log.clear();
        st.compacted_rv = st.rv;
    }

    /// Looks up a namespaced or cluster object by apiVersion/kind for scenario code.
    pub fn find(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Result<(ResourceType, Value), ApiError> {
        let rt = self.resolve_kind(api_version, kind).ok_or_else(|| {
            ApiError::new(404, "NotFound", format!("no kind {kind} in {api_version}"))
        })?;
        let ns = if rt.namespaced { ns } else { "" };
        let obj = self.get(&rt, ns, name)?;
        Ok((rt, obj.value()))
    }
}

impl State {
    fn emit(&mut self, change: Change, tx: &broadcast::Sender<Arc<Change>>) {
        let change = Arc::new(change);
        self.log.push_back(change.clone());
        while self.log.len() > self.log_cap {
            if let Some(old) = self.log.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
        // Nobody watching is fine: the log above serves later watches.
        let _ = tx.send(change);
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn put(
        &mut self,
        res: ResKey,
        key: (String, String),
        mut obj: Value,
        kind: EventType,
        tx: &broadcast::Sender<Arc<Change>>,
    ) -> Arc<Stored> {
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let stored = Arc::new(Stored::from_value(&obj, rv));
        let prev = self
            .tables
            .get_mut(&res)
            .expect("callers resolve the table first")
            .objects
            .insert(key, stored.clone());
        self.emit(
            Change {
                rv,
                key: res,
                kind,
                obj: stored.clone(),
                prev,
            },
            tx,
        );
        stored
    }

    fn replace(
        &mut self,
        rt: &ResourceType,
        key: (String, String),
        old: &Arc<Stored>,
        mut new: Value,
        tx: &broadcast::Sender<Arc<Change>>,
    ) -> Arc<Stored> {
        // A no-op update keeps the resource version and sends no event, as on a real server.
        let mut old_value = old.value();
        old_value["metadata"]["resourceVersion"] = Value::Null;
        new["metadata"]["resourceVersion"] = Value::Null;
        if old_value == new {
            return old.clone();
        }
        if old_value["spec"] != new["spec"] {
            let generation = old_value["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(generation + 1);
        }
        let stored = self.put(rt.key(), key, new, EventType::Modified, tx);
        if rt.key() == ResKey::new(CRDS.0, CRDS.1) {
            self.register_crd(&stored.value());
        }
        stored
    }

    fn delete_cascading(
        &mut self,
        res: ResKey,
        key: (String, String),
        tx: &broadcast::Sender<Arc<Change>>,
    ) -> Arc<Stored> {
        let obj = self
            .tables
            .get_mut(&res)
            .and_then(|t| t.objects.remove(&key))
            .expect("callers check that the object exists");
        let rv = self.next_rv();
        let mut gone = obj.value();
        gone["metadata"]["resourceVersion"] = json!(rv.to_string());
        let gone = Arc::new(Stored::from_value(&gone, rv));
        self.emit(
            Change {
                rv,
                key: res.clone(),
                kind: EventType::Deleted,
                obj: gone.clone(),
                prev: Some(obj.clone()),
            },
            tx,
        );
        let mut dependents: Vec<(ResKey, (String, String))> = Vec::new();
        for (rk, t) in &self.tables {
            for (k, o) in &t.objects {
                let in_namespace = res == ResKey::new(NAMESPACES.0, NAMESPACES.1)
                    && k.0 == obj.name
                    && t.types[0].namespaced;
                if in_namespace || o.owners.contains(&obj.uid) {
                    dependents.push((rk.clone(), k.clone()));
                }
            }
        }
        if res == ResKey::new(CRDS.0, CRDS.1) {
            let v = obj.value();
            let crd_key = ResKey::new(
                v["spec"]["group"].as_str().unwrap_or_default(),
                v["spec"]["names"]["plural"].as_str().unwrap_or_default(),
            );
            if let Some(t) = self.tables.get(&crd_key) {
                dependents.extend(t.objects.keys().map(|k| (crd_key.clone(), k.clone())));
            }
            for (rk, k) in std::mem::take(&mut dependents) {
                if self
                    .tables
                    .get(&rk)
                    .is_some_and(|t| t.objects.contains_key(&k))
                {
                    self.delete_cascading(rk, k, tx);
                }
            }
            self.tables.remove(&crd_key);
            return gone;
        }
        for (rk, k) in dependents {
            if self
                .tables
                .get(&rk)
                .is_some_and(|t| t.objects.contains_key(&k))
            {
                self.delete_cascading(rk, k, tx);
            }
        }
        gone
    }

    /// Makes a CRD's resources servable. Existing objects are kept when a CRD is updated.
    fn register_crd(&mut self, crd: &Value) {
        let types = ResourceType::from_crd(crd);
        let Some(first) = types.first() else { return };
        let key = first.key();
        if let Some(b) = builtins().iter().find(|b| b.key() == key) {
            tracing::warn!(resource = %b.plural, "a CRD may not shadow a built-in resource");
            return;
        }
        let objects = self
            .tables
            .remove(&key)
            .map(|t| t.objects)
            .unwrap_or_default();
        self.tables.insert(key, Table { types, objects });
    }
}

fn table<'a>(st: &'a State, rt: &ResourceType) -> Result<&'a Table, ApiError> {
    st.tables.get(&rt.key()).ok_or_else(|| {
        ApiError::new(
            404,
            "NotFound",
            format!(
                "the server could not find the requested resource ({})",
                rt.plural
            ),
        )
    })
}

fn check_kind(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    match obj["kind"].as_str() {
        Some(k) if k != rt.kind => {
            return Err(ApiError::bad_request(&format!(
                "the kind of the object ({k}) does not match the resource ({})",
                rt.kind
            )));
        }
        Some(_) => {}
        None => obj["kind"] = json!(rt.kind),
    }
    if obj["apiVersion"].as_str().is_none() {
        obj["apiVersion"] = json!(rt.api_version());
    }
    Ok(())
}

/// Builds the object an update stores from the old one and the request's.
fn merge_update(rt: &ResourceType, old: &Value, mut new: Value, status_only: bool) -> Value {
    if status_only {
        let mut out = old.clone();
        out["status"] = new["status"].take();
        return out;
    }
    // Identity and server-owned metadata never change through an update.
    for f in [
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "generation",
    ] {
        new["metadata"][f] = old["metadata"][f].clone();
    }
    if let Some(m) = new["metadata"].as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    if rt.has_status {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    new
}

/// The defaults the real API server and its controllers fill in at creation.
fn apply_defaults(rt: &ResourceType, obj: &mut Value) {
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "namespaces") => {
            let name = obj["metadata"]["name"].clone();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            if obj["spec"]["finalizers"].is_null() {
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
            }
            if obj["status"]["phase"].is_null() {
                obj["status"]["phase"] = json!("Active");
            }
        }
        ("", "pods") if obj["status"]["phase"].is_null() => {
            obj["status"]["phase"] = json!("Pending");
            obj["status"]["qosClass"] = json!("BestEffort");
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            let names = obj["spec"]["names"].clone();
            obj["status"] = json!({
                "acceptedNames": names,
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "lastTransitionTime": now_rfc3339()},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "lastTransitionTime": now_rfc3339()},
                ],
                "storedVersions": obj["spec"]["versions"].as_array().map(|vs| vs.iter().filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
            });
        }
        _ => {}
    }
}

/// Object names follow DNS-1123: subdomains for most kinds, labels for namespaces.
fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let label_only = rt.plural == "namespaces";
    let max = if label_only { 63 } else { 253 };
    let ok = !name.is_empty()
        && name.len() <= max
        && name.chars().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == '-'
                || (c == '.' && !label_only)
                || (c == ':' && rt.group.starts_with("rbac"))
        })
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            rt,
            name,
            &format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-'{}, and must start and end with an alphanumeric character",
                if label_only { "label" } else { "subdomain" },
                if label_only { "" } else { " or '.'" }
            ),
        ))
    }
}

/// What a continue token holds: the list's resource version, the last key served, and the
/// estimated count of items after it.
struct Continue {
    rv: u64,
    after: (String, String),
    left: usize,
}

impl Continue {
    fn encode(&self) -> String {
        let raw =
            json!({"rv": self.rv, "ns": self.after.0, "name": self.after.1, "left": self.left})
                .to_string();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    fn decode(tok: &str) -> Result<Continue, ApiError> {
        let bad = || ApiError::bad_request("continue key is not valid");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tok)
            .map_err(|_| bad())?;
        let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
        let s = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(bad);
        Ok(Continue {
            rv: v["rv"].as_u64().ok_or_else(bad)?,
            after: (s("ns")?, s("name")?),
            left: v["left"].as_u64().ok_or_else(bad)? as usize,
        })
    }
}

/// Five lowercase alphanumerics, as `generateName` appends.
pub fn random_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let id = uuid::Uuid::new_v4();
    id.as_bytes()[..5]
        .iter()
        .map(|b| CHARS[*b as usize % CHARS.len()] as char)
        .collect()
}

/// Now as the API server writes timestamps (RFC 3339, seconds, UTC).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Groups the stored resource types by group/version, for discovery.
pub fn by_group_version(types: &[ResourceType]) -> BTreeMap<(String, String), Vec<ResourceType>> {
    let mut out: BTreeMap<(String, String), Vec<ResourceType>> = BTreeMap::new();
    for t in types {
        out.entry((t.group.clone(), t.version.clone()))
            .or_default()
            .push(t.clone());
    }
    out
}

/// A map from group to its versions, preferred (storage) version first.
pub fn group_versions(types: &[ResourceType]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen: HashMap<(String, String), ()> = HashMap::new();
    for t in types {
        if seen
            .insert((t.group.clone(), t.version.clone()), ())
            .is_none()
        {
            out.entry(t.group.clone())
                .or_default()
                .push(t.version.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selectors::LabelSelector;

    fn namespaces(store: &Store, n: usize) -> ResourceType {
        let rt = store
            .resolve("", "v1", "namespaces")
            .expect("namespaces are built in");
        for i in 0..n {
            let labels = json!({"half": if i % 2 == 0 { "even" } else { "odd" }});
            let ns = json!({"metadata": {"name": format!("ns-{i:03}"), "labels": labels}});
            store.create(&rt, "", ns).expect("a namespace is created");
        }
        rt
    }

    fn all_pages(store: &Store, rt: &ResourceType, filter: &Filter) -> Vec<ListPage> {
        let mut pages = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = store
                .list(rt, filter, Some(7), token.as_deref())
                .expect("a page is served");
            token = page.continue_token.clone();
            pages.push(page);
            if token.is_none() {
                return pages;
            }
        }
    }

    #[test]
    fn pages_serve_every_object_once_and_count_what_is_left_without_selectors() {
        let store = Store::new(100);
        let rt = namespaces(&store, 30);
        let pages = all_pages(&store, &rt, &Filter::default());
        let names: Vec<&str> = pages
            .iter()
            .flat_map(|p| p.items.iter().map(|o| o.name.as_str()))
            .collect();
        let expected: Vec<String> = (0..30).map(|i| format!("ns-{i:03}")).collect();
        assert_eq!(names, expected);
        let left: Vec<Option<usize>> = pages.iter().map(|p| p.remaining).collect();
        assert_eq!(left, [Some(23), Some(16), Some(9), Some(2), None]);

        let selected = Filter {
            labels: LabelSelector::parse("half=even").unwrap(),
            ..Filter::default()
        };
        let pages = all_pages(&store, &rt, &selected);
        assert_eq!(pages.iter().map(|p| p.items.len()).sum::<usize>(), 15);
        assert_eq!(pages.len(), 3, "7 + 7 + 1 even namespaces");
        assert!(
            pages.iter().all(|p| p.remaining.is_none()),
            "the API server leaves remainingItemCount out when a selector is set"
        );
    }

    #[test]
    fn a_watch_resumed_at_a_version_replays_only_what_came_after_it() {
        let store = Store::new(100);
        let rt = namespaces(&store, 3);
        let configmaps = store.resolve("", "v1", "configmaps").unwrap();
        let cm = json!({"metadata": {"name": "between"}});
        store.create(&configmaps, "ns-000", cm).unwrap();
        let first = store.get(&rt, "", "ns-000").unwrap();
        let from = first.value()["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok());
        let start = store.watch(&rt, &Filter::default(), from).unwrap();
        let names: Vec<&str> = start.backlog.iter().map(|c| c.obj.name.as_str()).collect();
        assert_eq!(
            names,
            ["ns-001", "ns-002"],
            "later namespaces, not the configmap"
        );
    }
}
