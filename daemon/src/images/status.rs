//! What kq has seen of each registry it talks to, for the `registries` table: how many
//! requests it sent, the last answer, the last problem, and whether requests are held.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One row of `registries`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryStatus {
    /// The registry as image names spell it (`docker.io`, `ghcr.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Every request sent for it: manifest HEADs and GETs, and token requests.
    pub requests: u64,
    /// Manifest GETs, the requests Docker Hub counts as pulls.
    pub manifest_gets: u64,
    /// HTTP status of the last answer.
    pub last_status: Option<u16>,
    /// Unix seconds of the last request.
    pub last_request_at: Option<i64>,
    /// The last registry-wide problem (429, 5xx, unreachable, token service, quota).
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    /// Until when (unix seconds) requests wait: a 429's Retry-After or a spent pull quota.
    pub held_until: Option<i64>,
    /// Docker Hub's `ratelimit-remaining`, when the registry sends it.
    pub pulls_remaining: Option<i64>,
}

/// Every registry's status, and a generation that moves whenever one changes, so that the
/// table is rewritten only when there is something new.
#[derive(Default)]
pub struct Statuses {
    by_registry: Mutex<HashMap<String, RegistryStatus>>,
    generation: AtomicU64,
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl Statuses {
    fn update(&self, registry: &str, f: impl FnOnce(&mut RegistryStatus)) {
        let mut all = self.by_registry.lock().unwrap_or_else(|e| e.into_inner());
        let s = all
            .entry(registry.to_string())
            .or_insert_with(|| RegistryStatus {
                registry: registry.to_string(),
                ..Default::default()
            });
        f(s);
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// A request is about to go out.
    pub fn sent(&self, registry: &str, manifest_get: bool) {
        self.update(registry, |s| {
            s.requests += 1;
            s.manifest_gets += u64::from(manifest_get);
            s.last_request_at = Some(now());
        });
    }

    /// The registry answered with this status.
    pub fn answered(&self, registry: &str, status: u16) {
        self.update(registry, |s| s.last_status = Some(status));
    }

    /// Something went wrong that concerns the whole registry, not one image.
    pub fn failed(&self, registry: &str, error: &str) {
        self.update(registry, |s| {
            s.last_error = Some(error.to_string());
            s.last_error_at = Some(now());
        });
    }

    /// Requests wait until `until` (unix seconds).
    pub fn held(&self, registry: &str, until: i64) {
        self.update(registry, |s| {
            s.held_until = Some(s.held_until.map_or(until, |h| h.max(until)));
        });
    }

    pub fn pulls_remaining(&self, registry: &str, left: i64) {
        self.update(registry, |s| s.pulls_remaining = Some(left));
    }

    /// A number that changes whenever a status does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Every status, by registry name.
    pub fn snapshot(&self) -> Vec<RegistryStatus> {
        let all = self.by_registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = all.values().cloned().collect();
        v.sort_by(|a, b| a.registry.cmp(&b.registry));
        v
    }
}
