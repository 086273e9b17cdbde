//! The watched contexts, kept in step with the kubeconfig files and the config: new
//! contexts start, removed ones stop, changed ones restart, and unchanged ones keep
//! streaming without a reconnect or a relist.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kubeconfig::{self, Files};
use crate::store::{ContextPhase, ContextState, Op, Store};
use crate::watch;

/// What a running context depends on: its kubeconfig entries and the kinds it watches.
fn fingerprint(merged: &kube::config::Kubeconfig, name: &str, config: &Config) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    kubeconfig::fingerprint(merged, name).hash(&mut h);
    config.kinds.hash(&mut h);
    h.finish()
}

struct Running {
    fingerprint: u64,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// The context supervisors kqd runs.
pub struct Fleet {
    tx: mpsc::Sender<Op>,
    store: Arc<Store>,
    sync_slots: Arc<Semaphore>,
    resync: tokio::sync::watch::Receiver<u64>,
    parent: CancellationToken,
    files: Files,
    running: HashMap<String, Running>,
    /// The first `apply` also settles contexts an earlier run left in the database.
    first: bool,
    clients: Arc<crate::clients::Clients>,
}

impl Fleet {
    pub fn new(
        tx: mpsc::Sender<Op>,
        store: Arc<Store>,
        resync: tokio::sync::watch::Receiver<u64>,
        config: &Config,
        parent: CancellationToken,
        clients: Arc<crate::clients::Clients>,
    ) -> Fleet {
        Fleet {
            tx,
            store,
            sync_slots: Arc::new(Semaphore::new(config.initial_sync_concurrency.max(1))),
            resync,
            parent,
            files: Files::default(),
            running: HashMap::new(),
            first: true,
            clients,
        }
    }

    /// Names of the running contexts.
    pub fn running(&self) -> Vec<String> {
        let mut v: Vec<String> = self.running.keys().cloned().collect();
        v.sort();
        v
    }

    /// Re-reads the kubeconfig files and brings the running contexts in line with them and
    /// with the config's include and exclude globs.
    pub async fn apply(&mut self, config: &Config) {
        let paths = kubeconfig::kubeconfig_paths(&config.kubeconfigs);
        let loaded = self.files.load(&paths);
        for (path, e) in &loaded.errors {
            tracing::error!(path = %path.display(), error = %e, "kubeconfig file cannot be used; keeping its last good version");
        }
        let merged = Arc::new(loaded.merged);
        let wanted: Vec<_> = loaded
            .contexts
            .into_iter()
            .filter(|c| config.contexts.allows(&c.info.name))
            .collect();
        if wanted.is_empty() {
            tracing::warn!(files = ?paths, "no contexts to watch in the kubeconfig files");
        }

        // Stop what left or changed.
        let mut stale: Vec<String> = Vec::new();
        for (name, r) in &self.running {
            match wanted.iter().find(|w| &w.info.name == name) {
                None => stale.push(name.clone()),
                Some(_) if fingerprint(&merged, name, config) != r.fingerprint => {
                    tracing::info!(context = %name, "context changed in the kubeconfig; restarting it");
                    stale.push(name.clone());
                }
                Some(_) => {}
            }
        }
        for name in &stale {
            if let Some(r) = self.running.remove(name) {
                r.cancel.cancel();
                let _ = r.task.await;
            }
        }
        // Contexts gone from the kubeconfig (or filtered out): rows removed, or kept and
        // marked, as configured. On the first apply this covers an earlier run's leftovers.
        let mut gone: Vec<String> = stale
            .iter()
            .filter(|n| !wanted.iter().any(|w| &&w.info.name == n))
            .cloned()
            .collect();
        if self.first {
            for n in self.recorded_contexts() {
                if !wanted.iter().any(|w| w.info.name == n) && !gone.contains(&n) {
                    gone.push(n);
                }
            }
            self.first = false;
        }
        for name in gone {
            if config.keep_removed_contexts {
                tracing::info!(context = %name, "context left the kubeconfig; keeping its rows, marked removed");
                let _ = self
                    .tx
                    .send(Op::ContextState(ContextState {
                        name,
                        state: ContextPhase::Removed,
                        error: None,
                        server_version: None,
                        synced: false,
                    }))
                    .await;
            } else {
                tracing::info!(context = %name, "context left the kubeconfig; removing its rows");
                let _ = self.tx.send(Op::RemoveContext { name }).await;
            }
        }

        // Start what is new or changed; report each context's file health.
        for spec in wanted {
            let name = spec.info.name.clone();
            let _ = self
                .tx
                .send(Op::ContextConfigError {
                    name: name.clone(),
                    error: spec.config_error.clone(),
                })
                .await;
            if self.running.contains_key(&name) {
                continue;
            }
            tracing::info!(context = %name, server = %spec.info.server, "watching context");
            let cancel = self.parent.child_token();
            let task = tokio::spawn(watch::supervise(
                spec,
                merged.clone(),
                self.tx.clone(),
                watch::Plan {
                    sync_slots: self.sync_slots.clone(),
                    kinds: config.kinds.clone(),
                    clients: self.clients.clone(),
                },
                self.resync.clone(),
                cancel.clone(),
            ));
            self.running.insert(
                name.clone(),
                Running {
                    fingerprint: fingerprint(&merged, &name, config),
                    cancel,
                    task,
                },
            );
        }
    }

    /// Stops every supervisor and waits for them.
    pub async fn stop(&mut self) {
        for (_, r) in self.running.drain() {
            r.cancel.cancel();
            let _ = r.task.await;
        }
    }

    fn recorded_contexts(&self) -> Vec<String> {
        match self.store.reader() {
            Ok(conn) => conn
                .prepare("SELECT name FROM contexts WHERE state IS DISTINCT FROM 'removed'")
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }
}
