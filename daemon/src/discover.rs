//! Every other resource: discovers what the cluster serves that no typed table covers
//! (custom resources included) and watches each into `objects`. A CRD created or deleted is
//! noticed through the CRD watch and triggers a new discovery, so no restart is needed.
//! A resource RBAC forbids is skipped and retried rarely, never in a hot loop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{ApiResource, DynamicObject};
use kube::core::TypeMeta;
use kube::discovery::{Discovery, verbs};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::resource_watch::{self, Ended, OnError, Seen, Watched};
use crate::rows::{self, Gvk, Kind, ObjectRows};
use crate::store::Op;

/// How often discovery runs again when no CRD changed.
const REDISCOVER_EVERY: Duration = Duration::from_secs(300);

/// Runs until `cancel` fires.
pub async fn run(client: Client, ctx: Arc<str>, tx: mpsc::Sender<Op>, cancel: CancellationToken) {
    let typed: HashSet<(String, String)> = Kind::TYPED
        .iter()
        .map(|k| (k.gvk().group, k.gvk().resource))
        .collect();
    let rediscover = Arc::new(Notify::new());
    let mut running: HashMap<(String, String), CancellationToken> = HashMap::new();
    loop {
        match Discovery::new(client.clone()).run().await {
            Ok(d) => {
                let mut want: HashMap<(String, String), ApiResource> = HashMap::new();
                for group in d.groups() {
                    for (ar, caps) in group.recommended_resources() {
                        let key = (ar.group.clone(), ar.plural.clone());
                        if caps.supports_operation(verbs::LIST)
                            && caps.supports_operation(verbs::WATCH)
                            && !typed.contains(&key)
                        {
                            want.insert(key, ar);
                        }
                    }
                }
                for (key, ar) in &want {
                    if !running.contains_key(key) {
                        tracing::debug!(context = %ctx, group = %ar.group, resource = %ar.plural, "watching resource");
                        let token = cancel.child_token();
                        spawn(
                            client.clone(),
                            ar.clone(),
                            ctx.clone(),
                            tx.clone(),
                            token.clone(),
                            rediscover.clone(),
                        );
                        running.insert(key.clone(), token);
                    }
                }
                let gone: Vec<(String, String)> = running
                    .keys()
                    .filter(|k| !want.contains_key(*k))
                    .cloned()
                    .collect();
                for (group, resource) in gone {
                    if let Some(t) = running.remove(&(group.clone(), resource.clone())) {
                        t.cancel();
                    }
                    tracing::info!(context = %ctx, %group, %resource, "resource no longer served");
                    let _ = tx
                        .send(Op::RemoveResource {
                            context: ctx.clone(),
                            group,
                            resource,
                        })
                        .await;
                }
            }
            Err(e) => {
                tracing::warn!(context = %ctx, error = %crate::describe(&e), "discovery failed; retrying later")
            }
        }
        tokio::select! {
            _ = rediscover.notified() => {}
            _ = tokio::time::sleep(REDISCOVER_EVERY) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

fn is_crds(ar: &ApiResource) -> bool {
    ar.group == "apiextensions.k8s.io" && ar.plural == "customresourcedefinitions"
}

fn spawn(
    client: Client,
    ar: ApiResource,
    ctx: Arc<str>,
    tx: mpsc::Sender<Op>,
    cancel: CancellationToken,
    rediscover: Arc<Notify>,
) {
    tokio::spawn(async move {
        let gvk = Gvk {
            group: ar.group.clone(),
            version: ar.version.clone(),
            kind: ar.kind.clone(),
            resource: ar.plural.clone(),
        };
        let crds = is_crds(&ar);
        let watched = Watched {
            ctx: &ctx,
            kind: Kind::Objects,
            group: &ar.group,
            resource: &ar.plural,
            scope: Some((ar.group.clone(), ar.plural.clone())),
            tx: &tx,
            cancel: &cancel,
            on_error: OnError::Retry,
        };
        loop {
            let api: Api<rows::Raw<DynamicObject>> = Api::all_with(client.clone(), &ar);
            let stream = watcher(api, resource_watch::config()).default_backoff();
            // A CRD created, changed or deleted may change what the cluster serves.
            let changed = |s: Seen| {
                if crds && s == Seen::Changed {
                    rediscover.notify_one();
                }
            };
            let rows_of = |o| object_rows(&ctx, &gvk, &ar, o);
            let wait = match watched.run(stream, rows_of, changed).await {
                Ended::Stop => return,
                Ended::Forbidden => {
                    tracing::warn!(context = %ctx, group = %ar.group, resource = %ar.plural, "forbidden by RBAC; skipped, will try again in 10 minutes");
                    resource_watch::FORBIDDEN_RETRY
                }
                Ended::Failed(_) | Ended::Closed => Duration::from_secs(1),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => return,
            }
        }
    });
}

fn object_rows(
    ctx: &Arc<str>,
    gvk: &Gvk,
    ar: &ApiResource,
    rows::Raw {
        object: mut o,
        json,
    }: rows::Raw<DynamicObject>,
) -> ObjectRows {
    let json = rows::stored_json(gvk, json.get()).unwrap_or_else(|| {
        if o.types.is_none() {
            o.types = Some(TypeMeta {
                api_version: ar.api_version.clone(),
                kind: ar.kind.clone(),
            });
        }
        o.metadata.managed_fields = None;
        rows::hide_secret_values(gvk, &mut o.metadata);
        rows::object_json(gvk, &o).unwrap_or_default()
    });
    rows::single(&o.metadata, rows::object_row(ctx, gvk, &o.metadata, json))
}
