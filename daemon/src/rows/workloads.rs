//! Rows of the workload kinds: Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs and
//! CronJobs.

use std::sync::Arc;

use duckdb::types::Value;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::{ObjectRows, controller, head, int, int32, json_of, opt_text, single, text, time};

/// The replica counts the four replica-managing kinds report, in catalog order.
struct Replicas {
    desired: Option<i32>,
    current: Option<i32>,
    ready: Option<i32>,
    available: Option<i32>,
    updated: Option<i32>,
    strategy: Option<String>,
    selector: Option<LabelSelector>,
    observed_generation: Option<i64>,
}

fn workload_row(ctx: &Arc<str>, meta: &ObjectMeta, r: Replicas) -> ObjectRows {
    let mut row = head(ctx, meta);
    row.extend(controller(meta));
    row.extend([
        int32(r.desired),
        int32(r.current),
        int32(r.ready),
        int32(r.available),
        int32(r.updated),
        opt_text(&r.strategy),
        json_of(&r.selector),
        int(meta.generation),
        int(r.observed_generation),
    ]);
    single(meta, row)
}

pub fn deployment(ctx: &Arc<str>, d: &Deployment) -> ObjectRows {
    let spec = d.spec.as_ref();
    let st = d.status.as_ref();
    workload_row(
        ctx,
        &d.metadata,
        Replicas {
            desired: spec.and_then(|s| s.replicas),
            current: st.and_then(|s| s.replicas),
            ready: st.and_then(|s| s.ready_replicas),
            available: st.and_then(|s| s.available_replicas),
            updated: st.and_then(|s| s.updated_replicas),
            strategy: spec
                .and_then(|s| s.strategy.as_ref())
                .and_then(|s| s.type_.clone()),
            selector: spec.map(|s| s.selector.clone()),
            observed_generation: st.and_then(|s| s.observed_generation),
        },
    )
}

pub fn replicaset(ctx: &Arc<str>, r: &ReplicaSet) -> ObjectRows {
    let spec = r.spec.as_ref();
    let st = r.status.as_ref();
    workload_row(
        ctx,
        &r.metadata,
        Replicas {
            desired: spec.and_then(|s| s.replicas),
            current: st.map(|s| s.replicas),
            ready: st.and_then(|s| s.ready_replicas),
            available: st.and_then(|s| s.available_replicas),
            updated: None,
            strategy: None,
            selector: spec.map(|s| s.selector.clone()),
            observed_generation: st.and_then(|s| s.observed_generation),
        },
    )
}

pub fn statefulset(ctx: &Arc<str>, s: &StatefulSet) -> ObjectRows {
    let spec = s.spec.as_ref();
    let st = s.status.as_ref();
    workload_row(
        ctx,
        &s.metadata,
        Replicas {
            desired: spec.and_then(|s| s.replicas),
            current: st.map(|s| s.replicas),
            ready: st.and_then(|s| s.ready_replicas),
            available: st.and_then(|s| s.available_replicas),
            updated: st.and_then(|s| s.updated_replicas),
            strategy: spec
                .and_then(|s| s.update_strategy.as_ref())
                .and_then(|s| s.type_.clone()),
            selector: spec.map(|s| s.selector.clone()),
            observed_generation: st.and_then(|s| s.observed_generation),
        },
    )
}

pub fn daemonset(ctx: &Arc<str>, d: &DaemonSet) -> ObjectRows {
    let spec = d.spec.as_ref();
    let st = d.status.as_ref();
    workload_row(
        ctx,
        &d.metadata,
        Replicas {
            desired: st.map(|s| s.desired_number_scheduled),
            current: st.map(|s| s.current_number_scheduled),
            ready: st.map(|s| s.number_ready),
            available: st.and_then(|s| s.number_available),
            updated: st.and_then(|s| s.updated_number_scheduled),
            strategy: spec
                .and_then(|s| s.update_strategy.as_ref())
                .and_then(|s| s.type_.clone()),
            selector: spec.map(|s| s.selector.clone()),
            observed_generation: st.and_then(|s| s.observed_generation),
        },
    )
}

pub fn job(ctx: &Arc<str>, j: &Job) -> ObjectRows {
    let spec = j.spec.as_ref();
    let st = j.status.as_ref();
    let mut row = head(ctx, &j.metadata);
    row.extend(controller(&j.metadata));
    row.extend([
        int32(spec.and_then(|s| s.completions)),
        int32(spec.and_then(|s| s.parallelism)),
        int32(spec.and_then(|s| s.backoff_limit)),
        int32(st.and_then(|s| s.active)),
        int32(st.and_then(|s| s.succeeded)),
        int32(st.and_then(|s| s.failed)),
        time(&st.and_then(|s| s.start_time.clone())),
        time(&st.and_then(|s| s.completion_time.clone())),
        json_of(&st.and_then(|s| s.conditions.clone())),
    ]);
    let mut rows = single(&j.metadata, row);
    rows.observed = Some(Box::new(crate::incidents::detect::job(j)));
    rows
}

pub fn cronjob(ctx: &Arc<str>, c: &CronJob) -> ObjectRows {
    let spec = c.spec.as_ref();
    let st = c.status.as_ref();
    let mut row = head(ctx, &c.metadata);
    row.extend([
        text(spec.map(|s| s.schedule.as_str())),
        spec.and_then(|s| s.suspend)
            .map_or(Value::Boolean(false), Value::Boolean),
        time(&st.and_then(|s| s.last_schedule_time.clone())),
        time(&st.and_then(|s| s.last_successful_time.clone())),
        Value::Int(
            st.and_then(|s| s.active.as_ref())
                .map_or(0, |a| a.len() as i32),
        ),
    ]);
    single(&c.metadata, row)
}
