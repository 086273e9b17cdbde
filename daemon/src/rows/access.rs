//! Rows of the networking, storage and access-control kinds: Ingresses, NetworkPolicies,
//! PersistentVolumes and their claims, StorageClasses, ServiceAccounts, Roles, ClusterRoles
//! and both kinds of binding.

use std::sync::Arc;

use duckdb::types::Value;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{ObjectRows, Row, head, head_cluster, int, json_of, opt_text, single, text};
use crate::quantity;

fn names<T>(items: &Option<Vec<T>>, name: impl Fn(&T) -> Option<&str>) -> Value {
    let names: Vec<&str> = items.iter().flatten().filter_map(name).collect();
    Value::Text(serde_json::to_string(&names).expect("strings serialize"))
}

fn storage_bytes(m: Option<&std::collections::BTreeMap<String, Quantity>>) -> Value {
    int(m
        .and_then(|m| m.get("storage"))
        .and_then(|q| quantity::bytes(&q.0)))
}

pub fn ingress(ctx: &Arc<str>, i: &Ingress) -> ObjectRows {
    let spec = i.spec.as_ref();
    let mut row = head(ctx, &i.metadata);
    row.extend([
        opt_text(&spec.and_then(|s| s.ingress_class_name.clone())),
        names(&spec.and_then(|s| s.rules.clone()), |r| r.host.as_deref()),
        json_of(&spec.and_then(|s| s.rules.clone())),
        Value::Text(
            serde_json::to_string(
                &spec
                    .and_then(|s| s.tls.as_ref())
                    .into_iter()
                    .flatten()
                    .flat_map(|t| t.hosts.iter().flatten())
                    .collect::<Vec<_>>(),
            )
            .expect("strings serialize"),
        ),
        json_of(
            &i.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.clone()),
        ),
    ]);
    single(&i.metadata, row)
}

pub fn networkpolicy(ctx: &Arc<str>, n: &NetworkPolicy) -> ObjectRows {
    let spec = n.spec.as_ref();
    let mut row = head(ctx, &n.metadata);
    row.extend([
        json_of(&spec.and_then(|s| s.pod_selector.clone())),
        json_of(&spec.and_then(|s| s.policy_types.clone())),
        json_of(&spec.and_then(|s| s.ingress.clone())),
        json_of(&spec.and_then(|s| s.egress.clone())),
    ]);
    single(&n.metadata, row)
}

pub fn persistentvolume(ctx: &Arc<str>, pv: &PersistentVolume) -> ObjectRows {
    let spec = pv.spec.as_ref();
    let claim = spec.and_then(|s| s.claim_ref.as_ref());
    let mut row = head_cluster(ctx, &pv.metadata);
    row.extend([
        storage_bytes(spec.and_then(|s| s.capacity.as_ref())),
        opt_text(&spec.and_then(|s| s.storage_class_name.clone())),
        opt_text(&spec.and_then(|s| s.persistent_volume_reclaim_policy.clone())),
        opt_text(&pv.status.as_ref().and_then(|s| s.phase.clone())),
        opt_text(&claim.and_then(|c| c.namespace.clone())),
        opt_text(&claim.and_then(|c| c.name.clone())),
        json_of(&spec.and_then(|s| s.access_modes.clone())),
    ]);
    single(&pv.metadata, row)
}

pub fn persistentvolumeclaim(ctx: &Arc<str>, pvc: &PersistentVolumeClaim) -> ObjectRows {
    let spec = pvc.spec.as_ref();
    let st = pvc.status.as_ref();
    let mut row = head(ctx, &pvc.metadata);
    row.extend([
        storage_bytes(
            spec.and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref()),
        ),
        storage_bytes(st.and_then(|s| s.capacity.as_ref())),
        opt_text(&spec.and_then(|s| s.storage_class_name.clone())),
        opt_text(&spec.and_then(|s| s.volume_name.clone())),
        opt_text(&st.and_then(|s| s.phase.clone())),
        json_of(&spec.and_then(|s| s.access_modes.clone())),
    ]);
    single(&pvc.metadata, row)
}

pub fn storageclass(ctx: &Arc<str>, sc: &StorageClass) -> ObjectRows {
    let default = sc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("storageclass.kubernetes.io/is-default-class"))
        .is_some_and(|v| v == "true");
    let mut row = head_cluster(ctx, &sc.metadata);
    row.extend([
        text(Some(sc.provisioner.as_str())),
        opt_text(&sc.reclaim_policy),
        opt_text(&sc.volume_binding_mode),
        sc.allow_volume_expansion
            .map_or(Value::Null, Value::Boolean),
        Value::Boolean(default),
        json_of(&sc.parameters),
    ]);
    single(&sc.metadata, row)
}

pub fn serviceaccount(ctx: &Arc<str>, sa: &ServiceAccount) -> ObjectRows {
    let mut row = head(ctx, &sa.metadata);
    row.extend([
        names(&sa.secrets, |s| s.name.as_deref()),
        names(&sa.image_pull_secrets, |s| Some(s.name.as_str())),
        sa.automount_service_account_token
            .map_or(Value::Null, Value::Boolean),
    ]);
    single(&sa.metadata, row)
}

pub fn role(ctx: &Arc<str>, r: &Role) -> ObjectRows {
    let mut row = head(ctx, &r.metadata);
    row.push(json_of(&r.rules));
    single(&r.metadata, row)
}

pub fn clusterrole(ctx: &Arc<str>, r: &ClusterRole) -> ObjectRows {
    let mut row = head_cluster(ctx, &r.metadata);
    row.extend([json_of(&r.rules), json_of(&r.aggregation_rule)]);
    single(&r.metadata, row)
}

fn binding_row(
    mut row: Row,
    meta: &ObjectMeta,
    role_ref: &RoleRef,
    subjects: &Option<Vec<Subject>>,
) -> ObjectRows {
    row.extend([
        text(Some(role_ref.kind.as_str())),
        text(Some(role_ref.name.as_str())),
        json_of(subjects),
    ]);
    single(meta, row)
}

pub fn rolebinding(ctx: &Arc<str>, b: &RoleBinding) -> ObjectRows {
    binding_row(
        head(ctx, &b.metadata),
        &b.metadata,
        &b.role_ref,
        &b.subjects,
    )
}

pub fn clusterrolebinding(ctx: &Arc<str>, b: &ClusterRoleBinding) -> ObjectRows {
    binding_row(
        head_cluster(ctx, &b.metadata),
        &b.metadata,
        &b.role_ref,
        &b.subjects,
    )
}
