//! Fault injection and the connection/request log of a simulated cluster.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// One answered request, for tests to assert on.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub seq: u64,
    pub conn: u64,
    pub method: String,
    pub path: String,
    pub query: String,
    pub watch: bool,
    pub status: u16,
    pub at: Instant,
}

/// One accepted TCP connection.
#[derive(Debug, Clone)]
pub struct ConnRecord {
    pub id: u64,
    pub peer: std::net::SocketAddr,
    pub at: Instant,
}

const LOG_CAP: usize = 200_000;

/// What the simulated cluster has seen, oldest first (bounded).
#[derive(Default)]
pub struct TrafficLog {
    requests: Mutex<VecDeque<RequestRecord>>,
    conns: Mutex<VecDeque<ConnRecord>>,
}

impl TrafficLog {
    pub(crate) fn record_request(&self, mut r: RequestRecord) {
        let mut q = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        r.seq = q.back().map_or(1, |b| b.seq + 1);
        q.push_back(r);
        if q.len() > LOG_CAP {
            q.pop_front();
        }
    }

    pub(crate) fn record_conn(&self, c: ConnRecord) {
        let mut q = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(c);
        if q.len() > LOG_CAP {
            q.pop_front();
        }
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn connections(&self) -> Vec<ConnRecord> {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Watch requests received, oldest first.
    pub fn watches(&self) -> Vec<RequestRecord> {
        self.requests().into_iter().filter(|r| r.watch).collect()
    }
}

/// An injected error response.
#[derive(Debug, Clone, Copy)]
pub struct InjectedError {
    pub code: u16,
    pub retry_after: Option<u64>,
}

/// The faults currently injected into one cluster.
pub struct Faults {
    errors: Mutex<VecDeque<InjectedError>>,
    stall: Mutex<Option<Duration>>,
    /// Bumped to cut every open watch without a clean end, as a dropped connection does.
    pub(crate) drop_watches: watch::Sender<u64>,
    /// Bumped to end every open watch with a 410 Gone ERROR event.
    pub(crate) gone_watches: watch::Sender<u64>,
    pub(crate) offline: watch::Sender<bool>,
    /// Resources (group, plural) every request for which gets 403, as RBAC would answer.
    forbidden: Mutex<std::collections::HashSet<(String, String)>>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            forbidden: Mutex::new(Default::default()),
            errors: Mutex::new(VecDeque::new()),
            stall: Mutex::new(None),
            drop_watches: watch::channel(0).0,
            gone_watches: watch::channel(0).0,
            offline: watch::channel(false).0,
        }
    }
}

impl Faults {
    /// The next `n` requests are answered with `code` (and `Retry-After`, if given).
    pub fn fail_next(&self, n: usize, code: u16, retry_after: Option<u64>) {
        let mut q = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        q.extend(std::iter::repeat_n(InjectedError { code, retry_after }, n));
    }

    pub(crate) fn take_error(&self) -> Option<InjectedError> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// Every request waits this long before it is answered; `None` ends the stall.
    pub fn stall(&self, d: Option<Duration>) {
        *self.stall.lock().unwrap_or_else(|e| e.into_inner()) = d;
    }

    pub(crate) fn stall_for(&self) -> Option<Duration> {
        *self.stall.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts every open watch connection abruptly.
    pub fn drop_watches(&self) {
        self.drop_watches.send_modify(|g| *g += 1);
    }

    /// Ends every open watch with an ERROR event carrying 410 Gone.
    pub(crate) fn end_watches_gone(&self) {
        self.gone_watches.send_modify(|g| *g += 1);
    }

    /// Answers 403 Forbidden for a resource from now on.
    pub fn forbid(&self, group: &str, plural: &str) {
        self.forbidden
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((group.to_string(), plural.to_string()));
    }

    pub(crate) fn is_forbidden(&self, group: &str, plural: &str) -> bool {
        self.forbidden
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(group.to_string(), plural.to_string()))
    }

    pub fn is_offline(&self) -> bool {
        *self.offline.borrow()
    }
}
