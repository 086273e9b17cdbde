//! The generator: populates a cluster with realistic objects (nodes with image lists,
//! namespaces, Deployment→ReplicaSet→Pod and Job→Pod chains, services, config) whose
//! size in bytes is close to what a real cluster serves.

use serde_json::{Value, json};

use crate::status::ApiError;
use crate::store::{Store, now_rfc3339};

/// How much to generate in one cluster.
#[derive(Debug, Clone)]
pub struct GenSpec {
    pub nodes: usize,
    pub namespaces: usize,
    pub pods: usize,
    /// Varies names and choices between clusters of one fleet.
    pub seed: u64,
}

impl Default for GenSpec {
    fn default() -> Self {
        GenSpec {
            nodes: 3,
            namespaces: 4,
            pods: 40,
            seed: 1,
        }
    }
}

/// An image the generator uses, with the size nodes report for it.
pub struct Image {
    pub reference: &'static str,
    pub size_bytes: u64,
}

/// The images generated pods run; node status lists them with these sizes.
pub const IMAGES: &[Image] = &[
    Image {
        reference: "docker.io/library/nginx:1.27.2",
        size_bytes: 72_099_410,
    },
    Image {
        reference: "docker.io/library/redis:7.4.1",
        size_bytes: 45_233_120,
    },
    Image {
        reference: "docker.io/library/postgres:16.4",
        size_bytes: 158_341_882,
    },
    Image {
        reference: "ghcr.io/acme/api:v2.14.0",
        size_bytes: 88_410_223,
    },
    Image {
        reference: "ghcr.io/acme/worker:v2.14.0",
        size_bytes: 121_004_551,
    },
    Image {
        reference: "quay.io/prometheus/node-exporter:v1.8.2",
        size_bytes: 11_893_220,
    },
    Image {
        reference: "registry.k8s.io/ingress-nginx/controller:v1.11.2",
        size_bytes: 105_532_014,
    },
    Image {
        reference: "docker.io/bitnami/kafka:3.8.0",
        size_bytes: 312_778_003,
    },
    Image {
        reference: "docker.io/library/busybox:1.36.1",
        size_bytes: 2_155_104,
    },
];

const NAMESPACE_NAMES: &[&str] = &[
    "payments",
    "checkout",
    "search",
    "web",
    "api",
    "data",
    "monitoring",
    "ingress",
    "auth",
    "billing",
    "catalog",
    "orders",
];
const APP_NAMES: &[&str] = &[
    "frontend",
    "backend",
    "cart",
    "ledger",
    "indexer",
    "gateway",
    "scheduler",
    "mailer",
    "cache",
    "reporter",
    "sync",
    "notifier",
];

/// A small deterministic generator, so runs are reproducible without a rand dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn hex(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len);
        while s.len() < len {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(len);
        s
    }
}

/// The fake digest a generated image carries, stable per reference.
pub fn image_digest(reference: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in reference.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    let mut r = Rng(h | 1);
    format!("sha256:{}", r.hex(64))
}

fn repo_of(reference: &str) -> &str {
    reference.rsplit_once(':').map_or(reference, |(r, _)| r)
}

fn create(
    store: &Store,
    api_version: &str,
    kind: &str,
    ns: &str,
    obj: Value,
) -> Result<Value, ApiError> {
    let rt = store
        .resolve_kind(api_version, kind)
        .ok_or_else(|| ApiError::new(404, "NotFound", format!("no kind {kind}")))?;
    Ok(store.create(&rt, ns, obj)?.value())
}

fn owner(obj: &Value, controller: bool) -> Value {
    json!([{
        "apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"], "controller": controller, "blockOwnerDeletion": true,
    }])
}

/// Populates `store` as `spec` says. Returns the number of pods created.
pub fn populate(store: &Store, spec: &GenSpec) -> Result<usize, ApiError> {
    let mut rng = Rng(spec.seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    for ns in ["default", "kube-system", "kube-public"] {
        ensure_namespace(store, ns)?;
    }
    create(
        store,
        "v1",
        "Namespace",
        "",
        json!({"metadata": {"name": "kube-node-lease"}}),
    )?;
    let nodes: Vec<String> = (0..spec.nodes)
        .map(|i| format!("node-{:03}", i + 1))
        .collect();
    for (i, n) in nodes.iter().enumerate() {
        create(store, "v1", "Node", "", node(n, i, &mut rng))?;
    }
    let namespaces: Vec<String> = (0..spec.namespaces.max(1))
        .map(|i| {
            let base = NAMESPACE_NAMES[i % NAMESPACE_NAMES.len()];
            if i < NAMESPACE_NAMES.len() {
                base.to_string()
            } else {
                format!("{base}-{}", i / NAMESPACE_NAMES.len())
            }
        })
        .collect();
    for ns in &namespaces {
        create(
            store,
            "v1",
            "Namespace",
            "",
            json!({"metadata": {"name": ns, "labels": {"team": ns}}}),
        )?;
        create(
            store,
            "v1",
            "ServiceAccount",
            ns,
            json!({"metadata": {"name": "default"}}),
        )?;
        create(
            store,
            "v1",
            "ConfigMap",
            ns,
            json!({"metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\nMIIC...\n-----END CERTIFICATE-----\n"}}),
        )?;
    }
    let mut made = 0usize;
    let mut w = 0usize;
    while made < spec.pods {
        let ns = &namespaces[w % namespaces.len()];
        let app = format!("{}-{}", APP_NAMES[rng.below(APP_NAMES.len())], w);
        let left = spec.pods - made;
        let image = &IMAGES[rng.below(IMAGES.len())];
        let node_of = |rng: &mut Rng| {
            if nodes.is_empty() {
                String::new()
            } else {
                nodes[rng.below(nodes.len())].clone()
            }
        };
        match w % 10 {
            0 => {
                made += job(store, ns, &app, image, node_of(&mut rng), &mut rng)?;
            }
            1 => {
                let replicas = (1 + rng.below(3)).min(left);
                let sts = create(
                    store,
                    "apps/v1",
                    "StatefulSet",
                    ns,
                    workload("StatefulSet", &app, replicas, image),
                )?;
                for i in 0..replicas {
                    let name = format!("{app}-{i}");
                    create(
                        store,
                        "v1",
                        "Pod",
                        ns,
                        pod(
                            ns,
                            &name,
                            &app,
                            &owner(&sts, true),
                            &node_of(&mut rng),
                            image,
                            &mut rng,
                        ),
                    )?;
                }
                made += replicas;
            }
            _ => {
                let replicas = (1 + rng.below(5)).min(left);
                let dep = create(
                    store,
                    "apps/v1",
                    "Deployment",
                    ns,
                    workload("Deployment", &app, replicas, image),
                )?;
                let hash = rng
                    .hex(10)
                    .replace(|c: char| c.is_ascii_digit() && c < '2', "b");
                let mut rs_obj = workload("ReplicaSet", &format!("{app}-{hash}"), replicas, image);
                rs_obj["metadata"]["ownerReferences"] = owner(&dep, true);
                rs_obj["metadata"]["labels"]["pod-template-hash"] = json!(hash);
                let rs = create(store, "apps/v1", "ReplicaSet", ns, rs_obj)?;
                for _ in 0..replicas {
                    // Random suffixes can collide, as they can for the ReplicaSet controller,
                    // which then tries another one.
                    loop {
                        let name = format!("{app}-{hash}-{}", rng.hex(5));
                        let mut p = pod(
                            ns,
                            &name,
                            &app,
                            &owner(&rs, true),
                            &node_of(&mut rng),
                            image,
                            &mut rng,
                        );
                        p["metadata"]["labels"]["pod-template-hash"] = json!(hash);
                        match create(store, "v1", "Pod", ns, p) {
                            Err(e) if e.code == 409 => continue,
                            other => break other,
                        }
                    }
                    .and_then(|p| scheduled_event(store, &p))?;
                }
                made += replicas;
                create(store, "v1", "Service", ns, service(&app, &mut rng))?;
            }
        }
        w += 1;
    }
    Ok(made)
}

/// The Normal event the scheduler records for a pod, as every real cluster keeps (for an
/// hour) for each pod it placed.
fn scheduled_event(store: &Store, pod: &Value) -> Result<(), ApiError> {
    let md = &pod["metadata"];
    let (ns, name) = (
        md["namespace"].as_str().unwrap_or_default(),
        md["name"].as_str().unwrap_or_default(),
    );
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    let now = now_rfc3339();
    let ev = json!({
        "metadata": {"name": format!("{name}.{:x}", name.len() * 7919), "namespace": ns},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": name, "uid": md["uid"], "apiVersion": "v1"},
        "reason": "Scheduled", "message": format!("Successfully assigned {ns}/{name} to {node}"), "type": "Normal",
        "count": 1, "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": "default-scheduler"}, "reportingComponent": "default-scheduler",
    });
    create(store, "v1", "Event", ns, ev).map(|_| ())
}

/// Creates a namespace unless it exists.
pub fn ensure_namespace(store: &Store, name: &str) -> Result<(), ApiError> {
    match create(
        store,
        "v1",
        "Namespace",
        "",
        json!({"metadata": {"name": name}}),
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

fn node(name: &str, i: usize, rng: &mut Rng) -> Value {
    let images: Vec<Value> = IMAGES
        .iter()
        // The first node holds every image, so each generated image has a node-reported size.
        .filter(|_| rng.below(4) != 0 || i == 0)
        .map(|im| json!({"names": [format!("{}@{}", repo_of(im.reference), image_digest(im.reference)), im.reference], "sizeBytes": im.size_bytes}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "m6i.xlarge", "topology.kubernetes.io/zone": format!("eu-west-1{}", ["a", "b", "c"][i % 3]),
        }},
        "spec": {"podCIDR": format!("10.244.{i}.0/24"), "providerID": format!("aws:///eu-west-1a/i-{}", rng.hex(17))},
        "status": {
            "capacity": {"cpu": "4", "memory": "16069104Ki", "pods": "110", "ephemeral-storage": "101430960Ki"},
            "allocatable": {"cpu": "3920m", "memory": "15045104Ki", "pods": "110", "ephemeral-storage": "93478772582"},
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID"),
                cond("Ready", "True", "KubeletReady"),
            ],
            "addresses": [{"type": "InternalIP", "address": format!("10.0.{}.{}", i / 250, i % 250 + 2)}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "osImage": "Ubuntu 24.04.1 LTS", "kernelVersion": "6.8.0-1015-aws",
                "containerRuntimeVersion": "containerd://1.7.22", "kubeletVersion": "v1.33.0", "kubeProxyVersion": "v1.33.0",
                "machineID": rng.hex(32), "systemUUID": rng.hex(32), "bootID": rng.hex(32)},
            "images": images,
        }
    })
}

/// A node or pod condition as the kubelet reports it.
pub fn cond(t: &str, status: &str, reason: &str) -> Value {
    let now = now_rfc3339();
    json!({"type": t, "status": status, "reason": reason, "lastHeartbeatTime": now, "lastTransitionTime": now, "message": format!("{t} is {status}")})
}

fn template(app: &str, image: &Image) -> Value {
    json!({
        "metadata": {"labels": {"app.kubernetes.io/name": app}},
        "spec": {"containers": [container(app, image.reference)]}
    })
}

fn workload(kind: &str, name: &str, replicas: usize, image: &Image) -> Value {
    let app = name.to_string();
    let mut w = json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": app}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app.kubernetes.io/name": app}}, "template": template(&app, image)},
        "status": {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas, "updatedReplicas": replicas, "observedGeneration": 1},
    });
    if kind == "Deployment" {
        w["spec"]["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}});
    }
    if kind == "StatefulSet" {
        w["spec"]["serviceName"] = json!(name);
    }
    w
}

fn container(name: &str, image: &str) -> Value {
    json!({
        "name": name.split('-').next().unwrap_or(name),
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}, {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
        "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"}, "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"}, "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
        "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    })
}

fn pod(
    ns: &str,
    name: &str,
    app: &str,
    owners: &Value,
    node: &str,
    image: &Image,
    rng: &mut Rng,
) -> Value {
    let now = now_rfc3339();
    let main = container(app, image.reference);
    let cname = main["name"].clone();
    let with_init = rng.below(3) == 0;
    let mut spec = json!({
        "containers": [main],
        "nodeName": node,
        "serviceAccountName": "default",
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "schedulerName": "default-scheduler",
        "securityContext": {"runAsNonRoot": true, "fsGroup": 2000},
        "priority": 0,
        "enableServiceLinks": true,
        "preemptionPolicy": "PreemptLowerPriority",
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        ],
        "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}}],
    });
    let digest_ref = format!(
        "{}@{}",
        repo_of(image.reference),
        image_digest(image.reference)
    );
    let mut status = json!({
        "phase": "Running",
        "conditions": [cond("PodReadyToStartContainers", "True", ""), cond("Initialized", "True", ""), cond("Ready", "True", ""), cond("ContainersReady", "True", ""), cond("PodScheduled", "True", "")],
        "hostIP": format!("10.0.0.{}", rng.below(250) + 2),
        "podIP": format!("10.244.{}.{}", rng.below(250), rng.below(250) + 2),
        "startTime": now,
        "qosClass": "Burstable",
        "containerStatuses": [{
            "name": cname, "image": image.reference, "imageID": digest_ref,
            "containerID": format!("containerd://{}", rng.hex(64)),
            "ready": true, "started": true, "restartCount": 0,
            "state": {"running": {"startedAt": now}}, "lastState": {},
        }],
    });
    if with_init {
        let busybox = "docker.io/library/busybox:1.36.1";
        spec["initContainers"] = json!([{
            "name": "init-config", "image": busybox, "command": ["sh", "-c", "cp /config/* /work/"],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
        }]);
        status["initContainerStatuses"] = json!([{
            "name": "init-config", "image": busybox, "imageID": format!("{}@{}", repo_of(busybox), image_digest(busybox)),
            "containerID": format!("containerd://{}", rng.hex(64)), "ready": true, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}, "lastState": {},
        }]);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns,
            "labels": {"app.kubernetes.io/name": app},
            "annotations": {"kubectl.kubernetes.io/restartedAt": now, "prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
            "ownerReferences": owners,
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": now, "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app.kubernetes.io/name": {}}, "f:ownerReferences": {}}, "f:spec": {"f:containers": {}}}}],
        },
        "spec": spec,
        "status": status,
    })
}

fn job(
    store: &Store,
    ns: &str,
    app: &str,
    image: &Image,
    node: String,
    rng: &mut Rng,
) -> Result<usize, ApiError> {
    let mut j = workload("Job", app, 1, image);
    j["spec"] = json!({"completions": 1, "parallelism": 1, "backoffLimit": 6, "template": template(app, image)});
    j["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
    j["status"] = json!({"active": 1, "startTime": now_rfc3339()});
    let job = create(store, "batch/v1", "Job", ns, j)?;
    let mut p = pod(
        ns,
        &format!("{app}-{}", rng.hex(5)),
        app,
        &owner(&job, true),
        &node,
        image,
        rng,
    );
    p["spec"]["restartPolicy"] = json!("Never");
    p["metadata"]["labels"]["job-name"] = json!(app);
    create(store, "v1", "Pod", ns, p)?;
    Ok(1)
}

fn service(app: &str, rng: &mut Rng) -> Value {
    json!({
        "metadata": {"name": app, "labels": {"app.kubernetes.io/name": app}},
        "spec": {"type": "ClusterIP", "clusterIP": format!("10.96.{}.{}", rng.below(250), rng.below(250) + 1),
            "selector": {"app.kubernetes.io/name": app},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
        "status": {"loadBalancer": {}},
    })
}
