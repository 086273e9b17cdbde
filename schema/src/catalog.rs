//! The table catalog: names, SQL types and one-line descriptions of every column.

use std::sync::LazyLock;

/// One column of a kq table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    /// The DuckDB type.
    pub sql_type: &'static str,
    pub description: &'static str,
    /// A compression DuckDB must use for the column instead of choosing one (`zstd` for
    /// large JSON, which DuckDB's string compressions leave about twice the size). It is
    /// how a file created from now on stores the column; a table created before keeps the
    /// storage it was created with, with the same rows and types.
    pub compression: Option<&'static str>,
    /// Whether the PostgreSQL mirror copies it. `object_key` is kq's own way of finding an
    /// object's rows in DuckDB; the mirror keys its tables by (instance, context, uid).
    pub mirrored: bool,
}

/// One kq table, or a view over tables.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: &'static str,
    pub description: &'static str,
    pub columns: Vec<Column>,
    /// For a view: the query it stands for.
    pub view: Option<&'static str>,
}

const fn c(name: &'static str, sql_type: &'static str, description: &'static str) -> Column {
    Column {
        name,
        sql_type,
        description,
        compression: None,
        mirrored: true,
    }
}

impl Column {
    /// The column stored with this compression (see [`Column::compression`]).
    const fn compressed(self, compression: &'static str) -> Column {
        Column {
            compression: Some(compression),
            ..self
        }
    }

    /// The column stays in DuckDB (see [`Column::mirrored`]).
    const fn not_mirrored(self) -> Column {
        Column {
            mirrored: false,
            ..self
        }
    }
}

/// The last column of every inventory table and of `containers`: the key the writer finds
/// an object's rows by (see [`crate::object_key`]).
const fn object_key(description: &'static str) -> Column {
    c("object_key", "UBIGINT", description).not_mirrored()
}

const OBJECT_KEY: &str = "kq's 64-bit key of (context, uid): one number to join on instead of two strings (a pod's containers carry its key).";

/// Looks a table up by name.
pub fn table(name: &str) -> Option<&'static Table> {
    CATALOG.iter().find(|t| t.name == name)
}

/// An inventory table: the columns every one of them starts with (`namespace` only for
/// namespaced kinds), then the kind's own.
fn inventory(
    name: &'static str,
    description: &'static str,
    namespaced: bool,
    kind_columns: &[Column],
) -> Table {
    let mut columns = vec![c(
        "context",
        "VARCHAR",
        "Kubeconfig context the object came from.",
    )];
    if namespaced {
        columns.push(c("namespace", "VARCHAR", "metadata.namespace."));
    }
    columns.extend([
        c("name", "VARCHAR", "metadata.name."),
        c(
            "uid",
            "VARCHAR",
            "metadata.uid; (context, uid) identifies the row.",
        ),
        c(
            "labels",
            "JSON",
            "metadata.labels as a JSON object (labels->>'app').",
        ),
        c(
            "annotations",
            "JSON",
            "metadata.annotations as a JSON object.",
        ),
        c("created_at", "TIMESTAMPTZ", "metadata.creationTimestamp."),
        c(
            "resource_version",
            "VARCHAR",
            "metadata.resourceVersion of the stored state.",
        ),
    ]);
    columns.extend_from_slice(kind_columns);
    columns.push(object_key(OBJECT_KEY));
    Table {
        name,
        description,
        columns,
        view: None,
    }
}

/// Every table kqd keeps, in the order `.tables` lists them.
pub static CATALOG: LazyLock<Vec<Table>> = LazyLock::new(|| {
    vec![
        Table {
            name: "contexts",
            description: "One row per kubeconfig context kqd knows, with its connection and sync state.",
            view: None,
            columns: vec![
                c("name", "VARCHAR", "Context name, as in the kubeconfig."),
                c("cluster", "VARCHAR", "Cluster entry the context uses."),
                c("server", "VARCHAR", "API server URL."),
                c("user", "VARCHAR", "User entry the context uses."),
                c(
                    "namespace",
                    "VARCHAR",
                    "The context's default namespace, if set.",
                ),
                c(
                    "source_file",
                    "VARCHAR",
                    "Kubeconfig file the context was read from.",
                ),
                c("state", "VARCHAR", "connecting | syncing | ready | error."),
                c(
                    "error",
                    "VARCHAR",
                    "Why the context is in error, naming the cause (TLS, auth, unreachable, forbidden…).",
                ),
                c(
                    "last_event_at",
                    "TIMESTAMPTZ",
                    "When the last watch event from this context was applied.",
                ),
                c(
                    "synced_at",
                    "TIMESTAMPTZ",
                    "When the initial list of every watched kind last completed.",
                ),
                c(
                    "server_version",
                    "VARCHAR",
                    "Kubernetes version the API server reports (gitVersion).",
                ),
                c(
                    "object_count",
                    "BIGINT",
                    "Objects of this context currently in the inventory.",
                ),
                c("updated_at", "TIMESTAMPTZ", "When this row last changed."),
                c(
                    "cluster_id",
                    "VARCHAR",
                    "uid of the cluster's kube-system namespace: two contexts with the same cluster_id reach the same cluster.",
                ),
                c(
                    "config_error",
                    "VARCHAR",
                    "Why the context's kubeconfig file cannot be read now (kqd keeps using its last good version), or NULL.",
                ),
            ],
        },
        inventory(
            "namespaces",
            "Namespaces of every context.",
            false,
            &[c(
                "phase",
                "VARCHAR",
                "status.phase: Active or Terminating.",
            )],
        ),
        inventory(
            "nodes",
            "Nodes of every context, with capacity, readiness and versions.",
            false,
            &[
                c(
                    "ready",
                    "VARCHAR",
                    "Status of the Ready condition: True, False or Unknown.",
                ),
                c("unschedulable", "BOOLEAN", "spec.unschedulable (cordoned)."),
                c("internal_ip", "VARCHAR", "The InternalIP address."),
                c(
                    "kubelet_version",
                    "VARCHAR",
                    "status.nodeInfo.kubeletVersion.",
                ),
                c("os_image", "VARCHAR", "status.nodeInfo.osImage."),
                c(
                    "kernel_version",
                    "VARCHAR",
                    "status.nodeInfo.kernelVersion.",
                ),
                c(
                    "container_runtime",
                    "VARCHAR",
                    "status.nodeInfo.containerRuntimeVersion.",
                ),
                c("os", "VARCHAR", "status.nodeInfo.operatingSystem."),
                c("arch", "VARCHAR", "status.nodeInfo.architecture."),
                c("cpu_capacity_m", "BIGINT", "CPU capacity in millicores."),
                c(
                    "memory_capacity_bytes",
                    "BIGINT",
                    "Memory capacity in bytes.",
                ),
                c("pods_capacity", "BIGINT", "Maximum pods."),
                c(
                    "cpu_allocatable_m",
                    "BIGINT",
                    "Allocatable CPU in millicores.",
                ),
                c(
                    "memory_allocatable_bytes",
                    "BIGINT",
                    "Allocatable memory in bytes.",
                ),
                c(
                    "conditions",
                    "JSON",
                    "status.conditions as JSON (type, status, reason, message).",
                ),
                c("taints", "JSON", "spec.taints as JSON."),
                c(
                    "image_count",
                    "INTEGER",
                    "Number of images in status.images.",
                ),
            ],
        ),
        inventory(
            "pods",
            "Pods of every context, with phase, placement, owner and restarts.",
            true,
            &[
                c(
                    "phase",
                    "VARCHAR",
                    "status.phase: Pending, Running, Succeeded, Failed, Unknown.",
                ),
                c("reason", "VARCHAR", "status.reason, e.g. Evicted."),
                c("message", "VARCHAR", "status.message."),
                c("node", "VARCHAR", "spec.nodeName."),
                c("pod_ip", "VARCHAR", "status.podIP."),
                c("host_ip", "VARCHAR", "status.hostIP."),
                c("qos_class", "VARCHAR", "status.qosClass."),
                c("service_account", "VARCHAR", "spec.serviceAccountName."),
                c(
                    "owner_kind",
                    "VARCHAR",
                    "Kind of the controlling owner reference (ReplicaSet, Job, StatefulSet…).",
                ),
                c("owner_name", "VARCHAR", "Name of the controlling owner."),
                c("owner_uid", "VARCHAR", "uid of the controlling owner."),
                c("ready", "BOOLEAN", "The Ready condition is True."),
                c(
                    "restarts",
                    "BIGINT",
                    "Sum of restart counts over all containers.",
                ),
                c("containers", "INTEGER", "Number of app containers."),
                c("started_at", "TIMESTAMPTZ", "status.startTime."),
                c("deleting", "BOOLEAN", "metadata.deletionTimestamp is set."),
            ],
        ),
        Table {
            name: "containers",
            description: "One row per container of every pod: app, init and ephemeral containers.",
            view: None,
            columns: vec![
                c(
                    "context",
                    "VARCHAR",
                    "Kubeconfig context the pod came from.",
                ),
                c("namespace", "VARCHAR", "Pod namespace."),
                c("pod", "VARCHAR", "Pod name."),
                c(
                    "pod_uid",
                    "VARCHAR",
                    "Pod uid; joins pods.uid with context.",
                ),
                c("name", "VARCHAR", "Container name."),
                c("kind", "VARCHAR", "container | init | ephemeral."),
                c("image", "VARCHAR", "Image as written in the pod spec."),
                c(
                    "image_id",
                    "VARCHAR",
                    "Resolved image (status imageID), when running.",
                ),
                c(
                    "state",
                    "VARCHAR",
                    "running | waiting | terminated, or NULL before the first status.",
                ),
                c(
                    "reason",
                    "VARCHAR",
                    "Reason of the waiting or terminated state (CrashLoopBackOff, OOMKilled…).",
                ),
                c(
                    "ready",
                    "BOOLEAN",
                    "The container passes its readiness probe.",
                ),
                c("restart_count", "INTEGER", "restartCount."),
                c(
                    "last_exit_code",
                    "INTEGER",
                    "Exit code of the last termination (lastState.terminated, or the current one).",
                ),
                c("last_reason", "VARCHAR", "Reason of the last termination."),
                c(
                    "last_finished_at",
                    "TIMESTAMPTZ",
                    "When the last termination happened.",
                ),
                c("started_at", "TIMESTAMPTZ", "When the current run started."),
                c("cpu_request_m", "BIGINT", "CPU request in millicores."),
                c("cpu_limit_m", "BIGINT", "CPU limit in millicores."),
                c("memory_request_bytes", "BIGINT", "Memory request in bytes."),
                c("memory_limit_bytes", "BIGINT", "Memory limit in bytes."),
                c(
                    "image_ref",
                    "VARCHAR",
                    "The image in canonical form (nginx is docker.io/library/nginx:latest); joins image_refs.ref.",
                ),
                object_key("The pod's object_key; joins pods.object_key."),
            ],
        },
        Table {
            name: "images",
            description: "One row per image that any pod of any context uses, with its compressed size: from node status when a node reports it, else from its registry.",
            view: None,
            columns: vec![
                c(
                    "image",
                    "VARCHAR",
                    "The image: registry/repository@digest, or its canonical reference while the digest is unknown. A tag and a digest naming the same image share one row.",
                ),
                c(
                    "name",
                    "VARCHAR",
                    "Its best name: a tag reference when one is known, else the digest reference.",
                ),
                c(
                    "registry",
                    "VARCHAR",
                    "Registry host (docker.io, ghcr.io…).",
                ),
                c("repository", "VARCHAR", "Repository within the registry."),
                c(
                    "digest",
                    "VARCHAR",
                    "Manifest digest the tag resolved to (a multi-arch index's own digest).",
                ),
                c(
                    "size_bytes",
                    "BIGINT",
                    "Compressed size: layers plus config of the manifest for the platform.",
                ),
                c(
                    "source",
                    "VARCHAR",
                    "node (node.status.images) or registry (the OCI distribution API).",
                ),
                c("platform", "VARCHAR", "os/arch the size is for."),
                c(
                    "fetched_at",
                    "TIMESTAMPTZ",
                    "When the size or digest was learnt.",
                ),
                c(
                    "expires_at",
                    "TIMESTAMPTZ",
                    "When the tag-to-digest answer is looked up again.",
                ),
                c(
                    "error",
                    "VARCHAR",
                    "Why the last lookup failed (not found, unauthorized, unreachable), else NULL.",
                ),
            ],
        },
        Table {
            name: "image_refs",
            description: "Every image reference pods use, in canonical form, and the image it names.",
            view: None,
            columns: vec![
                c(
                    "ref",
                    "VARCHAR",
                    "Canonical reference, as containers.image_ref.",
                ),
                c("image", "VARCHAR", "The image it names: images.image."),
            ],
        },
        Table {
            name: "registries",
            description: "Every registry kqd has asked for image sizes: requests sent, the last answer, the last problem, and whether requests are held. Registries that only nodes answered for are absent: they cost no request.",
            view: None,
            columns: vec![
                c(
                    "registry",
                    "VARCHAR",
                    "Registry as image names spell it (docker.io, ghcr.io…).",
                ),
                c(
                    "requests",
                    "BIGINT",
                    "Requests sent since kqd started: manifest HEADs and GETs, and token requests.",
                ),
                c(
                    "manifest_gets",
                    "BIGINT",
                    "Manifest GETs, the requests Docker Hub counts as pulls.",
                ),
                c("last_status", "INTEGER", "HTTP status of the last answer."),
                c(
                    "last_request_at",
                    "TIMESTAMPTZ",
                    "When the last request went out.",
                ),
                c(
                    "last_error",
                    "VARCHAR",
                    "The last registry-wide problem: 429, 5xx, unreachable, token service, spent pull quota.",
                ),
                c("last_error_at", "TIMESTAMPTZ", "When last_error happened."),
                c(
                    "held_until",
                    "TIMESTAMPTZ",
                    "Until when every request waits (a 429's Retry-After), or manifest GETs do (a spent pull quota).",
                ),
                c(
                    "pulls_remaining",
                    "BIGINT",
                    "Docker Hub's ratelimit-remaining, when the registry sends it.",
                ),
            ],
        },
        Table {
            name: "container_images",
            description: "View: every container with its image's size; containers join image_refs on image_ref, and image_refs join images on image.",
            view: Some(CONTAINER_IMAGES),
            columns: vec![
                c("context", "VARCHAR", "Kubeconfig context."),
                c("namespace", "VARCHAR", "Pod namespace."),
                c("pod", "VARCHAR", "Pod name."),
                c("container", "VARCHAR", "Container name."),
                c("kind", "VARCHAR", "container | init | ephemeral."),
                c("image_ref", "VARCHAR", "Canonical image reference."),
                c("image", "VARCHAR", "images.image, once looked up."),
                c("image_name", "VARCHAR", "images.name."),
                c("size_bytes", "BIGINT", "Compressed image size."),
                c("source", "VARCHAR", "node or registry."),
                c("error", "VARCHAR", "Why the image could not be sized."),
            ],
        },
        workload(
            "deployments",
            "Deployments of every context, with their rollout state.",
        ),
        workload(
            "replicasets",
            "ReplicaSets of every context; owner_name names the Deployment.",
        ),
        workload("statefulsets", "StatefulSets of every context."),
        workload(
            "daemonsets",
            "DaemonSets of every context; desired is the number of nodes that should run one.",
        ),
        inventory(
            "jobs",
            "Jobs of every context, with completions and their conditions.",
            true,
            &[
                c(
                    "owner_kind",
                    "VARCHAR",
                    "Kind of the controlling owner (CronJob), if any.",
                ),
                c("owner_name", "VARCHAR", "Name of the controlling owner."),
                c("completions", "INTEGER", "spec.completions."),
                c("parallelism", "INTEGER", "spec.parallelism."),
                c("backoff_limit", "INTEGER", "spec.backoffLimit."),
                c("active", "INTEGER", "status.active."),
                c("succeeded", "INTEGER", "status.succeeded."),
                c("failed", "INTEGER", "status.failed."),
                c("start_time", "TIMESTAMPTZ", "status.startTime."),
                c("completion_time", "TIMESTAMPTZ", "status.completionTime."),
                c(
                    "conditions",
                    "JSON",
                    "status.conditions as JSON (Complete, Failed with reason BackoffLimitExceeded…).",
                ),
            ],
        ),
        inventory(
            "cronjobs",
            "CronJobs of every context.",
            true,
            &[
                c("schedule", "VARCHAR", "spec.schedule, in cron syntax."),
                c("suspend", "BOOLEAN", "spec.suspend."),
                c(
                    "last_schedule_time",
                    "TIMESTAMPTZ",
                    "status.lastScheduleTime.",
                ),
                c(
                    "last_successful_time",
                    "TIMESTAMPTZ",
                    "status.lastSuccessfulTime.",
                ),
                c(
                    "active",
                    "INTEGER",
                    "Jobs currently running (status.active).",
                ),
            ],
        ),
        inventory(
            "services",
            "Services of every context.",
            true,
            &[
                c(
                    "type",
                    "VARCHAR",
                    "spec.type: ClusterIP, NodePort, LoadBalancer or ExternalName.",
                ),
                c("cluster_ip", "VARCHAR", "spec.clusterIP."),
                c("external_ips", "JSON", "spec.externalIPs as a JSON array."),
                c(
                    "load_balancer_ingress",
                    "JSON",
                    "status.loadBalancer.ingress as JSON (ip, hostname).",
                ),
                c(
                    "ports",
                    "JSON",
                    "spec.ports as JSON (name, port, targetPort, protocol, nodePort).",
                ),
                c("selector", "JSON", "spec.selector as a JSON object."),
            ],
        ),
        inventory(
            "configmaps",
            "ConfigMaps of every context: key names and sizes, not values.",
            true,
            &[
                c(
                    "keys",
                    "JSON",
                    "Names of the keys in data and binaryData, as a JSON array.",
                ),
                c("data_bytes", "BIGINT", "Total size of the values in bytes."),
            ],
        ),
        inventory(
            "secrets",
            "Secrets of every context: type and key names only. Values are never read into the inventory: the kubectl.kubernetes.io/last-applied-configuration annotation, which holds them for a Secret applied with kubectl, reads (hidden).",
            true,
            &[
                c(
                    "type",
                    "VARCHAR",
                    "Secret type, e.g. Opaque or kubernetes.io/tls.",
                ),
                c("keys", "JSON", "Names of the keys, as a JSON array."),
            ],
        ),
        inventory(
            "events",
            "Kubernetes events of every context, kept after the cluster expires them (14 days).",
            true,
            &[
                c("type", "VARCHAR", "Normal or Warning."),
                c(
                    "reason",
                    "VARCHAR",
                    "Short reason, e.g. FailedScheduling, BackOff, Unhealthy.",
                ),
                c("message", "VARCHAR", "Human-readable message."),
                c(
                    "involved_kind",
                    "VARCHAR",
                    "Kind of the object the event is about.",
                ),
                c("involved_namespace", "VARCHAR", "Namespace of that object."),
                c("involved_name", "VARCHAR", "Name of that object."),
                c("involved_uid", "VARCHAR", "uid of that object."),
                c("count", "INTEGER", "How many times it happened."),
                c(
                    "first_seen",
                    "TIMESTAMPTZ",
                    "firstTimestamp (or eventTime).",
                ),
                c("last_seen", "TIMESTAMPTZ", "lastTimestamp (or eventTime)."),
                c(
                    "reporting_component",
                    "VARCHAR",
                    "reportingComponent, else source.component.",
                ),
            ],
        ),
        inventory(
            "ingresses",
            "Ingresses of every context.",
            true,
            &[
                c("class", "VARCHAR", "spec.ingressClassName."),
                c("hosts", "JSON", "Hosts of the rules, as a JSON array."),
                c(
                    "rules",
                    "JSON",
                    "spec.rules as JSON (host, paths, backends).",
                ),
                c(
                    "tls_hosts",
                    "JSON",
                    "Hosts covered by spec.tls, as a JSON array.",
                ),
                c(
                    "load_balancer_ingress",
                    "JSON",
                    "status.loadBalancer.ingress as JSON.",
                ),
            ],
        ),
        inventory(
            "networkpolicies",
            "NetworkPolicies of every context.",
            true,
            &[
                c("pod_selector", "JSON", "spec.podSelector as JSON."),
                c(
                    "policy_types",
                    "JSON",
                    "spec.policyTypes (Ingress, Egress) as JSON.",
                ),
                c("ingress", "JSON", "spec.ingress rules as JSON."),
                c("egress", "JSON", "spec.egress rules as JSON."),
            ],
        ),
        inventory(
            "persistentvolumes",
            "PersistentVolumes of every context.",
            false,
            &[
                c(
                    "capacity_bytes",
                    "BIGINT",
                    "spec.capacity.storage in bytes.",
                ),
                c("storage_class", "VARCHAR", "spec.storageClassName."),
                c(
                    "reclaim_policy",
                    "VARCHAR",
                    "spec.persistentVolumeReclaimPolicy.",
                ),
                c(
                    "phase",
                    "VARCHAR",
                    "status.phase: Available, Bound, Released, Failed.",
                ),
                c(
                    "claim_namespace",
                    "VARCHAR",
                    "Namespace of the bound claim.",
                ),
                c("claim_name", "VARCHAR", "Name of the bound claim."),
                c("access_modes", "JSON", "spec.accessModes as JSON."),
            ],
        ),
        inventory(
            "persistentvolumeclaims",
            "PersistentVolumeClaims of every context.",
            true,
            &[
                c(
                    "requested_bytes",
                    "BIGINT",
                    "spec.resources.requests.storage in bytes.",
                ),
                c(
                    "capacity_bytes",
                    "BIGINT",
                    "status.capacity.storage in bytes, once bound.",
                ),
                c("storage_class", "VARCHAR", "spec.storageClassName."),
                c(
                    "volume_name",
                    "VARCHAR",
                    "spec.volumeName, the bound PersistentVolume.",
                ),
                c("phase", "VARCHAR", "status.phase: Pending, Bound, Lost."),
                c("access_modes", "JSON", "spec.accessModes as JSON."),
            ],
        ),
        inventory(
            "storageclasses",
            "StorageClasses of every context.",
            false,
            &[
                c("provisioner", "VARCHAR", "provisioner."),
                c("reclaim_policy", "VARCHAR", "reclaimPolicy."),
                c("volume_binding_mode", "VARCHAR", "volumeBindingMode."),
                c("allow_volume_expansion", "BOOLEAN", "allowVolumeExpansion."),
                c("is_default", "BOOLEAN", "Annotated as the default class."),
                c("parameters", "JSON", "parameters as JSON."),
            ],
        ),
        inventory(
            "serviceaccounts",
            "ServiceAccounts of every context.",
            true,
            &[
                c(
                    "secrets",
                    "JSON",
                    "Names of the secrets listed, as a JSON array.",
                ),
                c(
                    "image_pull_secrets",
                    "JSON",
                    "Names of the imagePullSecrets, as a JSON array.",
                ),
                c(
                    "automount_token",
                    "BOOLEAN",
                    "automountServiceAccountToken.",
                ),
            ],
        ),
        inventory(
            "roles",
            "Roles of every context.",
            true,
            &[c(
                "rules",
                "JSON",
                "rules as JSON (apiGroups, resources, verbs).",
            )],
        ),
        inventory(
            "clusterroles",
            "ClusterRoles of every context.",
            false,
            &[
                c(
                    "rules",
                    "JSON",
                    "rules as JSON (apiGroups, resources, verbs).",
                ),
                c("aggregation_rule", "JSON", "aggregationRule as JSON."),
            ],
        ),
        binding("rolebindings", "RoleBindings of every context.", true),
        binding(
            "clusterrolebindings",
            "ClusterRoleBindings of every context.",
            false,
        ),
        inventory(
            "endpoints",
            "Endpoints of every context: the addresses behind each Service.",
            true,
            &[
                c(
                    "ready_addresses",
                    "INTEGER",
                    "Addresses ready to serve, over all subsets.",
                ),
                c("not_ready_addresses", "INTEGER", "Addresses not ready."),
                c("subsets", "JSON", "subsets as JSON (addresses, ports)."),
            ],
        ),
        inventory(
            "horizontalpodautoscalers",
            "HorizontalPodAutoscalers (autoscaling/v2) of every context.",
            true,
            &[
                c("target_kind", "VARCHAR", "scaleTargetRef.kind."),
                c("target_name", "VARCHAR", "scaleTargetRef.name."),
                c("min_replicas", "INTEGER", "spec.minReplicas."),
                c("max_replicas", "INTEGER", "spec.maxReplicas."),
                c("current_replicas", "INTEGER", "status.currentReplicas."),
                c("desired_replicas", "INTEGER", "status.desiredReplicas."),
                c("metrics", "JSON", "spec.metrics as JSON."),
            ],
        ),
        inventory(
            "poddisruptionbudgets",
            "PodDisruptionBudgets of every context.",
            true,
            &[
                c(
                    "min_available",
                    "VARCHAR",
                    "spec.minAvailable (a number or a percentage).",
                ),
                c(
                    "max_unavailable",
                    "VARCHAR",
                    "spec.maxUnavailable (a number or a percentage).",
                ),
                c("current_healthy", "INTEGER", "status.currentHealthy."),
                c("desired_healthy", "INTEGER", "status.desiredHealthy."),
                c(
                    "disruptions_allowed",
                    "INTEGER",
                    "status.disruptionsAllowed; 0 blocks voluntary evictions.",
                ),
                c("expected_pods", "INTEGER", "status.expectedPods."),
            ],
        ),
        Table {
            name: "status",
            description: "View: per context, its state, how far the initial sync got, its object count, how long since the last change, and what is wrong; plus a `kqd` row while kqd has something to say about itself (a database file it had to move aside), until it restarts, and a `mirror` row while the PostgreSQL mirror is on (objects: what it still owes).",
            view: Some(STATUS),
            columns: vec![
                c("context", "VARCHAR", "Kubeconfig context."),
                c(
                    "state",
                    "VARCHAR",
                    "connecting | syncing | ready | error | removed; notice on the kqd row.",
                ),
                c(
                    "synced",
                    "VARCHAR",
                    "Resources listed / resources watched (syncing shows progress).",
                ),
                c("objects", "BIGINT", "Objects stored for the context."),
                c(
                    "last_event",
                    "INTERVAL",
                    "Time since the last change kqd applied.",
                ),
                c(
                    "error",
                    "VARCHAR",
                    "What is wrong: while kqd cannot write its database (disk full: could not write <path>), that; else the connection error, else the kubeconfig file error.",
                ),
            ],
        },
        Table {
            name: "crds",
            description: "View over objects: the CustomResourceDefinitions of every context.",
            view: Some(CRDS),
            columns: vec![
                c("context", "VARCHAR", "Kubeconfig context."),
                c("name", "VARCHAR", "CRD name, plural.group."),
                c("uid", "VARCHAR", "metadata.uid."),
                c("created_at", "TIMESTAMPTZ", "metadata.creationTimestamp."),
                c("api_group", "VARCHAR", "spec.group."),
                c("kind", "VARCHAR", "spec.names.kind."),
                c("plural", "VARCHAR", "spec.names.plural."),
                c("scope", "VARCHAR", "Namespaced or Cluster."),
                c(
                    "versions",
                    "JSON",
                    "Served versions, as a JSON array of names.",
                ),
                c(
                    "established",
                    "BOOLEAN",
                    "The Established condition is True.",
                ),
            ],
        },
        inventory(
            "objects",
            "One row per object of every resource the clusters serve, built-in or custom, as JSON.",
            true,
            &[
                c(
                    "api_group",
                    "VARCHAR",
                    "API group ('' for the core group), e.g. gateway.networking.k8s.io.",
                ),
                c("version", "VARCHAR", "API version, e.g. v1."),
                c("kind", "VARCHAR", "Kind, e.g. HTTPRoute."),
                c("resource", "VARCHAR", "Resource (plural), e.g. httproutes."),
                c(
                    "owner_references",
                    "JSON",
                    "metadata.ownerReferences as JSON.",
                ),
                c(
                    "object",
                    "JSON",
                    "The whole object, without metadata.managedFields; for Secrets, without data and stringData, and with (hidden) as their last-applied-configuration annotation.",
                )
                .compressed("zstd"),
            ],
        ),
        Table {
            name: "changes",
            description: "Every add, modify and delete kqd applied, newest last; kept 7 days.",
            view: None,
            columns: vec![
                c("changed_at", "TIMESTAMPTZ", "When kqd applied the change."),
                c("context", "VARCHAR", "Kubeconfig context."),
                c(
                    "kind",
                    "VARCHAR",
                    "The table the object lives in (pods, deployments…).",
                ),
                c(
                    "namespace",
                    "VARCHAR",
                    "Namespace, NULL for cluster-scoped objects.",
                ),
                c("name", "VARCHAR", "Object name."),
                c("uid", "VARCHAR", "Object uid."),
                c("operation", "VARCHAR", "add | modify | delete."),
                c(
                    "resource_version",
                    "VARCHAR",
                    "resourceVersion after the change (before it, for deletes).",
                ),
                c(
                    "seq",
                    "BIGINT",
                    "Order in which kqd applied the changes: unique and increasing, so a copy (the PostgreSQL mirror) can tell which it has.",
                ),
                c(
                    "diff",
                    "JSON",
                    "For a modify: what changed, as [{path, old, new}] (e.g. spec.template.spec.containers[0].image); heartbeats, resourceVersion, managedFields and pod status left out, long values cut, Secret and ConfigMap values never shown. NULL for adds, deletes, and kinds that only churn (events, leases, endpoints).",
                ),
                c(
                    "spec_changed",
                    "BOOLEAN",
                    "For a modify: metadata.generation moved, or a field outside status and metadata changed.",
                ),
            ],
        },
        Table {
            name: "mirror",
            description: "The PostgreSQL mirror, when postgres_url is set: one row saying whether it is connected, how far behind it is, and what went wrong.",
            view: None,
            columns: vec![
                c(
                    "state",
                    "VARCHAR",
                    "connecting | verifying | streaming | error | refused (another kqd mirrors as this instance, or the database's schema is newer). Retries keep error or refused until they connect.",
                ),
                c("target", "VARCHAR", "The database, as its URL without the password."),
                c("schema", "VARCHAR", "The PostgreSQL schema the mirror writes."),
                c("instance", "VARCHAR", "This kqd's instance id: every row it mirrors carries it."),
                c("connected", "BOOLEAN", "A connection to PostgreSQL is open."),
                c(
                    "lag_seconds",
                    "DOUBLE",
                    "Age of the oldest change PostgreSQL does not have yet; 0 when it has everything.",
                ),
                c(
                    "outbox",
                    "BIGINT",
                    "Objects, incidents and tables whose rows PostgreSQL does not have yet (one entry each, however often they changed).",
                ),
                c("rows_mirrored", "BIGINT", "Rows written to PostgreSQL since kqd started."),
                c("rows_per_s", "DOUBLE", "Rows written per second over the last commits."),
                c("last_commit_at", "TIMESTAMPTZ", "When the last PostgreSQL transaction committed."),
                c(
                    "verified_at",
                    "TIMESTAMPTZ",
                    "When the mirror last compared every table with PostgreSQL, object by object.",
                ),
                c(
                    "mismatched",
                    "BIGINT",
                    "Objects that comparison found different or missing in PostgreSQL (each was then sent again).",
                ),
                c("nul_replaced", "BIGINT", "NUL characters replaced in text and JSON values (PostgreSQL cannot store them)."),
                c("set_aside", "BIGINT", "Rows PostgreSQL refused for a reason retrying cannot fix; see last_error."),
                c("last_error", "VARCHAR", "The last problem, naming the database and the table."),
                c("last_error_at", "TIMESTAMPTZ", "When last_error happened."),
                c("updated_at", "TIMESTAMPTZ", "When this row was written."),
            ],
        },
        Table {
            name: "incidents",
            description: "Problems kqd detected from the watch streams, one row per problem (a crash loop is one row whose occurrences rise); kept after the pod, the event or the daemon is gone.",
            view: None,
            columns: vec![
                c("id", "VARCHAR", "Stable incident id."),
                c("context", "VARCHAR", "Kubeconfig context."),
                c(
                    "cluster_id",
                    "VARCHAR",
                    "The context's cluster_id (kube-system uid).",
                ),
                c(
                    "namespace",
                    "VARCHAR",
                    "Namespace of the object, NULL for nodes.",
                ),
                c(
                    "object_kind",
                    "VARCHAR",
                    "Pod, Job, Node, or the involved object's kind for events.",
                ),
                c("object_name", "VARCHAR", "Name of the object."),
                c("object_uid", "VARCHAR", "uid of the object."),
                c(
                    "controller",
                    "VARCHAR",
                    "Top controller of a pod, as Kind/name (Deployment/web).",
                ),
                c(
                    "container",
                    "VARCHAR",
                    "Container name, for container incidents.",
                ),
                c(
                    "node",
                    "VARCHAR",
                    "Node the pod ran on, or the node itself.",
                ),
                c("type", "VARCHAR", INCIDENT_TYPE_DOC),
                c("severity", "VARCHAR", "critical | high | medium | low."),
                c(
                    "reason",
                    "VARCHAR",
                    "Kubernetes reason (OOMKilled, CrashLoopBackOff, BackoffLimitExceeded…).",
                ),
                c(
                    "exit_code",
                    "INTEGER",
                    "Exit code of the termination, for container exits.",
                ),
                c(
                    "signal",
                    "VARCHAR",
                    "Signal name for exit codes above 128 (SIGKILL, SIGSEGV…).",
                ),
                c(
                    "message",
                    "VARCHAR",
                    "Termination or event message, truncated to 1,024 characters.",
                ),
                c(
                    "restart_count",
                    "INTEGER",
                    "The container's restartCount when last seen.",
                ),
                c(
                    "cpu_request_m",
                    "BIGINT",
                    "The container's CPU request in millicores, then.",
                ),
                c(
                    "cpu_limit_m",
                    "BIGINT",
                    "The container's CPU limit in millicores, then.",
                ),
                c(
                    "memory_request_bytes",
                    "BIGINT",
                    "The container's memory request in bytes, then.",
                ),
                c(
                    "memory_limit_bytes",
                    "BIGINT",
                    "The container's memory limit in bytes, then.",
                ),
                c(
                    "first_seen",
                    "TIMESTAMPTZ",
                    "When the problem first happened (the termination time when known).",
                ),
                c("last_seen", "TIMESTAMPTZ", "When it last happened."),
                c(
                    "occurrences",
                    "INTEGER",
                    "How many times it happened (restarts, event count).",
                ),
                c(
                    "resolved_at",
                    "TIMESTAMPTZ",
                    "When it ended: healthy again, deleted or replaced; NULL while open.",
                ),
                c(
                    "problem",
                    "VARCHAR",
                    "The problem within its object (container/web/error, node/Ready, event/FailedMount…): an object has at most one open incident per problem.",
                ),
                c(
                    "last_marker",
                    "VARCHAR",
                    "Identifies the last occurrence (a termination's finishedAt, an event's uid and count), so a relist that shows it again adds nothing.",
                ),
                c(
                    "reported_count",
                    "BIGINT",
                    "The count the object itself reported last (restartCount, event count).",
                ),
                c(
                    "last_log",
                    "VARCHAR",
                    "For a container exit: the last lines the exited container logged, fetched once per occurrence (crash_logs settings), with lines that look like credentials masked. NULL until fetched, when fetching is off, forbidden or failed.",
                ),
            ],
        },
        Table {
            name: "resources",
            description: "Sync state of every resource kqd watches, per context: counts, last change, and why one is skipped (RBAC).",
            view: None,
            columns: vec![
                c("context", "VARCHAR", "Kubeconfig context."),
                c("api_group", "VARCHAR", "API group ('' for core)."),
                c("resource", "VARCHAR", "Resource (plural)."),
                c(
                    "state",
                    "VARCHAR",
                    "syncing | ready | forbidden (skipped, retried every 10 minutes).",
                ),
                c(
                    "error",
                    "VARCHAR",
                    "Why the resource is skipped, as the API server said it.",
                ),
                c(
                    "object_count",
                    "BIGINT",
                    "Objects of this resource in `objects`.",
                ),
                c(
                    "last_event_at",
                    "TIMESTAMPTZ",
                    "When a change of this resource was last applied.",
                ),
                c(
                    "synced_at",
                    "TIMESTAMPTZ",
                    "When its last full list completed.",
                ),
            ],
        },
        Table {
            name: "incident_changes",
            description: "View: for each incident, the changes in its context in the 30 minutes before it began (first_seen) to what it depends on: its workload's own spec first, then the pod's owner, the object itself, the ConfigMaps and Secrets its pod references, its node and its namespace's NetworkPolicies. `kq why <id>` lists them, closest first; modifies that changed nothing recorded are left out.",
            view: Some(INCIDENT_CHANGES),
            columns: vec![
                c("incident_id", "VARCHAR", "The incident (incidents.id)."),
                c(
                    "rank",
                    "INTEGER",
                    "How close the changed object is: 1 the workload (Deployment, StatefulSet, DaemonSet, CronJob…), 2 the pod's owner (ReplicaSet, Job), 3 the object itself, 4 a ConfigMap or Secret it references, 5 its node, 6 a NetworkPolicy of its namespace.",
                ),
                c("relation", "VARCHAR", "controller | owner | object | config | node | network policy."),
                c("changed_at", "TIMESTAMPTZ", "When kqd applied the change."),
                c("seconds_before", "DOUBLE", "How long before the incident began."),
                c("context", "VARCHAR", "Kubeconfig context."),
                c("kind", "VARCHAR", "The changed object's table (deployments, configmaps…)."),
                c("namespace", "VARCHAR", "Its namespace."),
                c("name", "VARCHAR", "Its name."),
                c("operation", "VARCHAR", "add | modify | delete."),
                c("diff", "JSON", "What the modify changed (changes.diff)."),
                c("spec_changed", "BOOLEAN", "The modify changed the spec (changes.spec_changed)."),
            ],
        },
        Table {
            name: "pod_controllers",
            description: "View: each pod's direct owner and its top controller (Pod→ReplicaSet→Deployment, Pod→Job→CronJob, StatefulSet, DaemonSet, Node for static pods).",
            view: Some(POD_CONTROLLERS),
            columns: vec![
                c("context", "VARCHAR", "Kubeconfig context."),
                c("namespace", "VARCHAR", "Pod namespace."),
                c("pod", "VARCHAR", "Pod name."),
                c("pod_uid", "VARCHAR", "Pod uid."),
                c(
                    "owner_kind",
                    "VARCHAR",
                    "Kind of the pod's controlling owner.",
                ),
                c(
                    "owner_name",
                    "VARCHAR",
                    "Name of the pod's controlling owner.",
                ),
                c(
                    "top_kind",
                    "VARCHAR",
                    "Kind at the top of the owner chain: Deployment, CronJob, StatefulSet, DaemonSet, Job, Node…",
                ),
                c("top_name", "VARCHAR", "Name at the top of the owner chain."),
            ],
        },
    ]
});

/// The `incident_changes` view: for each incident, the changes in its context within
/// [`INCIDENT_WINDOW`] before it began, to the objects it depends on, ranked by how close
/// they are. `kq why` runs it with another window by replacing that text.
const INCIDENT_CHANGES: &str = "WITH i AS (
  SELECT id, context, namespace, object_kind, object_name, object_uid, node, first_seen,
         nullif(split_part(controller, '/', 1), '') AS top_kind,
         nullif(split_part(controller, '/', 2), '') AS top_name
  FROM incidents
),
pod AS (
  SELECT i.id, p.owner_kind, p.owner_name, o.object
  FROM i JOIN pods p ON p.context = i.context AND p.uid = i.object_uid
  LEFT JOIN objects o ON o.context = p.context AND o.uid = p.uid
),
refs AS (
  SELECT id, kind, unnest(names) AS name FROM (
    SELECT id, 'configmaps' AS kind, list_distinct(flatten([
      json_extract_string(object, '$.spec.volumes[*].configMap.name'),
      json_extract_string(object, '$.spec.containers[*].envFrom[*].configMapRef.name'),
      json_extract_string(object, '$.spec.containers[*].env[*].valueFrom.configMapKeyRef.name')])) AS names
    FROM pod
    UNION ALL
    SELECT id, 'secrets', list_distinct(flatten([
      json_extract_string(object, '$.spec.volumes[*].secret.secretName'),
      json_extract_string(object, '$.spec.containers[*].envFrom[*].secretRef.name'),
      json_extract_string(object, '$.spec.containers[*].env[*].valueFrom.secretKeyRef.name')]))
    FROM pod)
),
related AS (
  SELECT id, 1 AS rank, 'controller' AS relation, lower(top_kind) || 's' AS kind, namespace, top_name AS name
  FROM i WHERE top_kind IS NOT NULL AND top_kind <> 'Node'
  UNION ALL
  SELECT pod.id, 2, 'owner', lower(pod.owner_kind) || 's', i.namespace, pod.owner_name
  FROM pod JOIN i USING (id)
  WHERE pod.owner_kind IS NOT NULL AND pod.owner_name IS DISTINCT FROM i.top_name
  UNION ALL
  SELECT id, 3, 'object', lower(object_kind) || 's', namespace, object_name FROM i
  UNION ALL
  SELECT refs.id, 4, 'config', refs.kind, i.namespace, refs.name FROM refs JOIN i USING (id)
  UNION ALL
  SELECT id, 5, 'node', 'nodes', NULL, node FROM i WHERE node IS NOT NULL
  UNION ALL
  SELECT id, 6, 'network policy', 'networkpolicies', namespace, NULL FROM i WHERE namespace IS NOT NULL
)
SELECT r.id AS incident_id, r.rank, r.relation, c.changed_at,
       epoch(i.first_seen::TIMESTAMP) - epoch(c.changed_at::TIMESTAMP) AS seconds_before,
       c.context, c.kind, c.namespace, c.name, c.operation, c.diff, c.spec_changed
FROM related r
JOIN i ON i.id = r.id
JOIN changes c ON c.context = i.context AND c.kind = r.kind
  AND c.namespace IS NOT DISTINCT FROM r.namespace AND (r.name IS NULL OR c.name = r.name)
-- first_seen comes from the kubelet's timestamps, which have whole seconds: a change up
-- to a second after it may still have come first.
WHERE c.changed_at::TIMESTAMP < i.first_seen::TIMESTAMP + INTERVAL 1 SECOND
  AND c.changed_at::TIMESTAMP >= i.first_seen::TIMESTAMP - INTERVAL 30 MINUTE
  AND (c.operation <> 'modify' OR c.diff IS NULL OR c.diff::VARCHAR <> '[]')";

/// The window `incident_changes` looks back over, as its SQL spells it.
pub const INCIDENT_WINDOW: &str = "INTERVAL 30 MINUTE";

/// The `incident_changes` query with another look-back window (`INTERVAL 2 HOUR`…).
pub fn incident_changes_sql(window: &str) -> String {
    INCIDENT_CHANGES.replace(INCIDENT_WINDOW, window)
}

/// The `status` view: `contexts` joined with per-resource sync progress.
const STATUS: &str = "SELECT c.name AS context, c.state,
       coalesce(r.listed, 0) || '/' || coalesce(r.total, 0) AS synced,
       c.object_count AS objects,
       CASE WHEN c.last_event_at IS NULL THEN NULL
            WHEN age < 60 THEN age || 's'
            WHEN age < 3600 THEN age // 60 || 'm' || age % 60 || 's'
            WHEN age < 86400 THEN age // 3600 || 'h' || age % 3600 // 60 || 'm'
            ELSE age // 86400 || 'd' || age % 86400 // 3600 || 'h' END AS last_event,
       coalesce(getvariable('kq_write_error')::VARCHAR, c.error, c.config_error) AS error
FROM (SELECT *, floor(epoch(now()::TIMESTAMP) - epoch(last_event_at::TIMESTAMP))::BIGINT AS age
      FROM contexts) c
LEFT JOIN (SELECT context, count(*) FILTER (WHERE state IN ('ready', 'forbidden')) AS listed, count(*) AS total
           FROM resources GROUP BY context) r ON r.context = c.name
UNION ALL
SELECT 'kqd', 'notice', NULL, NULL, NULL, getvariable('kq_notice')::VARCHAR
WHERE getvariable('kq_notice')::VARCHAR IS NOT NULL
UNION ALL
SELECT 'mirror', state, NULL, outbox, NULL, last_error FROM mirror";

/// CRDs come through `objects` (discovery watches them to notice new ones); this names their
/// fields.
const CONTAINER_IMAGES: &str = "SELECT c.context, c.namespace, c.pod, c.name AS container, c.kind, c.image_ref,
    i.image, i.name AS image_name, i.size_bytes, i.source, i.error
  FROM containers c LEFT JOIN image_refs r ON r.ref = c.image_ref LEFT JOIN images i ON i.image = r.image";

const CRDS: &str = "SELECT context, name, uid, created_at,
       object->'spec'->>'group' AS api_group,
       object->'spec'->'names'->>'kind' AS kind,
       object->'spec'->'names'->>'plural' AS plural,
       object->'spec'->>'scope' AS scope,
       to_json(json_extract_string(object, '$.spec.versions[*].name')) AS versions,
       len(list_filter(json_extract(object, '$.status.conditions[*]'), lambda c: c->>'type' = 'Established' AND c->>'status' = 'True')) > 0 AS established
FROM objects WHERE api_group = 'apiextensions.k8s.io' AND resource = 'customresourcedefinitions'";

/// Follows owner references through ReplicaSets and Jobs, by uid.
const POD_CONTROLLERS: &str = "SELECT p.context, p.namespace, p.name AS pod, p.uid AS pod_uid, p.owner_kind, p.owner_name,
       coalesce(rs.owner_kind, j.owner_kind, p.owner_kind) AS top_kind,
       coalesce(rs.owner_name, j.owner_name, p.owner_name) AS top_name
FROM pods p
LEFT JOIN replicasets rs ON p.owner_kind = 'ReplicaSet' AND rs.context = p.context AND rs.uid = p.owner_uid
LEFT JOIN jobs j ON p.owner_kind = 'Job' AND j.context = p.context AND j.uid = p.owner_uid";

/// The `type` column's documentation: every type name, its default severity and meaning.
static INCIDENT_TYPE_DOC: &str = "What happened; one of the stable names below (default severity in brackets): graceful [low], error, misuse, exited [medium], runtime_error, not_executable, command_not_found [high], invalid_exit_argument [medium], interrupted [low], killed, oom_killed [high], terminated, signal [medium], crash_loop, image_pull, invalid_image, config_error, create_error, evicted, pod_failed [high], pending [medium], job_failed [high], node_not_ready [critical], memory_pressure, disk_pressure, pid_pressure [high], failed_scheduling, failed_mount [medium], back_off [low], probe_failed, failed_create [medium], warning [low].";

/// The columns both kinds of role binding share.
fn binding(name: &'static str, description: &'static str, namespaced: bool) -> Table {
    inventory(
        name,
        description,
        namespaced,
        &[
            c("role_kind", "VARCHAR", "roleRef.kind: Role or ClusterRole."),
            c("role_name", "VARCHAR", "roleRef.name."),
            c(
                "subjects",
                "JSON",
                "subjects as JSON (kind, name, namespace).",
            ),
        ],
    )
}

/// The columns the four replica-managing workloads share.
fn workload(name: &'static str, description: &'static str) -> Table {
    inventory(
        name,
        description,
        true,
        &[
            c(
                "owner_kind",
                "VARCHAR",
                "Kind of the controlling owner, if any (a ReplicaSet's Deployment).",
            ),
            c("owner_name", "VARCHAR", "Name of the controlling owner."),
            c(
                "desired",
                "INTEGER",
                "Desired replicas (spec.replicas; desiredNumberScheduled for DaemonSets).",
            ),
            c(
                "current",
                "INTEGER",
                "Existing replicas (status.replicas; currentNumberScheduled).",
            ),
            c("ready", "INTEGER", "Ready replicas."),
            c("available", "INTEGER", "Available replicas."),
            c(
                "updated",
                "INTEGER",
                "Replicas at the current template (updatedReplicas; updatedNumberScheduled).",
            ),
            c(
                "strategy",
                "VARCHAR",
                "Update strategy type (RollingUpdate, Recreate, OnDelete).",
            ),
            c("selector", "JSON", "spec.selector as JSON."),
            c("generation", "BIGINT", "metadata.generation."),
            c(
                "observed_generation",
                "BIGINT",
                "status.observedGeneration; lower than generation while a change rolls out.",
            ),
        ],
    )
}
