//! Rows of Endpoints, HorizontalPodAutoscalers and PodDisruptionBudgets.

use std::sync::Arc;

use duckdb::types::Value;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ObjectRows, head, int32, json_of, single, text};

pub fn endpoints(ctx: &Arc<str>, e: &Endpoints) -> ObjectRows {
    let count = |f: fn(&k8s_openapi::api::core::v1::EndpointSubset) -> usize| -> Value {
        Value::Int(e.subsets.iter().flatten().map(f).sum::<usize>() as i32)
    };
    let mut row = head(ctx, &e.metadata);
    row.extend([
        count(|s| s.addresses.as_ref().map_or(0, Vec::len)),
        count(|s| s.not_ready_addresses.as_ref().map_or(0, Vec::len)),
        json_of(&e.subsets),
    ]);
    single(&e.metadata, row)
}

pub fn horizontalpodautoscaler(ctx: &Arc<str>, h: &HorizontalPodAutoscaler) -> ObjectRows {
    let spec = h.spec.as_ref();
    let st = h.status.as_ref();
    let mut row = head(ctx, &h.metadata);
    row.extend([
        text(spec.map(|s| s.scale_target_ref.kind.as_str())),
        text(spec.map(|s| s.scale_target_ref.name.as_str())),
        int32(spec.and_then(|s| s.min_replicas)),
        int32(spec.map(|s| s.max_replicas)),
        int32(st.and_then(|s| s.current_replicas)),
        int32(st.map(|s| s.desired_replicas)),
        json_of(&spec.and_then(|s| s.metrics.clone())),
    ]);
    single(&h.metadata, row)
}

fn int_or_string(v: Option<&IntOrString>) -> Value {
    match v {
        Some(IntOrString::Int(n)) => Value::Text(n.to_string()),
        Some(IntOrString::String(s)) => Value::Text(s.clone()),
        None => Value::Null,
    }
}

pub fn poddisruptionbudget(ctx: &Arc<str>, p: &PodDisruptionBudget) -> ObjectRows {
    let spec = p.spec.as_ref();
    let st = p.status.as_ref();
    let mut row = head(ctx, &p.metadata);
    row.extend([
        int_or_string(spec.and_then(|s| s.min_available.as_ref())),
        int_or_string(spec.and_then(|s| s.max_unavailable.as_ref())),
        int32(st.map(|s| s.current_healthy)),
        int32(st.map(|s| s.desired_healthy)),
        int32(st.map(|s| s.disruptions_allowed)),
        int32(st.map(|s| s.expected_pods)),
    ]);
    single(&p.metadata, row)
}
