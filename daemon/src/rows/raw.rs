//! An object as the API server sent it: parsed into its type for the rows, and kept as the
//! server's own JSON for `objects`, so that it is never serialised back.
//!
//! Serialising a typed pod back to JSON cost about two thirds of parsing it (15.6 against
//! 21.7 µs for a 3.4 kB pod), and it lost what the typed struct does not know: fields of
//! API versions newer than k8s-openapi's, alpha fields, anything a webhook added. Keeping
//! the server's bytes costs one quick pass over them (4 µs for that pod) to leave out
//! `metadata.managedFields` and to put `apiVersion` and `kind` first, as list items may
//! lack them.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, de};
use serde_json::value::RawValue;

use super::Gvk;

/// A watched object: `object` parsed, `json` the text it was parsed from.
///
/// Its text is taken with [`RawValue`], which needs serde_json's own deserializer: a watch
/// event must name its `type` before its `object`, as the API server's (Go's struct order)
/// and every proxy's do; an event with the object first fails to parse, as a broken event.
#[derive(Clone)]
pub struct Raw<K> {
    pub object: K,
    pub json: Box<RawValue>,
}

impl<K: fmt::Debug> fmt::Debug for Raw<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.object.fmt(f)
    }
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Raw<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = Box::<RawValue>::deserialize(d)?;
        let object = serde_json::from_str(json.get()).map_err(de::Error::custom)?;
        Ok(Raw { object, json })
    }
}

impl<K: kube::Resource> kube::Resource for Raw<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        self.object.meta()
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.object.meta_mut()
    }
}

/// The members of a JSON object, in their order, each value as its text.
struct Members<'a>(Vec<(&'a str, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Each<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Each<'a> {
            type Value = Members<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Members<'a>, M::Error> {
                let mut members = Vec::with_capacity(8);
                // A key is borrowed from the text, so one written with escapes fails the
                // pass, and the caller serialises the typed object instead.
                while let Some(member) = m.next_entry::<&'de str, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Each(PhantomData))
    }
}

fn push_member(out: &mut String, first: &mut bool, key: &str, value: &str) {
    if !std::mem::take(first) {
        out.push(',');
    }
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
    out.push_str(value);
}

/// The `objects` JSON of an object from the server's text: its members in the server's
/// order, `apiVersion` and `kind` first (from `gvk` where the text lacks them), and its
/// metadata without `managedFields`. `None` for a Secret, whose values must be left out
/// and whose kubectl annotation hidden ([`super::object_json`] does both), and for text
/// this pass cannot take apart.
pub fn stored_json(gvk: &Gvk, text: &str) -> Option<String> {
    if super::is_secret(gvk) {
        return None;
    }
    let top: Members = serde_json::from_str(text).ok()?;
    let mut out = String::with_capacity(text.len() + 48);
    out.push('{');
    let mut first = true;
    let member = |key: &str| top.0.iter().find(|(k, _)| *k == key).map(|(_, v)| v.get());
    let api_version = match member("apiVersion") {
        Some(v) => Cow::Borrowed(v),
        None if gvk.group.is_empty() => Cow::Owned(serde_json::to_string(&gvk.version).ok()?),
        None => Cow::Owned(serde_json::to_string(&format!("{}/{}", gvk.group, gvk.version)).ok()?),
    };
    let kind = match member("kind") {
        Some(v) => Cow::Borrowed(v),
        None => Cow::Owned(serde_json::to_string(&gvk.kind).ok()?),
    };
    push_member(&mut out, &mut first, "apiVersion", &api_version);
    push_member(&mut out, &mut first, "kind", &kind);
    for (key, value) in &top.0 {
        match *key {
            "apiVersion" | "kind" => {}
            "metadata" => {
                let meta: Members = serde_json::from_str(value.get()).ok()?;
                push_member(&mut out, &mut first, key, "{");
                let mut first_field = true;
                for (field, v) in meta.0.iter().filter(|(f, _)| *f != "managedFields") {
                    push_member(&mut out, &mut first_field, field, v.get());
                }
                out.push('}');
            }
            _ => push_member(&mut out, &mut first, key, value.get()),
        }
    }
    out.push('}');
    Some(out)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Pod, Secret};
    use serde_json::{Value, json};

    use super::*;

    fn pods() -> Gvk {
        Gvk {
            group: String::new(),
            version: "v1".into(),
            kind: "Pod".into(),
            resource: "pods".into(),
        }
    }

    #[test]
    fn the_stored_json_is_the_servers_without_managed_fields_and_with_its_type_first() {
        // As a list item comes: no apiVersion or kind, managedFields, a field k8s-openapi's
        // Pod does not know, a null, and Go's escapes of `<` and `>`.
        let text = r#"{"metadata":{"name":"web-1","namespace":"default","uid":"u1","managedFields":[{"manager":"kubectl","operation":"Update"}],"annotations":{"note":"\u003cb\u003e"}},"spec":{"containers":[{"name":"web","image":"nginx:1"}],"futureField":{"on":true}},"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True","lastProbeTime":null}]}}"#;
        let stored = stored_json(&pods(), text).unwrap();
        let v: Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(
            v,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web-1", "namespace": "default", "uid": "u1",
                             "annotations": {"note": "<b>"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1"}],
                         "futureField": {"on": true}},
                "status": {"phase": "Running",
                           "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": null}]},
            })
        );
        assert!(stored.starts_with(r#"{"apiVersion":"v1","kind":"Pod","metadata":{"#));
        // The status stays last, where the shape digest of a pod looks for it.
        assert!(stored.contains(r#","status":{"phase""#));
        // A watch event's object names its type already; it is kept as sent.
        let typed = format!(r#"{{"apiVersion":"v1","kind":"Pod",{}"#, &text[1..]);
        assert_eq!(stored_json(&pods(), &typed).unwrap(), stored);
        // The typed parse of the same text gives the rows what it always did.
        let raw: Raw<Pod> = serde_json::from_str(text).unwrap();
        assert_eq!(raw.object.metadata.name.as_deref(), Some("web-1"));
        assert_eq!(raw.json.get(), text);
    }

    #[test]
    fn a_group_version_is_named_in_full_and_a_secret_or_odd_text_is_left_to_the_typed_path() {
        let deployments = Gvk {
            group: "apps".into(),
            version: "v1".into(),
            kind: "Deployment".into(),
            resource: "deployments".into(),
        };
        let stored = stored_json(&deployments, r#"{"metadata":{"name":"d"},"spec":{}}"#).unwrap();
        assert_eq!(
            stored,
            r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d"},"spec":{}}"#
        );
        let secrets = Gvk {
            kind: "Secret".into(),
            resource: "secrets".into(),
            ..pods()
        };
        let secret = r#"{"metadata":{"name":"s"},"data":{"password":"aHVudGVyMg=="}}"#;
        assert_eq!(stored_json(&secrets, secret), None);
        let typed: Secret = serde_json::from_str(secret).unwrap();
        assert!(
            !super::super::object_json(&secrets, &typed)
                .unwrap()
                .contains("aHVudGVyMg")
        );
        // A key written with escapes, and text that is not an object.
        assert_eq!(stored_json(&pods(), r#"{"meta\u0064ata":{}}"#), None);
        assert_eq!(stored_json(&pods(), "[]"), None);
    }
}
