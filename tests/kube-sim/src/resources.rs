//! The resource types a simulated cluster serves: the built-in kinds and the ones CRDs add.

use serde_json::{Value, json};

/// Verbs every ordinary resource supports, in the order the real API server lists them.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// One servable resource: what discovery reports and what the store keys objects by.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub has_status: bool,
    /// The uid of the CRD that defines this resource; `None` for built-ins.
    pub crd_uid: Option<String>,
}

impl ResourceType {
    fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        short_names: &[&str],
        has_status: bool,
    ) -> Self {
        ResourceType {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            singular: kind.to_lowercase(),
            namespaced,
            short_names: short_names.iter().map(|s| s.to_string()).collect(),
            has_status,
            crd_uid: None,
        }
    }

    /// `v1` for the core group, `group/version` otherwise, as in an object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The key the store files this resource's objects under.
    pub fn key(&self) -> ResKey {
        ResKey {
            group: self.group.clone(),
            plural: self.plural.clone(),
        }
    }

    /// The `APIResource` entries discovery returns for this resource and its subresources.
    pub fn discovery_entries(&self) -> Vec<Value> {
        let mut out = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": ALL_VERBS,
            "shortNames": self.short_names,
            "storageVersionHash": "",
        })];
        if self.has_status {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }

    /// Builds the resource type a CRD version describes.
    pub fn from_crd(crd: &Value) -> Vec<ResourceType> {
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default().to_string();
        let names = &spec["names"];
        let kind = names["kind"].as_str().unwrap_or_default().to_string();
        let plural = names["plural"].as_str().unwrap_or_default().to_string();
        let singular = names["singular"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase());
        let short_names: Vec<String> = names["shortNames"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        let uid = crd["metadata"]["uid"].as_str().map(str::to_string);
        spec["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["served"].as_bool().unwrap_or(true))
            .map(|v| ResourceType {
                group: group.clone(),
                version: v["name"].as_str().unwrap_or("v1").to_string(),
                kind: kind.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                namespaced,
                short_names: short_names.clone(),
                has_status: !v["subresources"]["status"].is_null(),
                crd_uid: uid.clone(),
            })
            .collect()
    }
}

/// Identifies a resource independently of its version: objects of every served version of a
/// CRD live in one table, as they do in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResKey {
    pub group: String,
    pub plural: String,
}

impl ResKey {
    pub fn new(group: &str, plural: &str) -> Self {
        ResKey {
            group: group.to_string(),
            plural: plural.to_string(),
        }
    }
}

/// Every built-in resource the simulator serves.
pub fn builtins() -> Vec<ResourceType> {
    let b = ResourceType::builtin;
    vec![
        b("", "v1", "Namespace", "namespaces", false, &["ns"], true),
        b("", "v1", "Node", "nodes", false, &["no"], true),
        b("", "v1", "Pod", "pods", true, &["po"], true),
        b("", "v1", "Service", "services", true, &["svc"], true),
        b("", "v1", "Endpoints", "endpoints", true, &["ep"], false),
        b("", "v1", "ConfigMap", "configmaps", true, &["cm"], false),
        b("", "v1", "Secret", "secrets", true, &[], false),
        b("", "v1", "Event", "events", true, &["ev"], false),
        b(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            true,
            &["sa"],
            false,
        ),
        b(
            "",
            "v1",
            "PersistentVolume",
            "persistentvolumes",
            false,
            &["pv"],
            true,
        ),
        b(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            true,
            &["pvc"],
            true,
        ),
        b(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            true,
            &["deploy"],
            true,
        ),
        b(
            "apps",
            "v1",
            "ReplicaSet",
            "replicasets",
            true,
            &["rs"],
            true,
        ),
        b(
            "apps",
            "v1",
            "StatefulSet",
            "statefulsets",
            true,
            &["sts"],
            true,
        ),
        b("apps", "v1", "DaemonSet", "daemonsets", true, &["ds"], true),
        b("batch", "v1", "Job", "jobs", true, &[], true),
        b("batch", "v1", "CronJob", "cronjobs", true, &["cj"], true),
        b(
            "networking.k8s.io",
            "v1",
            "Ingress",
            "ingresses",
            true,
            &["ing"],
            true,
        ),
        b(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
            &["netpol"],
            false,
        ),
        b(
            "rbac.authorization.k8s.io",
            "v1",
            "Role",
            "roles",
            true,
            &[],
            false,
        ),
        b(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
            &[],
            false,
        ),
        b(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
            &[],
            false,
        ),
        b(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
            &[],
            false,
        ),
        b(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            true,
            &["hpa"],
            true,
        ),
        b(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
            &["pdb"],
            true,
        ),
        b(
            "storage.k8s.io",
            "v1",
            "StorageClass",
            "storageclasses",
            false,
            &["sc"],
            false,
        ),
        b(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            &["crd", "crds"],
            true,
        ),
    ]
}
