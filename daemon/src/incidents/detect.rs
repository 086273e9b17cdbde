//! Reads the problems an object shows now: container exits and waits, evictions, failed and
//! stuck pods, failed jobs, node conditions and Warning events. Stateless: the store decides
//! what is new.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ContainerStateTerminated, ContainerStatus, Event, Node, Pod, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::classify;
use super::{Grace, Observed, Resources, Signal, Subject};
use crate::quantity;

/// Longest message kept, in characters.
const MESSAGE_MAX: usize = 1024;

fn micros(t: &Option<Time>) -> Option<i64> {
    t.as_ref().map(|t| t.0.as_microsecond())
}

fn stamp(t: &Option<Time>) -> Option<String> {
    t.as_ref().map(|t| t.0.to_string())
}

/// Cuts a message at a character boundary, marking the cut.
pub fn truncate(m: &str) -> String {
    match m.char_indices().nth(MESSAGE_MAX) {
        Some((at, _)) => format!("{}…", &m[..at]),
        None => m.to_string(),
    }
}

fn subject(kind: &str, meta: &ObjectMeta, node: Option<String>) -> Subject {
    Subject {
        kind: kind.to_string(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        node,
    }
}

fn signal(key: String, typ: &'static str, severity: &'static str) -> Signal {
    Signal {
        key,
        container: None,
        typ,
        severity,
        reason: None,
        exit_code: None,
        signal: None,
        message: None,
        restart_count: None,
        resources: Resources::default(),
        marker: None,
        count: 1,
        at: None,
        grace: Grace::None,
    }
}

fn resources(r: Option<&ResourceRequirements>) -> Resources {
    let get = |limits: bool, name: &str, parse: fn(&str) -> Option<i64>| {
        let map = if limits {
            r.and_then(|r| r.limits.as_ref())
        } else {
            r.and_then(|r| r.requests.as_ref())
        };
        map.and_then(|m| m.get(name)).and_then(|q| parse(&q.0))
    };
    Resources {
        cpu_request_m: get(false, "cpu", quantity::cpu_millis),
        cpu_limit_m: get(true, "cpu", quantity::cpu_millis),
        memory_request_bytes: get(false, "memory", quantity::bytes),
        memory_limit_bytes: get(true, "memory", quantity::bytes),
    }
}

/// A container termination as a signal, classified by the exit-code table.
fn exit_signal(cs: &ContainerStatus, t: &ContainerStateTerminated, res: Resources) -> Signal {
    let oom = classify::is_oom(
        t.reason.as_deref(),
        t.message.as_deref(),
        res.memory_limit_bytes,
    );
    let (typ, severity, sig) = classify::exit_code(t.exit_code, oom);
    let mut s = signal(format!("container/{}/{typ}", cs.name), typ, severity);
    s.container = Some(cs.name.clone());
    s.reason = t.reason.clone();
    s.exit_code = Some(t.exit_code);
    s.signal = sig;
    s.message = t.message.as_deref().or(t.reason.as_deref()).map(truncate);
    s.restart_count = Some(cs.restart_count);
    s.resources = res;
    // finishedAt has one-second resolution; with the restart count it names one exit.
    s.marker = Some(format!(
        "{}#{}",
        stamp(&t.finished_at).unwrap_or_default(),
        cs.restart_count
    ));
    s.count = i64::from(cs.restart_count.max(1));
    s.at = micros(&t.finished_at);
    s
}

fn waiting_signal(cs: &ContainerStatus, reason: &str, res: Resources) -> Option<Signal> {
    let (typ, severity, grace) = match reason {
        "CrashLoopBackOff" => ("crash_loop", "high", Grace::None),
        "ErrImagePull" | "ImagePullBackOff" => ("image_pull", "high", Grace::ImagePull),
        "InvalidImageName" => ("invalid_image", "high", Grace::None),
        "CreateContainerConfigError" => ("config_error", "high", Grace::None),
        "CreateContainerError" => ("create_error", "high", Grace::None),
        _ => return None,
    };
    let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
    let mut s = signal(format!("container/{}/{typ}", cs.name), typ, severity);
    s.container = Some(cs.name.clone());
    s.reason = Some(reason.to_string());
    s.message = waiting.and_then(|w| w.message.as_deref()).map(truncate);
    s.restart_count = Some(cs.restart_count);
    s.resources = res;
    s.grace = grace;
    Some(s)
}

/// A pod's problems: container exits and waits, eviction, failure, a long Pending.
pub fn pod(p: &Pod) -> Observed {
    let meta = &p.metadata;
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let subject = subject("Pod", meta, spec.and_then(|s| s.node_name.clone()));
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
    let reason = status.and_then(|s| s.reason.as_deref());
    let deleting = meta.deletion_timestamp.is_some();
    let mut signals = Vec::new();
    if phase == "Failed" && reason == Some("Evicted") {
        let mut s = signal("pod/evicted".into(), "evicted", "high");
        s.reason = Some("Evicted".into());
        s.message = status.and_then(|s| s.message.as_deref()).map(truncate);
        s.marker = Some("evicted".into());
        return Observed {
            subject,
            signals: vec![s],
            complete: true,
            healthy_since: None,
        };
    }
    // A container's resources, found by name in the spec without copying it: this runs for
    // every pod event of the initial sync.
    let requirements = |name: &str| -> Option<&ResourceRequirements> {
        let s = spec?;
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .find(|c| c.name == name)
            .and_then(|c| c.resources.as_ref())
            .or_else(|| {
                s.ephemeral_containers
                    .iter()
                    .flatten()
                    .find(|c| c.name == name)
                    .and_then(|c| c.resources.as_ref())
            })
    };
    let lists = [
        status.and_then(|s| s.init_container_statuses.as_ref()),
        status.and_then(|s| s.container_statuses.as_ref()),
        status.and_then(|s| s.ephemeral_container_statuses.as_ref()),
    ];
    for statuses in lists {
        for cs in statuses.into_iter().flatten() {
            let res = resources(requirements(&cs.name));
            let state = cs.state.as_ref();
            let mut exited = false;
            // A restart: the previous run's end is in lastState.
            if let Some(t) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref())
                && cs.restart_count > 0
            {
                signals.push(exit_signal(cs, t, res));
                exited = true;
            }
            // An exit without restart (restartPolicy Never or OnFailure). Exits 0 and 143
            // of a container that is not restarted are normal stops (a finished job, a
            // rolling update's SIGTERM), and so is anything while the pod is being deleted.
            if !exited
                && !deleting
                && let Some(t) = state.and_then(|s| s.terminated.as_ref())
                && t.exit_code != 0
                && t.exit_code != 143
            {
                signals.push(exit_signal(cs, t, res));
                exited = true;
            }
            if let Some(w) = state.and_then(|s| s.waiting.as_ref())
                && let Some(reason) = w.reason.as_deref()
                && !(reason == "CrashLoopBackOff" && exited)
                && let Some(s) = waiting_signal(cs, reason, res)
            {
                signals.push(s);
            }
        }
    }
    if phase == "Failed" && signals.is_empty() && !deleting {
        let mut s = signal("pod/failed".into(), "pod_failed", "high");
        s.reason = reason.map(str::to_string);
        s.message = status.and_then(|s| s.message.as_deref()).map(truncate);
        s.marker = Some("failed".into());
        signals.push(s);
    }
    if phase == "Pending" && !deleting {
        let mut s = signal("pod/pending".into(), "pending", "medium");
        s.reason = reason.map(str::to_string);
        s.message = status.and_then(|s| s.message.as_deref()).map(truncate);
        s.grace = Grace::Pending {
            since: micros(&meta.creation_timestamp).unwrap_or_default(),
        };
        signals.push(s);
    }
    Observed {
        subject,
        signals,
        complete: true,
        healthy_since: healthy_since(phase, status.and_then(|s| s.container_statuses.as_ref())),
    }
}

/// A Running pod whose containers all run and are ready is healthy since its latest start;
/// a Succeeded pod is healthy.
fn healthy_since(phase: &str, statuses: Option<&Vec<ContainerStatus>>) -> Option<i64> {
    match phase {
        "Succeeded" => Some(0),
        "Running" => {
            let mut since = 0;
            for cs in statuses.into_iter().flatten() {
                let running = cs.state.as_ref().and_then(|s| s.running.as_ref())?;
                if !cs.ready {
                    return None;
                }
                since = since.max(micros(&running.started_at).unwrap_or_default());
            }
            Some(since)
        }
        _ => None,
    }
}

/// Fills a signal from a condition: its reason and message, and its transition time as
/// the occurrence (a condition that flips again is a new one).
fn from_condition(
    s: &mut Signal,
    reason: &Option<String>,
    message: &Option<String>,
    transition: &Option<Time>,
    status: &str,
) {
    s.reason = reason.clone();
    s.message = message.as_deref().map(truncate);
    s.marker = stamp(transition).or_else(|| Some(status.to_string()));
    s.at = micros(transition);
}

/// A Job's Failed condition.
pub fn job(j: &Job) -> Observed {
    let mut signals = Vec::new();
    let failed = j
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "Failed" && c.status == "True")
        });
    if let Some(c) = failed {
        let mut s = signal("job/failed".into(), "job_failed", "high");
        from_condition(
            &mut s,
            &c.reason,
            &c.message,
            &c.last_transition_time,
            &c.status,
        );
        signals.push(s);
    }
    Observed {
        subject: subject("Job", &j.metadata, None),
        signals,
        complete: true,
        healthy_since: None,
    }
}

/// A node's Ready condition when not True, and its pressure conditions when True.
pub fn node(n: &Node) -> Observed {
    let mut signals = Vec::new();
    let name = n.metadata.name.clone();
    for c in n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        let (typ, severity) = match (c.type_.as_str(), c.status.as_str()) {
            ("Ready", "False" | "Unknown") => ("node_not_ready", "critical"),
            ("MemoryPressure", "True") => ("memory_pressure", "high"),
            ("DiskPressure", "True") => ("disk_pressure", "high"),
            ("PIDPressure", "True") => ("pid_pressure", "high"),
            _ => continue,
        };
        let mut s = signal(format!("node/{}", c.type_), typ, severity);
        from_condition(
            &mut s,
            &c.reason,
            &c.message,
            &c.last_transition_time,
            &c.status,
        );
        signals.push(s);
    }
    Observed {
        subject: subject("Node", &n.metadata, name),
        signals,
        complete: true,
        healthy_since: None,
    }
}

/// A Warning event kq watches for, as a signal about the object it involves.
pub fn event(e: &Event) -> Option<Observed> {
    if e.type_.as_deref() != Some("Warning") {
        return None;
    }
    let reason = e.reason.as_deref()?;
    let (typ, severity) = match reason {
        "FailedScheduling" => ("failed_scheduling", "medium"),
        "FailedMount" | "FailedAttachVolume" => ("failed_mount", "medium"),
        "BackOff" => ("back_off", "low"),
        "Unhealthy" => ("probe_failed", "medium"),
        "FailedCreate" | "FailedCreatePodSandBox" => ("failed_create", "medium"),
        "FailedKillPod"
        | "FailedPreStopHook"
        | "FailedPostStartHook"
        | "SystemOOM"
        | "OOMKilling"
        | "FailedSync" => ("warning", "low"),
        _ => return None,
    };
    let io = &e.involved_object;
    let uid = io.uid.clone().filter(|u| !u.is_empty())?;
    let last = e
        .last_timestamp
        .as_ref()
        .or(e.first_timestamp.as_ref())
        .map(|t| t.0.as_microsecond())
        .or_else(|| e.event_time.as_ref().map(|t| t.0.as_microsecond()));
    let count = i64::from(e.count.unwrap_or(1).max(1));
    let mut s = signal(format!("event/{reason}"), typ, severity);
    s.reason = Some(reason.to_string());
    s.message = e.message.as_deref().map(truncate);
    s.marker = Some(format!(
        "{}#{count}",
        e.metadata.uid.as_deref().unwrap_or_default()
    ));
    s.count = count;
    s.at = last;
    Some(Observed {
        subject: Subject {
            kind: io.kind.clone().unwrap_or_default(),
            namespace: io.namespace.clone(),
            name: io.name.clone().unwrap_or_default(),
            uid,
            node: e.source.as_ref().and_then(|s| s.host.clone()),
        },
        signals: vec![s],
        complete: false,
        healthy_since: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value, deleting: bool) -> Pod {
        let mut p = serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "web", "image": "nginx",
                     "resources": {"limits": {"memory": "256Mi", "cpu": "500m"}}}]},
            "status": status,
        });
        if deleting {
            p["metadata"]["deletionTimestamp"] = "2026-01-01T00:10:00Z".into();
        }
        serde_json::from_value(p).unwrap()
    }

    fn types(o: &Observed) -> Vec<&str> {
        o.signals.iter().map(|s| s.typ).collect()
    }

    #[test]
    fn a_restart_is_classified_with_the_containers_limits() {
        let o = super::pod(&pod(
            serde_json::json!({"phase": "Running", "containerStatuses": [{"name": "web", "image": "nginx", "imageID": "", "ready": false, "restartCount": 2,
                    "lastState": {"terminated": {"exitCode": 137, "reason": "Error", "message": "Out of memory", "finishedAt": "2026-01-01T00:05:00Z"}},
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}),
            false,
        ));
        assert_eq!(
            types(&o),
            ["oom_killed"],
            "CrashLoopBackOff is the same problem"
        );
        let s = &o.signals[0];
        assert_eq!(s.resources.memory_limit_bytes, Some(256 << 20));
        assert_eq!(s.resources.cpu_limit_m, Some(500));
        assert_eq!(
            (s.exit_code, s.signal.as_deref()),
            (Some(137), Some("SIGKILL"))
        );
        assert_eq!(s.count, 2);
        assert_eq!(o.healthy_since, None);
    }

    #[test]
    fn normal_stops_are_not_signals() {
        // A rolling update's SIGTERM, and a finished container, without restarts.
        for code in [143, 0] {
            let o = super::pod(&pod(
                serde_json::json!({"phase": "Running", "containerStatuses": [{"name": "web", "image": "nginx", "imageID": "", "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": code, "reason": "Error", "finishedAt": "2026-01-01T00:05:00Z"}}}]}),
                false,
            ));
            assert!(o.signals.is_empty(), "exit {code}: {:?}", types(&o));
        }
        // Anything while the pod is being deleted.
        let o = super::pod(&pod(
            serde_json::json!({"phase": "Running", "containerStatuses": [{"name": "web", "image": "nginx", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2026-01-01T00:05:00Z"}}}]}),
            true,
        ));
        assert!(o.signals.is_empty());
    }

    #[test]
    fn a_running_ready_pod_is_healthy_since_its_latest_start() {
        let o = super::pod(&pod(
            serde_json::json!({"phase": "Running", "containerStatuses": [{"name": "web", "image": "nginx", "imageID": "", "ready": true, "restartCount": 1,
                    "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T00:05:00Z"}},
                    "state": {"running": {"startedAt": "2026-01-01T00:05:10Z"}}}]}),
            false,
        ));
        assert_eq!(types(&o), ["error"], "the last exit stays visible");
        let started = jiff::Timestamp::from_second(1_767_225_910).unwrap();
        assert_eq!(o.healthy_since, Some(started.as_microsecond()));
    }

    #[test]
    fn messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(2000);
        let cut = truncate(&long);
        assert_eq!(cut.chars().count(), MESSAGE_MAX + 1);
        assert!(cut.ends_with('…'));
    }
}
