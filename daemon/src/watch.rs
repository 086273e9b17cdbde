//! One supervisor per context: connects, runs a kube-runtime watcher per kind, turns watch
//! events into store ops, and reports the context's state. A failing context is marked
//! `error` with the reason and retried with backoff; nothing it does touches other contexts.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::config::Kubeconfig;
use kube::runtime::watcher;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::KindFilter;
use crate::kubeconfig::{ContextSpec, client_for};
use crate::resource_watch::{self, Ended, OnError, Seen, Watched};
use crate::rows::{self, Kind, ObjectRows};
use crate::store::{ContextPhase, ContextState, Op};

/// What a watcher task tells its supervisor.
#[derive(Debug)]
enum Health {
    InitDone(Kind),
    Failed(Kind, String),
}

/// Backoff between reconnect attempts: 1 s doubling to 30 s, with jitter.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    fn reset(&mut self) {
        self.next = Self::MIN;
    }

    fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        // Up to 20 % jitter, random, so contexts that failed together do not retry in
        // lockstep.
        base + base.mul_f64(fastrand::f64() * 0.2)
    }
}

async fn set_state(
    tx: &mpsc::Sender<Op>,
    name: &str,
    state: ContextPhase,
    error: Option<String>,
    version: Option<String>,
    synced: bool,
) {
    let _ = tx
        .send(Op::ContextState(ContextState {
            name: name.to_string(),
            state,
            error,
            server_version: version,
            synced,
        }))
        .await;
}

/// Runs until `cancel` fires. `plan.sync_slots` bounds how many contexts run their initial list
/// at once, which bounds the daemon's peak memory with many large clusters.
pub async fn supervise(
    spec: ContextSpec,
    kubeconfig: Arc<Kubeconfig>,
    tx: mpsc::Sender<Op>,
    plan: Plan,
    mut resync: tokio::sync::watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    let name = spec.info.name.clone();
    let ctx: Arc<str> = Arc::from(name.as_str());
    let _ = tx.send(Op::ContextInfo(spec.info.clone())).await;
    let mut backoff = Backoff::new();
    loop {
        set_state(&tx, &name, ContextPhase::Connecting, None, None, false).await;
        let attempt = connect_and_watch(
            &ctx,
            &kubeconfig,
            &tx,
            &plan,
            &mut resync,
            &cancel,
            &mut backoff,
        );
        let err = tokio::select! {
            e = attempt => e,
            _ = cancel.cancelled() => return,
        };
        let wait = backoff.step();
        tracing::warn!(context = %name, error = %err, retry_in_ms = wait.as_millis() as u64, "context failed");
        set_state(&tx, &name, ContextPhase::Error, Some(err), None, false).await;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Connects and watches until something fails; returns why.
async fn connect_and_watch(
    ctx: &Arc<str>,
    kubeconfig: &Kubeconfig,
    tx: &mpsc::Sender<Op>,
    plan: &Plan,
    resync: &mut tokio::sync::watch::Receiver<u64>,
    cancel: &CancellationToken,
    backoff: &mut Backoff,
) -> String {
    let client = match client_for(kubeconfig, ctx).await {
        Ok(c) => c,
        Err(e) => return crate::describe(&e),
    };
    plan.clients.set(ctx, client.clone());
    let version = match tokio::time::timeout(Duration::from_secs(15), client.apiserver_version())
        .await
    {
        Ok(Ok(v)) => v.git_version,
        Ok(Err(e)) => return classify(&e),
        Err(_) => {
            return "unreachable: the API server did not answer /version within 15 s".to_string();
        }
    };
    let Ok(mut slot) = plan.sync_slots.clone().acquire_owned().await.map(Some) else {
        return "shutting down".to_string();
    };
    set_state(
        tx,
        ctx,
        ContextPhase::Syncing,
        None,
        Some(version.clone()),
        false,
    )
    .await;
    // Unbounded: a few messages per kind and relist, sent from a watcher's sync callback.
    let (htx, mut hrx) = mpsc::unbounded_channel();
    let child = cancel.child_token();
    let _stop = child.clone().drop_guard();
    // The kube-system namespace's uid identifies the cluster behind the context.
    let cluster_id = match Api::<Namespace>::all(client.clone())
        .get_opt("kube-system")
        .await
    {
        Ok(ns) => ns.and_then(|n| n.metadata.uid),
        Err(e) => return classify(&e),
    };
    let _ = tx
        .send(Op::ClusterId {
            name: ctx.to_string(),
            cluster_id,
        })
        .await;
    let w = Watch {
        ctx: ctx.clone(),
        tx: tx.clone(),
        health: htx,
        cancel: child.clone(),
        kinds: plan.kinds.clone(),
        spawned: std::cell::Cell::new(0),
    };
    let client_for_discovery = client.clone();
    rows::for_each_typed(&mut Starter { watch: &w, client });
    let expected = w.spawned.get();
    // The supervisor keeps a sender of its own, so that a context whose watchers are all
    // discovered ones (`kinds = ["objects"]`) waits on its channel rather than seeing it close.
    let _health = w.health.clone();
    drop(w);
    if plan.kinds.allows(Kind::Objects.table()) {
        tokio::spawn(crate::discover::run(
            client_for_discovery,
            ctx.clone(),
            tx.clone(),
            child.clone(),
        ));
    }
    // Kinds the config no longer watches: their rows go.
    for kind in Kind::TYPED.iter().filter(|k| !plan.kinds.allows(k.table())) {
        let _ = tx
            .send(Op::Sweep {
                kind: *kind,
                context: ctx.clone(),
                keep: Vec::new(),
                scope: None,
            })
            .await;
    }
    let mut synced: HashSet<Kind> = HashSet::new();
    let mut ready = false;
    resync.mark_unchanged();
    loop {
        // Ready once every typed kind has listed; at once when it watches none, since its
        // discovered resources report their own progress in `resources`.
        if !ready && synced.len() == expected {
            ready = true;
            tracing::info!(context = %ctx, kinds = expected, "initial sync complete");
            backoff.reset();
            slot.take();
            set_state(
                tx,
                ctx,
                ContextPhase::Ready,
                None,
                Some(version.clone()),
                true,
            )
            .await;
        }
        let h = tokio::select! {
            h = hrx.recv() => h,
            // A batch of this or another context could not be written: relist everything.
            _ = resync.changed() => return "a write to the inventory failed; relisting".to_string(),
        };
        let Some(h) = h else { break };
        match h {
            Health::InitDone(kind) => {
                synced.insert(kind);
            }
            // A failing watcher takes the whole context down and back up: the reconnect
            // relists every kind, which also repairs deletes missed while disconnected.
            Health::Failed(kind, e) => return format!("{}: {e}", kind.table()),
        }
    }
    "watchers stopped".to_string()
}

/// Words an error by its cause, so `contexts.error` says what to fix.
fn classify(e: &kube::Error) -> String {
    let text = crate::describe(e);
    let kind = match e {
        kube::Error::Api(s) if s.code == 401 => "unauthorized (credentials rejected)",
        kube::Error::Api(s) if s.code == 403 => "forbidden",
        kube::Error::Api(_) => "api error",
        _ if text.contains("certificate") || text.to_lowercase().contains("tls") => "tls",
        _ if text.contains("onnection refused")
            || text.contains("timed out")
            || text.contains("dns") =>
        {
            "unreachable"
        }
        kube::Error::Auth(_) => "authentication",
        _ => "error",
    };
    format!("{kind}: {text}")
}

/// What every watcher task of one context shares.
struct Watch {
    ctx: Arc<str>,
    tx: mpsc::Sender<Op>,
    health: mpsc::UnboundedSender<Health>,
    cancel: CancellationToken,
    kinds: Arc<KindFilter>,
    /// How many kinds were started: the context is synced when all have listed.
    spawned: std::cell::Cell<usize>,
}

/// Starts the watcher of each typed kind, as [`rows::for_each_typed`] names them.
struct Starter<'a> {
    watch: &'a Watch,
    client: kube::Client,
}

impl rows::TypedKinds for Starter<'_> {
    fn visit<K: rows::TypedObject>(
        &mut self,
        kind: Kind,
        to_rows: fn(&Arc<str>, &K) -> ObjectRows,
    ) {
        self.watch
            .spawn(Api::<rows::Raw<K>>::all(self.client.clone()), kind, to_rows);
    }
}

impl Watch {
    /// Starts the watcher of one kind: events become ops, list and watch failures are
    /// reported to the supervisor.
    fn spawn<K: rows::TypedObject>(
        &self,
        api: Api<rows::Raw<K>>,
        kind: Kind,
        to_rows: fn(&Arc<str>, &K) -> ObjectRows,
    ) {
        if !self.kinds.allows(kind.table()) {
            return;
        }
        self.spawned.set(self.spawned.get() + 1);
        let (ctx, tx, health, cancel) = (
            self.ctx.clone(),
            self.tx.clone(),
            self.health.clone(),
            self.cancel.clone(),
        );
        let gvk = kind.gvk();
        // The typed rows, and the `objects` row from the same watch: the server's own JSON
        // where it can be kept, the typed object serialised back where not (a Secret).
        let rows_of = {
            let ctx = ctx.clone();
            move |rows::Raw {
                      object: mut o,
                      json,
                  }: rows::Raw<K>| {
                rows::hide_secret_values(&gvk, o.meta_mut());
                let mut rows = to_rows(&ctx, &o);
                o.meta_mut().managed_fields = None;
                let json =
                    rows::stored_json(&gvk, json.get()).or_else(|| rows::object_json(&gvk, &o));
                if let Some(json) = json {
                    rows.shape = crate::diff::text_shape(&gvk.resource, &json);
                    rows.object = Some(rows::object_row(&ctx, &gvk, o.meta(), json));
                }
                rows
            }
        };
        tokio::spawn(async move {
            let watched = Watched {
                ctx: &ctx,
                kind,
                group: kind.group(),
                resource: kind.table(),
                scope: None,
                tx: &tx,
                cancel: &cancel,
                on_error: OnError::Fail,
            };
            loop {
                let stream = watcher(api.clone(), resource_watch::config());
                let listed = |s: Seen| {
                    if s == Seen::Listed {
                        let _ = health.send(Health::InitDone(kind));
                    }
                };
                match watched.run(stream, &rows_of, listed).await {
                    Ended::Stop => return,
                    // RBAC refuses this kind: skip it, say why, and look again much later. The
                    // context counts it as synced, so one forbidden kind does not hold it back.
                    Ended::Forbidden => {
                        tracing::warn!(context = %ctx, kind = kind.table(), "forbidden by RBAC; skipped, will try again in 10 minutes");
                        let _ = health.send(Health::InitDone(kind));
                        tokio::select! {
                            _ = tokio::time::sleep(resource_watch::FORBIDDEN_RETRY) => {}
                            _ = cancel.cancelled() => return,
                        }
                    }
                    // Failing to list or to start a watch means the cluster is not reachable
                    // (or refuses us): the supervisor reports it and reconnects with backoff,
                    // which relists every kind and so also repairs deletes missed meanwhile.
                    Ended::Failed(e) => {
                        let msg = match &e {
                            watcher::Error::InitialListFailed(k)
                            | watcher::Error::WatchStartFailed(k) => classify(k),
                            other => crate::describe(other),
                        };
                        let _ = health.send(Health::Failed(kind, msg));
                        return;
                    }
                    Ended::Closed => {
                        let _ = health.send(Health::Failed(kind, "watch stream ended".into()));
                        return;
                    }
                }
            }
        });
    }
}

/// What every context shares: the slots bounding concurrent initial syncs, and the kinds
/// to watch.
#[derive(Clone)]
pub struct Plan {
    pub sync_slots: Arc<Semaphore>,
    pub kinds: Arc<KindFilter>,
    /// Each connected context's client, for reading pull secrets when sizing images.
    pub clients: Arc<crate::clients::Clients>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_random_jitter_of_up_to_a_fifth() {
        let mut b = Backoff::new();
        let bases = [1, 2, 4, 8, 16, 30, 30];
        for base in bases {
            let base = Duration::from_secs(base);
            let wait = b.step();
            assert!(
                wait >= base && wait <= base.mul_f64(1.2),
                "{wait:?} for {base:?}"
            );
        }
        // Contexts that fail at the same moment get different waits.
        let waits: HashSet<Duration> = (0..16).map(|_| Backoff::new().step()).collect();
        assert!(waits.len() > 1, "16 contexts, one wait: {waits:?}");
    }
}
