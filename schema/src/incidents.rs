//! The incident types kqd records: stable names, their default severity and what each means.
//! The daemon classifies with these names; the catalog documents them.

/// One incident type.
pub struct IncidentType {
    pub name: &'static str,
    pub severity: &'static str,
    pub description: &'static str,
}

const fn t(name: &'static str, severity: &'static str, description: &'static str) -> IncidentType {
    IncidentType {
        name,
        severity,
        description,
    }
}

/// Severities, most severe first.
pub const SEVERITIES: [&str; 4] = ["critical", "high", "medium", "low"];

/// Every incident type. Container exits follow the exit-code table: 0 graceful, 1 error, 2
/// misuse, 125 runtime_error, 126 not_executable, 127 command_not_found, 128
/// invalid_exit_argument, 130 interrupted, 137 killed or oom_killed, 143 terminated, any
/// other code above 128 signal (with the signal's name), anything else exited.
pub static INCIDENT_TYPES: &[IncidentType] = &[
    t("graceful", "low", "A container exited 0 and was restarted."),
    t(
        "error",
        "medium",
        "A container exited 1 (application error).",
    ),
    t(
        "misuse",
        "medium",
        "A container exited 2 (misuse of a shell builtin or bad arguments).",
    ),
    t(
        "exited",
        "medium",
        "A container exited with another code from 3 to 124.",
    ),
    t(
        "runtime_error",
        "high",
        "Exit 125: the container runtime failed to run the container.",
    ),
    t(
        "not_executable",
        "high",
        "Exit 126: the command is not executable.",
    ),
    t(
        "command_not_found",
        "high",
        "Exit 127: the command was not found.",
    ),
    t(
        "invalid_exit_argument",
        "medium",
        "Exit 128: exit was called with an invalid argument.",
    ),
    t("interrupted", "low", "Exit 130: interrupted (SIGINT)."),
    t(
        "killed",
        "high",
        "Exit 137: SIGKILL without evidence of an OOM kill.",
    ),
    t(
        "oom_killed",
        "high",
        "Exit 137 with reason OOMKilled (or an out-of-memory message and a memory limit).",
    ),
    t(
        "terminated",
        "medium",
        "Exit 143: SIGTERM ended a container that then restarted (a failed liveness probe, say).",
    ),
    t(
        "signal",
        "medium",
        "Another exit code above 128: killed by signal N (named in `signal`).",
    ),
    t(
        "crash_loop",
        "high",
        "CrashLoopBackOff without a recorded termination.",
    ),
    t(
        "image_pull",
        "high",
        "ErrImagePull or ImagePullBackOff lasting longer than the grace period.",
    ),
    t(
        "invalid_image",
        "high",
        "InvalidImageName: the image reference cannot be parsed.",
    ),
    t(
        "config_error",
        "high",
        "CreateContainerConfigError: a referenced ConfigMap, Secret or key is missing.",
    ),
    t(
        "create_error",
        "high",
        "CreateContainerError: the runtime could not create the container.",
    ),
    t(
        "evicted",
        "high",
        "The kubelet evicted the pod (node pressure).",
    ),
    t(
        "pod_failed",
        "high",
        "The pod is Failed with no container exit to explain it.",
    ),
    t(
        "pending",
        "medium",
        "The pod has been Pending longer than the configured time.",
    ),
    t(
        "job_failed",
        "high",
        "A Job's Failed condition (BackoffLimitExceeded, DeadlineExceeded).",
    ),
    t(
        "node_not_ready",
        "critical",
        "A node's Ready condition is False or Unknown.",
    ),
    t("memory_pressure", "high", "A node reports MemoryPressure."),
    t("disk_pressure", "high", "A node reports DiskPressure."),
    t("pid_pressure", "high", "A node reports PIDPressure."),
    t(
        "failed_scheduling",
        "medium",
        "Warning event FailedScheduling.",
    ),
    t(
        "failed_mount",
        "medium",
        "Warning event FailedMount or FailedAttachVolume.",
    ),
    t(
        "back_off",
        "low",
        "Warning event BackOff (restart or pull back-off).",
    ),
    t(
        "probe_failed",
        "medium",
        "Warning event Unhealthy: a liveness, readiness or startup probe failed.",
    ),
    t(
        "failed_create",
        "medium",
        "Warning event FailedCreate or FailedCreatePodSandBox.",
    ),
    t(
        "warning",
        "low",
        "Another Warning event kq watches (FailedKillPod, FailedPreStopHook, SystemOOM…).",
    ),
];

/// The type named `name`.
pub fn incident_type(name: &str) -> Option<&'static IncidentType> {
    INCIDENT_TYPES.iter().find(|t| t.name == name)
}

/// Rank of a severity: 0 for critical … 3 for low; unknown names rank lowest.
pub fn severity_rank(s: &str) -> usize {
    SEVERITIES
        .iter()
        .position(|x| *x == s)
        .unwrap_or(SEVERITIES.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_documents_every_type_with_its_severity() {
        let doc = crate::table("incidents")
            .and_then(|t| t.columns.iter().find(|c| c.name == "type"))
            .expect("incidents.type")
            .description;
        for t in INCIDENT_TYPES {
            assert!(doc.contains(t.name), "{} is documented", t.name);
            assert!(
                SEVERITIES.contains(&t.severity),
                "{} has a known severity",
                t.name
            );
        }
    }
}
