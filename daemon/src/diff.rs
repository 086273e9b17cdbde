//! What changed in a modified object: the JSON paths whose values differ between the stored
//! state and the new one, each with its old and new value, and whether the spec changed.
//!
//! The rules, in one place:
//!
//! | what | rule |
//! |---|---|
//! | `metadata.resourceVersion`, `metadata.managedFields`, `metadata.generation` | never a diff (generation moving only sets `spec_changed`) |
//! | `metadata.annotations."kubectl.kubernetes.io/last-applied-configuration"` | never: it repeats the object |
//! | `…lastHeartbeatTime`, `…lastProbeTime`, `…renewTime` (node and lease heartbeats) | never |
//! | `status` of pods | never: pod status churns; the typed columns and incidents show it |
//! | events, leases, endpoints, endpointslices | no diff at all: they only churn |
//! | secrets' `data` and `stringData` | the key whose value changed, was added or removed, its values shown as `"(hidden)"`: the stored object has no `data`, so the change is found by comparing per-key digests kept in memory only ([`SecretDigests`]) |
//! | configmaps' `data` and `binaryData` | the key, with its values shown as `"(hidden)"` (kq does not capture configmap values) |
//! | any value longer than [`VALUE_CAP`] characters (as JSON) | cut, with its length noted |
//!
//! `spec_changed` is true when `metadata.generation` moved or a path outside `status` and
//! `metadata` differs.

use serde_json::{Map, Value};

/// Longest value kept whole, in characters of its JSON.
pub const VALUE_CAP: usize = 200;

/// Kinds (tables, or resources of `objects`) whose changes record no diff.
const CHURN_ONLY: &[&str] = &["events", "leases", "endpoints", "endpointslices"];
/// Kinds whose `status` is left out.
const STATUS_CHURNS: &[&str] = &["pods"];
/// Kinds whose `data` values are left out (only the keys that changed).
const VALUES_HIDDEN: &[&str] = &["configmaps"];
/// Last path segments that tick on every heartbeat.
const HEARTBEATS: &[&str] = &["lastHeartbeatTime", "lastProbeTime", "renewTime"];

/// What a hidden value is shown as: it exists, and nothing more.
pub(crate) const HIDDEN: &str = "(hidden)";

/// The annotation in which `kubectl apply` keeps the manifest as it was applied: it
/// repeats the object, and for a Secret holds its values, as `data` (base64) or
/// `stringData` (plain text).
pub(crate) const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A modify's diff (the default: nothing changed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    /// `{"path": …, "old": …, "new": …}`, in path order.
    pub entries: Vec<Value>,
    pub spec_changed: bool,
}

impl Diff {
    /// `[{"path": …, "old": …, "new": …}]`, as `changes.diff` holds it.
    pub fn json(&self) -> String {
        Value::Array(self.entries.clone()).to_string()
    }

    /// Adds the keys whose hidden values changed (a Secret's), keeping path order; they
    /// are data, so the spec changed.
    pub fn with_hidden(mut self, hidden: Vec<Value>) -> Diff {
        if hidden.is_empty() {
            return self;
        }
        self.entries.extend(hidden);
        self.entries
            .sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
        self.spec_changed = true;
        self
    }
}

/// Per key of a Secret, a digest of its value: SipHash under a key drawn at random when
/// kqd starts, held in the writer's memory and never written anywhere, so that the store
/// can say which keys changed without keeping (or being able to recover) a value. Sorted
/// by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDigests(Box<[(Box<str>, u64)]>);

impl SecretDigests {
    /// Digests `(key, value bytes)`.
    pub fn of<'a>(values: impl Iterator<Item = (&'a str, &'a [u8])>) -> SecretDigests {
        use std::hash::BuildHasher as _;
        static KEY: std::sync::LazyLock<std::hash::RandomState> =
            std::sync::LazyLock::new(std::hash::RandomState::new);
        let mut v: Vec<(Box<str>, u64)> = values
            .map(|(k, bytes)| (Box::from(k), KEY.hash_one(bytes)))
            .collect();
        v.sort();
        v.dedup_by(|a, b| a.0 == b.0);
        SecretDigests(v.into_boxed_slice())
    }

    /// The diff entries of the keys added, removed or changed from `old` to `self`, values
    /// shown as `"(hidden)"`.
    pub fn changes_from(&self, old: &SecretDigests) -> Vec<Value> {
        let mut keys: Vec<&str> = old.0.iter().chain(self.0.iter()).map(|e| &*e.0).collect();
        keys.sort_unstable();
        keys.dedup();
        let find = |d: &SecretDigests, k: &str| {
            d.0.binary_search_by(|e| (*e.0).cmp(k))
                .ok()
                .map(|i| d.0[i].1)
        };
        keys.into_iter()
            .filter_map(|k| {
                let (a, b) = (find(old, k), find(self, k));
                if a == b {
                    return None;
                }
                let shown =
                    |d: Option<u64>| d.map_or(Value::Null, |_| Value::String(HIDDEN.into()));
                let mut m = Map::new();
                m.insert(
                    "path".into(),
                    Value::String(render(&[Seg::Key("data"), Seg::Key(k)])),
                );
                m.insert("old".into(), shown(a));
                m.insert("new".into(), shown(b));
                Some(Value::Object(m))
            })
            .collect()
    }
}

/// The diff between two states of an object of `kind` (a table name, or a resource's
/// plural for `objects` rows). None when the kind records no diffs or either side is not
/// JSON.
pub fn diff(kind: &str, old: &str, new: &str) -> Option<Diff> {
    if CHURN_ONLY.contains(&kind) {
        return None;
    }
    let old: Value = serde_json::from_str(old).ok()?;
    let new: Value = serde_json::from_str(new).ok()?;
    let rules = Rules::of(kind);
    let mut out = Vec::new();
    walk(&rules, &mut Vec::new(), Some(&old), Some(&new), &mut out);
    let generation = |v: &Value| v.pointer("/metadata/generation").cloned();
    let spec_changed = generation(&old) != generation(&new)
        || out
            .iter()
            .any(|c| !c.top.starts_with("status") && c.top != "metadata");
    let entries: Vec<Value> = out
        .into_iter()
        .map(|c| {
            let mut m = Map::new();
            m.insert("path".into(), Value::String(c.path));
            m.insert("old".into(), capped(c.old));
            m.insert("new".into(), capped(c.new));
            Value::Object(m)
        })
        .collect();
    Some(Diff {
        entries,
        spec_changed,
    })
}

/// A digest of what [`diff`] compares in `json` (everything but what its rules leave out),
/// or None for a kind that records no diffs. Two states with the same shape have an empty
/// diff, so a status-only change needs no read of the stored state. Never 0.
pub fn shape(kind: &str, json: &str) -> Option<u64> {
    use std::hash::{Hash as _, Hasher as _};
    if CHURN_ONLY.contains(&kind) {
        return None;
    }
    let v: Value = serde_json::from_str(json).ok()?;
    let rules = Rules::of(kind);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    fn feed<'a>(
        rules: &Rules,
        path: &mut Vec<Seg<'a>>,
        v: &'a Value,
        h: &mut impl std::hash::Hasher,
    ) {
        if ignored(rules, path) {
            return;
        }
        match v {
            Value::Object(m) => {
                h.write_u8(b'{');
                for (k, child) in m {
                    k.hash(h);
                    path.push(Seg::Key(k));
                    feed(rules, path, child, h);
                    path.pop();
                }
                h.write_u8(b'}');
            }
            Value::Array(a) => {
                h.write_u8(b'[');
                for (i, child) in a.iter().enumerate() {
                    path.push(Seg::Index(i));
                    feed(rules, path, child, h);
                    path.pop();
                }
                h.write_u8(b']');
            }
            leaf => leaf.to_string().hash(h),
        }
    }
    feed(&rules, &mut Vec::new(), &v, &mut h);
    kind.hash(&mut h);
    Some(h.finish().max(1))
}

/// The shape of an object of a kind whose `status` churns (pods), from its JSON text as
/// kq serialises it, without parsing it: a digest of everything before the top-level
/// `status` (always the last member), with `metadata.resourceVersion`'s value left out.
/// It is cheap enough for every add on the watcher tasks, so that a pod's first status
/// change needs no read of its stored state. Any misreading of the text errs towards
/// "changed", which costs only the read. None for other kinds: their shape is [`shape`]'s.
pub fn text_shape(kind: &str, json: &str) -> Option<u64> {
    if !STATUS_CHURNS.contains(&kind) {
        return None;
    }
    // No member of a pod's metadata or spec is an object named `status`, and quotes in
    // strings are escaped, so this is the top-level member.
    let body = json.rfind(",\"status\":{").map_or(json, |at| &json[..at]);
    // XXH3 rather than SipHash: this digests most of every pod's JSON during the initial
    // sync, and needs no defence against chosen inputs (a collision costs a missed diff of
    // one object, as in `shape`).
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    const RV: &str = "\"resourceVersion\":\"";
    match body.find(RV) {
        Some(at) => {
            let value = at + RV.len();
            let end = body[value..].find('"').map_or(body.len(), |e| value + e);
            h.update(&body.as_bytes()[..value]);
            h.update(&body.as_bytes()[end..]);
        }
        None => h.update(body.as_bytes()),
    }
    // Never 0 (unknown).
    Some(h.digest().max(1))
}

struct Rules {
    skip_status: bool,
    hide_values: bool,
}

impl Rules {
    fn of(kind: &str) -> Rules {
        Rules {
            skip_status: STATUS_CHURNS.contains(&kind),
            hide_values: VALUES_HIDDEN.contains(&kind),
        }
    }
}

/// One differing path.
struct Change {
    path: String,
    /// Its first segment, for `spec_changed`.
    top: String,
    old: Option<Value>,
    new: Option<Value>,
}

/// A path segment: a key or an index.
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn render(path: &[Seg<'_>]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                let plain = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if plain {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(k);
                } else {
                    // Keys with dots or slashes (annotations, labels) are quoted.
                    s.push_str(&format!("[{}]", Value::String(k.to_string())));
                }
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Whether the path (so far) is one the rules leave out.
fn ignored(rules: &Rules, path: &[Seg<'_>]) -> bool {
    let key = |i: usize| match path.get(i) {
        Some(Seg::Key(k)) => Some(*k),
        _ => None,
    };
    match (key(0), key(1), key(2)) {
        (Some("metadata"), Some("resourceVersion" | "managedFields" | "generation"), _) => {
            return true;
        }
        (Some("metadata"), Some("annotations"), Some(LAST_APPLIED)) => return true,
        (Some("status"), _, _) if rules.skip_status => return true,
        _ => {}
    }
    matches!(path.last(), Some(Seg::Key(k)) if HEARTBEATS.contains(k))
}

fn walk<'a>(
    rules: &Rules,
    path: &mut Vec<Seg<'a>>,
    old: Option<&'a Value>,
    new: Option<&'a Value>,
    out: &mut Vec<Change>,
) {
    // A member set to null is one left out, for Kubernetes as for this diff: the server's
    // JSON keeps nulls that a typed object serialised back drops.
    let (old, new) = (old.filter(|v| !v.is_null()), new.filter(|v| !v.is_null()));
    if ignored(rules, path) || old == new {
        return;
    }
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                path.push(Seg::Key(k));
                walk(rules, path, a.get(k), b.get(k), out);
                path.pop();
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                path.push(Seg::Index(i));
                walk(rules, path, a.get(i), b.get(i), out);
                path.pop();
            }
        }
        _ => {
            let hidden =
                rules.hide_values && matches!(path.first(), Some(Seg::Key("data" | "binaryData")));
            let top = match path.first() {
                Some(Seg::Key(k)) => k.to_string(),
                _ => String::new(),
            };
            let shown = |v: Option<&Value>| match v {
                Some(_) if hidden => Some(Value::String(HIDDEN.into())),
                v => v.cloned(),
            };
            out.push(Change {
                path: render(path),
                top,
                old: shown(old),
                new: shown(new),
            });
        }
    }
}

/// A value as kept in the diff: whole, or cut to [`VALUE_CAP`] characters with its length.
fn capped(v: Option<Value>) -> Value {
    let Some(v) = v else { return Value::Null };
    let text = match &v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() <= VALUE_CAP {
        return v;
    }
    let cut: String = text.chars().take(VALUE_CAP).collect();
    Value::String(format!("{cut}… ({} characters)", text.chars().count()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entries(d: &Diff) -> Vec<Value> {
        d.entries.clone()
    }

    #[test]
    fn an_image_change_is_one_path_with_old_and_new() {
        let old = json!({"metadata": {"generation": 3, "resourceVersion": "10"},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "shop:1.4"}]}}}});
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("shop:1.5");
        new["metadata"]["generation"] = json!(4);
        new["metadata"]["resourceVersion"] = json!("11");
        let d = diff("deployments", &old.to_string(), &new.to_string()).unwrap();
        assert_eq!(
            entries(&d),
            [
                json!({"path": "spec.template.spec.containers[0].image", "old": "shop:1.4", "new": "shop:1.5"})
            ]
        );
        assert!(d.spec_changed);
    }

    #[test]
    fn a_member_set_to_null_is_the_same_as_one_left_out() {
        // The server's JSON writes `"ports": null` where the typed object serialised back
        // left the member out: the same object, so no change (as across an upgrade of kqd).
        let typed = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app", "image": "a:1"}]}}}});
        let mut served = typed.clone();
        served["spec"]["template"]["spec"]["containers"][0]["ports"] = Value::Null;
        served["spec"]["paused"] = Value::Null;
        assert_eq!(
            diff("deployments", &typed.to_string(), &served.to_string()).map(|d| d.entries),
            Some(vec![])
        );
        // A value that goes to null is gone.
        let mut scaled = served.clone();
        scaled["spec"]["replicas"] = Value::Null;
        let d = diff("deployments", &served.to_string(), &scaled.to_string()).unwrap();
        assert_eq!(
            entries(&d),
            [json!({"path": "spec.replicas", "old": 2, "new": null})]
        );
    }

    #[test]
    fn heartbeats_and_pod_status_are_noise() {
        let node = |t: &str| json!({"status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": t}]}});
        let d = diff("nodes", &node("a").to_string(), &node("b").to_string()).unwrap();
        assert_eq!(d.json(), "[]");
        assert!(!d.spec_changed);
        let pod = |p: &str| json!({"status": {"phase": p}});
        let d = diff(
            "pods",
            &pod("Pending").to_string(),
            &pod("Running").to_string(),
        )
        .unwrap();
        assert_eq!(d.json(), "[]");
        assert!(diff("events", "{}", "{\"count\": 2}").is_none());
    }

    #[test]
    fn annotation_keys_are_quoted_and_long_values_cut() {
        let old = json!({"metadata": {"annotations": {"a.b/c": "x"}}});
        let new = json!({"metadata": {"annotations": {"a.b/c": "y".repeat(500)}}});
        let d = diff("services", &old.to_string(), &new.to_string()).unwrap();
        let e = entries(&d);
        assert_eq!(e[0]["path"], "metadata.annotations[\"a.b/c\"]");
        let cut = e[0]["new"].as_str().unwrap();
        assert!(
            cut.ends_with("… (500 characters)") && cut.len() < 260,
            "{cut}"
        );
        assert!(!d.spec_changed, "metadata only");
    }

    #[test]
    fn configmap_values_stay_out_and_keys_show() {
        let old = json!({"data": {"PASSWORD_HINT": "old-value"}});
        let new = json!({"data": {"PASSWORD_HINT": "new-value", "added": "v"}});
        let d = diff("configmaps", &old.to_string(), &new.to_string()).unwrap();
        assert!(!d.json().contains("value"), "{}", d.json());
        assert_eq!(
            entries(&d),
            [
                json!({"path": "data.PASSWORD_HINT", "old": "(hidden)", "new": "(hidden)"}),
                json!({"path": "data.added", "old": null, "new": "(hidden)"})
            ]
        );
    }

    #[test]
    fn secret_keys_that_changed_show_and_their_values_never() {
        let old = SecretDigests::of(
            [
                ("password", &b"hunter2"[..]),
                ("user", b"kq"),
                ("gone", b"x"),
            ]
            .into_iter(),
        );
        let new = SecretDigests::of(
            [
                ("password", &b"hunter3"[..]),
                ("user", b"kq"),
                ("tls.crt", b"y"),
            ]
            .into_iter(),
        );
        let d = diff("secrets", "{}", "{}")
            .unwrap()
            .with_hidden(new.changes_from(&old));
        assert_eq!(
            entries(&d),
            [
                json!({"path": "data.gone", "old": "(hidden)", "new": null}),
                json!({"path": "data.password", "old": "(hidden)", "new": "(hidden)"}),
                json!({"path": "data[\"tls.crt\"]", "old": null, "new": "(hidden)"}),
            ]
        );
        assert!(d.spec_changed);
        assert!(new.changes_from(&new).is_empty());
        assert!(!d.json().contains("hunter"));
    }

    #[test]
    fn the_shape_moves_with_the_diff_and_not_with_noise() {
        let pod = |phase: &str, image: &str| {
            json!({"metadata": {"resourceVersion": phase}, "spec": {"containers": [{"image": image}]}, "status": {"phase": phase}})
                .to_string()
        };
        let a = shape("pods", &pod("Pending", "a")).unwrap();
        assert_eq!(a, shape("pods", &pod("Running", "a")).unwrap());
        assert_ne!(a, shape("pods", &pod("Running", "b")).unwrap());
        assert!(shape("events", "{}").is_none());
    }

    #[test]
    fn a_pods_text_shape_ignores_status_and_resource_version_only() {
        let pod = |rv: &str, image: &str, phase: &str| {
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"labels": {"app": "shop"}, "name": "p", "resourceVersion": rv},
                "spec": {"containers": [{"image": image, "name": "app"}]},
                "status": {"phase": phase, "conditions": [{"status": "True", "type": "Ready"}]}})
            .to_string()
        };
        let a = text_shape("pods", &pod("1", "shop:1.4", "Pending")).unwrap();
        assert_eq!(
            a,
            text_shape("pods", &pod("2", "shop:1.4", "Running")).unwrap()
        );
        assert_ne!(
            a,
            text_shape("pods", &pod("3", "shop:1.5", "Running")).unwrap()
        );
        let relabelled = pod("4", "shop:1.4", "Running").replace("\"shop\"}", "\"cart\"}");
        assert_ne!(a, text_shape("pods", &relabelled).unwrap());
        assert!(text_shape("deployments", "{}").is_none());
    }

    #[test]
    fn a_scale_is_the_replicas_path() {
        let old = json!({"spec": {"replicas": 2}, "status": {"replicas": 2}});
        let new = json!({"spec": {"replicas": 5}, "status": {"replicas": 2}});
        let d = diff("deployments", &old.to_string(), &new.to_string()).unwrap();
        assert_eq!(
            entries(&d),
            [json!({"path": "spec.replicas", "old": 2, "new": 5})]
        );
    }
}
