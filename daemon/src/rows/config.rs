//! Rows of Services, ConfigMaps, Secrets and Events. Secret and ConfigMap values are never
//! copied into a row: only key names (and, for ConfigMaps, sizes); a Secret's values only
//! as in-memory digests, for its diffs.

use std::sync::Arc;

use duckdb::types::Value;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret, Service};

use super::{ObjectRows, head, int32, json_of, opt_text, single, time};

pub fn service(ctx: &Arc<str>, s: &Service) -> ObjectRows {
    let spec = s.spec.as_ref();
    let mut row = head(ctx, &s.metadata);
    row.extend([
        opt_text(&spec.and_then(|s| s.type_.clone())),
        opt_text(&spec.and_then(|s| s.cluster_ip.clone())),
        json_of(&spec.and_then(|s| s.external_ips.clone())),
        json_of(
            &s.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.clone()),
        ),
        json_of(&spec.and_then(|s| s.ports.clone())),
        json_of(&spec.and_then(|s| s.selector.clone())),
    ]);
    single(&s.metadata, row)
}

fn keys_json<'a>(keys: impl Iterator<Item = &'a String>) -> Value {
    let keys: Vec<&String> = keys.collect();
    Value::Text(serde_json::to_string(&keys).expect("strings serialize"))
}

pub fn configmap(ctx: &Arc<str>, c: &ConfigMap) -> ObjectRows {
    let data = c.data.iter().flatten();
    let binary = c.binary_data.iter().flatten();
    let bytes: usize = data.clone().map(|(_, v)| v.len()).sum::<usize>()
        + binary.clone().map(|(_, v)| v.0.len()).sum::<usize>();
    let mut row = head(ctx, &c.metadata);
    row.extend([
        keys_json(data.map(|(k, _)| k).chain(binary.map(|(k, _)| k))),
        Value::BigInt(bytes as i64),
    ]);
    single(&c.metadata, row)
}

pub fn secret(ctx: &Arc<str>, s: &Secret) -> ObjectRows {
    let keys = s
        .data
        .iter()
        .flatten()
        .map(|(k, _)| k)
        .chain(s.string_data.iter().flatten().map(|(k, _)| k));
    let mut row = head(ctx, &s.metadata);
    row.extend([opt_text(&s.type_), keys_json(keys)]);
    let mut rows = single(&s.metadata, row);
    let values = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.0.as_slice()))
        .chain(
            s.string_data
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str(), v.as_bytes())),
        );
    rows.secret = Some(Box::new(crate::diff::SecretDigests::of(values)));
    rows
}

pub fn event(ctx: &Arc<str>, e: &Event) -> ObjectRows {
    let o = &e.involved_object;
    let event_time = e
        .event_time
        .as_ref()
        .map(|t| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t.0));
    let reporter = e
        .reporting_component
        .clone()
        .filter(|c| !c.is_empty())
        .or_else(|| e.source.as_ref().and_then(|s| s.component.clone()));
    let mut row = head(ctx, &e.metadata);
    row.extend([
        opt_text(&e.type_),
        opt_text(&e.reason),
        opt_text(&e.message),
        opt_text(&o.kind),
        opt_text(&o.namespace),
        opt_text(&o.name),
        opt_text(&o.uid),
        int32(e.count),
        time(&e.first_timestamp.clone().or_else(|| event_time.clone())),
        time(&e.last_timestamp.clone().or(event_time)),
        opt_text(&reporter),
    ]);
    let mut rows = single(&e.metadata, row);
    rows.observed = crate::incidents::detect::event(e).map(Box::new);
    rows
}
