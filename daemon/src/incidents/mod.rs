//! Incident detection: what the watch streams say went wrong, as signals the store turns
//! into `incidents` rows.
//!
//! Detection is split in two. `detect` looks at one object as the watch delivered it and
//! lists its problems ([`Signal`]s) without any memory of the past. The store's incident
//! tracker (`store/incidents.rs`) compares them with the incidents already recorded, so a
//! relist or a daemon restart adds nothing that is already there, and a repeated crash
//! raises `occurrences` instead of adding a row.

pub mod classify;
pub mod crash_log;
pub mod detect;
pub mod hook;

use std::time::Duration;

/// The object an incident is about.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subject {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
}

/// Resource requests and limits of a container, at the time of the signal.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub cpu_request_m: Option<i64>,
    pub cpu_limit_m: Option<i64>,
    pub memory_request_bytes: Option<i64>,
    pub memory_limit_bytes: Option<i64>,
}

/// When a signal may become an incident.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Grace {
    /// At once.
    None,
    /// After the image-pull grace period from when kqd first saw it: pulls fail
    /// transiently all the time.
    ImagePull,
    /// After the pending timeout from the pod's creation (microseconds).
    Pending { since: i64 },
}

/// One problem an object shows now.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    /// Identifies the problem within its object (`container/web/error`, `node/Ready`…):
    /// the same key on the same object is the same incident while it is open.
    pub key: String,
    pub container: Option<String>,
    pub typ: &'static str,
    pub severity: &'static str,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub message: Option<String>,
    pub restart_count: Option<i32>,
    pub resources: Resources,
    /// Identifies the occurrence (a termination's finishedAt, a condition's transition
    /// time, an event's count): a signal whose marker was already recorded is not new.
    pub marker: Option<String>,
    /// How many times the object itself says it happened (restartCount, event count).
    pub count: i64,
    /// When it happened, in microseconds, when the object says.
    pub at: Option<i64>,
    pub grace: Grace,
}

/// What the watch saw of one object, for incidents.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub subject: Subject,
    pub signals: Vec<Signal>,
    /// The signals are everything wrong with the subject now (pods, nodes, jobs), so open
    /// incidents missing from them may end. Events only add to their subject's incidents.
    pub complete: bool,
    /// A pod whose containers all run and are ready: since when (microseconds). Its open
    /// incidents end once it has stayed so for `healthy_after`.
    pub healthy_since: Option<i64>,
}

/// Tunables of detection.
#[derive(Debug, Clone)]
pub struct IncidentOptions {
    /// How long ErrImagePull/ImagePullBackOff must last to count.
    pub image_pull_grace: Duration,
    /// How long a pod may stay Pending.
    pub pending_timeout: Duration,
    /// How long a pod must stay healthy for its incidents to end (the kubelet resets its
    /// crash back-off after 10 minutes of running, so a shorter time would split one crash
    /// loop into several incidents).
    pub healthy_after: Duration,
}

impl Default for IncidentOptions {
    fn default() -> Self {
        IncidentOptions {
            image_pull_grace: Duration::from_secs(120),
            pending_timeout: Duration::from_secs(600),
            healthy_after: Duration::from_secs(600),
        }
    }
}
