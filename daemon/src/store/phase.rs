//! The states the writer records for contexts and resources, as enums: the watchers report
//! them, the writer stores their names in `contexts.state` and `resources.state`.

/// A context's connection state (`contexts.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContextPhase {
    /// Connecting, or waiting to reconnect.
    #[default]
    Connecting,
    /// Connected, running its initial list.
    Syncing,
    /// Every watched kind has listed.
    Ready,
    /// The last attempt failed; `contexts.error` says why.
    Error,
    /// Gone from the kubeconfig, its rows kept (`keep_removed_contexts`).
    Removed,
}

impl ContextPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            ContextPhase::Connecting => "connecting",
            ContextPhase::Syncing => "syncing",
            ContextPhase::Ready => "ready",
            ContextPhase::Error => "error",
            ContextPhase::Removed => "removed",
        }
    }
}

/// A resource's watch state in one context (`resources.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResourcePhase {
    /// Listing.
    #[default]
    Syncing,
    /// Listed, and watched.
    Ready,
    /// RBAC refuses it; tried again later.
    Forbidden,
}

impl ResourcePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourcePhase::Syncing => "syncing",
            ResourcePhase::Ready => "ready",
            ResourcePhase::Forbidden => "forbidden",
        }
    }
}
