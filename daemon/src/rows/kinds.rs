//! The typed kinds, declared once: each line gives a kind's table, its API type, its API
//! group, version and kind, whether it is namespaced, and the function that turns one object
//! into rows. The `Kind` enum, its names and the supervisor's watchers all come from this
//! table, so adding a kind is one line here plus its rows function (and its catalog table).

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
    Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Gvk, ObjectRows};

/// What a typed kind's API type can do: be watched, parsed, and written back as JSON.
pub trait TypedObject:
    kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + 'static
{
}

impl<K> TypedObject for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug
        + Send
        + 'static
{
}

/// What is done with every typed kind, by [`for_each_typed`]: the supervisor starts a
/// watcher per kind through it.
pub trait TypedKinds {
    fn visit<K: TypedObject>(&mut self, kind: Kind, to_rows: fn(&Arc<str>, &K) -> ObjectRows);
}

macro_rules! typed_kinds {
    ($(
        $(#[$doc:meta])*
        $variant:ident: $table:literal, $api:ty, ($group:literal, $version:literal, $kindname:literal),
        $scope:ident, $rows:path;
    )*) => {
        /// The inventory tables kqd writes from watch events.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $($(#[$doc])* $variant,)*
            /// Every resource, as JSON, in `objects`; custom resources only come this way.
            Objects,
        }

        impl Kind {
            /// The kinds with their own typed table and watcher.
            pub const TYPED: &'static [Kind] = &[$(Kind::$variant),*];

            /// Every table the writer stages into: the typed kinds and `objects`.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant,)* Kind::Objects];

            pub fn table(self) -> &'static str {
                match self {
                    $(Kind::$variant => $table,)*
                    Kind::Objects => "objects",
                }
            }

            /// API group, version and kind of a typed kind (empty for `objects`).
            fn parts(self) -> (&'static str, &'static str, &'static str) {
                match self {
                    $(Kind::$variant => ($group, $version, $kindname),)*
                    Kind::Objects => ("", "", ""),
                }
            }

            /// Whether the table has a namespace column.
            pub fn namespaced(self) -> bool {
                match self {
                    $(Kind::$variant => scope!($scope),)*
                    Kind::Objects => true,
                }
            }
        }

        /// Calls `v` once for every typed kind, with its API type and rows function.
        pub fn for_each_typed(v: &mut impl TypedKinds) {
            $(v.visit::<$api>(Kind::$variant, $rows);)*
        }
    };
}

macro_rules! scope {
    (namespaced) => {
        true
    };
    (cluster) => {
        false
    };
}

typed_kinds! {
    Namespaces: "namespaces", Namespace, ("", "v1", "Namespace"), cluster, super::namespace;
    Nodes: "nodes", Node, ("", "v1", "Node"), cluster, super::node;
    Pods: "pods", Pod, ("", "v1", "Pod"), namespaced, super::pod;
    Deployments: "deployments", Deployment, ("apps", "v1", "Deployment"), namespaced, super::deployment;
    ReplicaSets: "replicasets", ReplicaSet, ("apps", "v1", "ReplicaSet"), namespaced, super::replicaset;
    StatefulSets: "statefulsets", StatefulSet, ("apps", "v1", "StatefulSet"), namespaced, super::statefulset;
    DaemonSets: "daemonsets", DaemonSet, ("apps", "v1", "DaemonSet"), namespaced, super::daemonset;
    Jobs: "jobs", Job, ("batch", "v1", "Job"), namespaced, super::job;
    CronJobs: "cronjobs", CronJob, ("batch", "v1", "CronJob"), namespaced, super::cronjob;
    Services: "services", Service, ("", "v1", "Service"), namespaced, super::service;
    ConfigMaps: "configmaps", ConfigMap, ("", "v1", "ConfigMap"), namespaced, super::configmap;
    Secrets: "secrets", Secret, ("", "v1", "Secret"), namespaced, super::secret;
    Events: "events", Event, ("", "v1", "Event"), namespaced, super::event;
    Ingresses: "ingresses", Ingress, ("networking.k8s.io", "v1", "Ingress"), namespaced, super::ingress;
    NetworkPolicies: "networkpolicies", NetworkPolicy, ("networking.k8s.io", "v1", "NetworkPolicy"), namespaced, super::networkpolicy;
    PersistentVolumes: "persistentvolumes", PersistentVolume, ("", "v1", "PersistentVolume"), cluster, super::persistentvolume;
    PersistentVolumeClaims: "persistentvolumeclaims", PersistentVolumeClaim, ("", "v1", "PersistentVolumeClaim"), namespaced, super::persistentvolumeclaim;
    StorageClasses: "storageclasses", StorageClass, ("storage.k8s.io", "v1", "StorageClass"), cluster, super::storageclass;
    ServiceAccounts: "serviceaccounts", ServiceAccount, ("", "v1", "ServiceAccount"), namespaced, super::serviceaccount;
    Roles: "roles", Role, ("rbac.authorization.k8s.io", "v1", "Role"), namespaced, super::role;
    ClusterRoles: "clusterroles", ClusterRole, ("rbac.authorization.k8s.io", "v1", "ClusterRole"), cluster, super::clusterrole;
    RoleBindings: "rolebindings", RoleBinding, ("rbac.authorization.k8s.io", "v1", "RoleBinding"), namespaced, super::rolebinding;
    ClusterRoleBindings: "clusterrolebindings", ClusterRoleBinding, ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"), cluster, super::clusterrolebinding;
    Endpoints: "endpoints", Endpoints, ("", "v1", "Endpoints"), namespaced, super::endpoints;
    HorizontalPodAutoscalers: "horizontalpodautoscalers", HorizontalPodAutoscaler, ("autoscaling", "v2", "HorizontalPodAutoscaler"), namespaced, super::horizontalpodautoscaler;
    PodDisruptionBudgets: "poddisruptionbudgets", PodDisruptionBudget, ("policy", "v1", "PodDisruptionBudget"), namespaced, super::poddisruptionbudget;
}

impl Kind {
    /// API group, version, kind and resource of a typed kind, as its `objects` rows say.
    pub fn gvk(self) -> Gvk {
        let (group, version, kind) = self.parts();
        Gvk {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            resource: self.table().into(),
        }
    }

    /// The API group, without allocating: the writer asks for it on every upsert.
    pub fn group(self) -> &'static str {
        self.parts().0
    }

    /// The child table whose rows belong to one object of this kind, keyed by its uid.
    pub fn child(self) -> Option<(&'static str, &'static str)> {
        match self {
            Kind::Pods => Some(("containers", "pod_uid")),
            _ => None,
        }
    }

    /// Kinds whose objects incidents are about: their deletion ends those incidents.
    pub fn has_incidents(self) -> bool {
        matches!(self, Kind::Pods | Kind::Jobs | Kind::Nodes)
    }

    /// Kinds whose rows outlive the object: the cluster forgets events after an hour, kq
    /// keeps them for its own retention period.
    pub fn keeps_deleted(self) -> bool {
        matches!(self, Kind::Events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_catalog_table_with_a_namespace_column_exactly_when_namespaced() {
        for &k in Kind::ALL {
            let table = kq_schema::table(k.table())
                .unwrap_or_else(|| panic!("{} has no catalog table", k.table()));
            let has_ns = table.columns.iter().any(|c| c.name == "namespace");
            assert_eq!(has_ns, k.namespaced(), "{}", k.table());
        }
        assert_eq!(Kind::ALL.len(), Kind::TYPED.len() + 1);
    }

    #[test]
    fn every_typed_kind_is_visited_once_with_its_api_type() {
        /// Each visited kind with what its API type says of itself: kind, group, version.
        struct Names(Vec<(Kind, [String; 3])>);
        impl TypedKinds for Names {
            fn visit<K: TypedObject>(&mut self, kind: Kind, _: fn(&Arc<str>, &K) -> ObjectRows) {
                let api = [K::kind(&()), K::group(&()), K::version(&())].map(|s| s.into_owned());
                self.0.push((kind, api));
            }
        }
        let mut names = Names(Vec::new());
        for_each_typed(&mut names);
        let kinds: Vec<Kind> = names.0.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, Kind::TYPED);
        for (k, api) in &names.0 {
            let g = k.gvk();
            assert_eq!(
                [&g.kind, &g.group, &g.version],
                [&api[0], &api[1], &api[2]],
                "{}",
                k.table()
            );
        }
    }
}
