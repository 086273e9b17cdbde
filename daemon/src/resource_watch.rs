//! One resource's list and watch, turned into store ops: the loop every typed kind and every
//! discovered resource runs. A relist keeps only the uids it saw, to sweep what vanished;
//! the resource's state (syncing, ready, forbidden) goes to the `resources` table.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use kube::Resource;
use kube::runtime::watcher;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::rows::{Kind, ObjectRows};
use crate::store::{Op, ResourcePhase};

/// Objects per list page. Every kind of a syncing context lists at once and each holds a
/// page, parsed, until the writer has taken it; 100 keeps that burst small (500 made the
/// initial sync of ten large clusters peak about 40 MB higher) for a few more requests.
pub const PAGE_SIZE: u32 = 100;

/// How long a forbidden resource waits before it is tried again.
pub const FORBIDDEN_RETRY: Duration = Duration::from_secs(600);

/// The watcher configuration every resource uses.
pub fn config() -> watcher::Config {
    watcher::Config::default()
        .any_semantic()
        .page_size(PAGE_SIZE)
}

/// What a list or watch error does to the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// End the loop: the context's supervisor reconnects with backoff (typed kinds, whose
    /// failure means the cluster is unreachable or refuses us).
    Fail,
    /// Keep reading: the stream backs off and retries by itself (discovered resources).
    Retry,
}

/// One watched resource of one context.
pub struct Watched<'a> {
    pub ctx: &'a Arc<str>,
    /// `Kind::Objects` for discovered resources.
    pub kind: Kind,
    /// API group and plural name, as `resources` rows and sweeps name the resource.
    pub group: &'a str,
    pub resource: &'a str,
    /// For `objects`, the resource its sweep covers.
    pub scope: Option<(String, String)>,
    pub tx: &'a mpsc::Sender<Op>,
    pub cancel: &'a CancellationToken,
    pub on_error: OnError,
}

/// What the loop saw happen, for callers that react to more than the ops (a CRD watch
/// rediscovers on every change; a typed kind tells its supervisor when it has listed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Listed,
    Changed,
}

/// How the loop ended.
#[derive(Debug)]
pub enum Ended {
    /// Cancelled, or the store is gone.
    Stop,
    /// RBAC refuses the resource; already reported to `resources` with the server's reason.
    Forbidden,
    /// A list or watch could not start (with [`OnError::Fail`]), worded by `describe`.
    Failed(watcher::Error),
    /// The stream ended.
    Closed,
}

impl Watched<'_> {
    fn state(&self, state: ResourcePhase, error: Option<String>) -> Op {
        Op::ResourceState {
            context: self.ctx.clone(),
            group: self.group.to_string(),
            resource: self.resource.to_string(),
            state,
            error,
        }
    }

    /// Reads `stream` into store ops until it ends, fails or is cancelled. `rows_of` turns
    /// an object into its rows; `seen` hears of each relist done and each change after it,
    /// once their ops are sent.
    pub async fn run<K>(
        &self,
        stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
        rows_of: impl Fn(K) -> ObjectRows,
        mut seen: impl FnMut(Seen),
    ) -> Ended
    where
        K: Resource + Clone + Debug + Send + 'static,
    {
        if self
            .tx
            .send(self.state(ResourcePhase::Syncing, None))
            .await
            .is_err()
        {
            return Ended::Stop;
        }
        let mut stream = std::pin::pin!(stream);
        let keeps_deleted = self.kind.keeps_deleted();
        // Only the uids of the current relist are kept, never objects.
        let mut listed: Vec<String> = Vec::new();
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = self.cancel.cancelled() => return Ended::Stop,
            };
            let Some(ev) = ev else { return Ended::Closed };
            let (ops, note): ([Option<Op>; 2], Option<Seen>) = match ev {
                Ok(watcher::Event::Init) => {
                    listed.clear();
                    continue;
                }
                Ok(watcher::Event::InitApply(o)) => {
                    let rows = rows_of(o);
                    listed.push(rows.uid.clone());
                    ([Some(self.upsert(rows)), None], None)
                }
                // The sweep lands before the resource says it is ready, so a reader who sees
                // it ready sees exactly what was listed.
                Ok(watcher::Event::InitDone) => {
                    let keep = std::mem::take(&mut listed);
                    let sweep = (!keeps_deleted).then(|| Op::Sweep {
                        kind: self.kind,
                        context: self.ctx.clone(),
                        keep,
                        scope: self.scope.clone(),
                    });
                    (
                        [sweep, Some(self.state(ResourcePhase::Ready, None))],
                        Some(Seen::Listed),
                    )
                }
                Ok(watcher::Event::Apply(o)) => {
                    ([Some(self.upsert(rows_of(o))), None], Some(Seen::Changed))
                }
                // Events stay after the cluster expires them; retention removes them later.
                Ok(watcher::Event::Delete(_)) if keeps_deleted => continue,
                Ok(watcher::Event::Delete(o)) => {
                    let delete = Op::Delete {
                        kind: self.kind,
                        context: self.ctx.clone(),
                        uid: o.meta().uid.clone().unwrap_or_default(),
                    };
                    ([Some(delete), None], Some(Seen::Changed))
                }
                Err(
                    watcher::Error::InitialListFailed(kube::Error::Api(s))
                    | watcher::Error::WatchStartFailed(kube::Error::Api(s)),
                ) if s.code == 403 => {
                    let _ = self
                        .tx
                        .send(self.state(ResourcePhase::Forbidden, Some(s.message)))
                        .await;
                    return Ended::Forbidden;
                }
                // The watcher recovers from these by itself: a 410 makes it relist, a broken
                // stream makes it watch again from the last resource version.
                Err(watcher::Error::WatchError(s)) if s.code == 410 => continue,
                Err(e @ (watcher::Error::WatchFailed(_) | watcher::Error::WatchError(_))) => {
                    tracing::debug!(context = %self.ctx, resource = self.resource, error = %crate::describe(&e), "watch interrupted; resuming");
                    continue;
                }
                Err(e) if self.on_error == OnError::Retry => {
                    tracing::debug!(context = %self.ctx, resource = self.resource, error = %crate::describe(&e), "watch error; the stream retries");
                    continue;
                }
                Err(e) => return Ended::Failed(e),
            };
            for op in ops.into_iter().flatten() {
                if self.tx.send(op).await.is_err() {
                    return Ended::Stop;
                }
            }
            // After the ops: whoever hears of a finished list may report the context ready,
            // and that must reach the writer after the rows it follows.
            if let Some(note) = note {
                seen(note);
            }
        }
    }

    fn upsert(&self, rows: ObjectRows) -> Op {
        Op::Upsert {
            kind: self.kind,
            context: self.ctx.clone(),
            rows,
        }
    }
}
