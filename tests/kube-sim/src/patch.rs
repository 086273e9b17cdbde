//! The three patch formats kubectl and clients send: JSON merge, JSON patch, and the
//! strategic merge patch of `kubectl apply`, merging lists by their usual merge keys.

use serde_json::{Map, Value};

/// The patch format, from the request's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }
}

/// Applies `body` to `target`, returning the patched object.
pub fn apply(kind: PatchType, target: &Value, body: &[u8]) -> Result<Value, String> {
    let mut out = target.clone();
    match kind {
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            json_patch::patch(&mut out, &p).map_err(|e| e.to_string())?;
        }
        PatchType::Merge => {
            let p: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            json_patch::merge(&mut out, &p);
        }
        PatchType::Strategic => {
            let p: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            strategic_merge(&mut out, &p);
        }
    }
    Ok(out)
}

/// The keys Kubernetes' strategic merge uses to match list elements (patchMergeKey).
const MERGE_KEYS: &[&str] = &[
    "name",
    "containerPort",
    "mountPath",
    "type",
    "port",
    "ip",
    "devicePath",
];

fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        // Directives such as $setElementOrder and $retainKeys only order or prune lists; the
        // simulator keeps the merged result as is.
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(_) => strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v),
            Value::Array(items) => {
                let merged = match t.get(k) {
                    Some(Value::Array(old)) => merge_list(old, items),
                    _ => items.iter().filter(|i| !is_delete(i)).cloned().collect(),
                };
                t.insert(k.clone(), Value::Array(merged));
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}

fn is_delete(item: &Value) -> bool {
    item.get("$patch").and_then(Value::as_str) == Some("delete")
}

fn merge_list(old: &[Value], patch: &[Value]) -> Vec<Value> {
    let key = MERGE_KEYS
        .iter()
        .find(|k| !patch.is_empty() && patch.iter().all(|i| i.get(**k).is_some()));
    let Some(key) = key else {
        return patch.to_vec();
    };
    let mut out: Vec<Value> = old.to_vec();
    for item in patch {
        let id = &item[*key];
        let pos = out.iter().position(|o| o.get(*key) == Some(id));
        match (pos, is_delete(item)) {
            (Some(i), true) => {
                out.remove(i);
            }
            (Some(i), false) => strategic_merge(&mut out[i], item),
            (None, false) => out.push(item.clone()),
            (None, true) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let old = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}]}});
        let p = json!({"spec": {"containers": [{"name": "b", "image": "y:2"}], "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}]}});
        let out = apply(PatchType::Strategic, &old, p.to_string().as_bytes()).unwrap();
        assert_eq!(out["spec"]["containers"][0]["image"], "x:1");
        assert_eq!(out["spec"]["containers"][1]["image"], "y:2");
        let del = json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}});
        let out = apply(PatchType::Strategic, &out, del.to_string().as_bytes()).unwrap();
        assert_eq!(out["spec"]["containers"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn merge_and_json_patch() {
        let old = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let out = apply(
            PatchType::Merge,
            &old,
            br#"{"metadata":{"labels":{"a":null}}}"#,
        )
        .unwrap();
        assert_eq!(out, json!({"metadata": {"labels": {"b": "2"}}}));
        let out = apply(
            PatchType::Json,
            &old,
            br#"[{"op":"replace","path":"/metadata/labels/a","value":"9"}]"#,
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"]["a"], "9");
        assert!(
            apply(
                PatchType::Json,
                &old,
                br#"[{"op":"remove","path":"/nope"}]"#
            )
            .is_err()
        );
    }
}
