//! Starting, stopping and restarting the mirror as the config says: at start, and again on
//! every SIGHUP that sets, changes or removes `postgres_url` (or the schema, the instance,
//! `mirror_objects`).

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::MirrorConfig;
use crate::config::Config;
use crate::store::{Op, Store};

/// The running mirror, if any, and what it needs to start another.
pub struct Control {
    store: Arc<Store>,
    ops: mpsc::Sender<Op>,
    outbox: watch::Receiver<i64>,
    parent: CancellationToken,
    running: Option<Running>,
}

struct Running {
    cfg: MirrorConfig,
    cancel: CancellationToken,
    /// Closed when the mirror's thread has finished.
    done: tokio::sync::oneshot::Receiver<()>,
}

/// How many `nice` steps below the daemon's other threads the mirror's threads run. The
/// mirror is background work: when it and the writer or the watchers want the same core,
/// they, whose latency every reader sees, go first, and an idle core still goes to the
/// mirror. On Linux the nice value belongs to a thread, not to the process.
const NICENESS: i32 = 10;

fn lower_priority() {
    if let Err(e) = rustix::process::nice(NICENESS) {
        tracing::debug!(error = %e, "could not lower the mirror thread's priority");
    }
}

/// Runs the mirror on a thread of its own, with its own runtime, both at a lower
/// priority: its PostgreSQL protocol work, its COPY encoding and its DuckDB reads (on the
/// runtime's blocking threads) all yield to the writer and the watchers.
fn spawn(
    cfg: MirrorConfig,
    store: Arc<Store>,
    ops: mpsc::Sender<Op>,
    outbox: watch::Receiver<i64>,
    cancel: CancellationToken,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("kq-mirror-read")
        .on_thread_start(lower_priority)
        // A round reads DuckDB every few hundred milliseconds under load; its thread stays
        // rather than being started again each time.
        .thread_keep_alive(std::time::Duration::from_secs(60))
        .build()?;
    let (finished, done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kq-mirror".into())
        .spawn(move || {
            lower_priority();
            runtime.block_on(super::run(cfg, store, ops, outbox, cancel));
            let _ = finished.send(());
        })?;
    Ok(done)
}

impl Control {
    pub fn new(
        store: Arc<Store>,
        ops: mpsc::Sender<Op>,
        outbox: watch::Receiver<i64>,
        parent: CancellationToken,
    ) -> Control {
        Control {
            store,
            ops,
            outbox,
            parent,
            running: None,
        }
    }

    /// What the config asks for. An instance id that cannot be kept leaves the mirror off,
    /// and says why.
    fn wanted(config: &Config) -> Option<MirrorConfig> {
        config.postgres_url.as_ref()?;
        let kept = || {
            let instance = match &config.mirror_instance {
                Some(i) => i.clone(),
                None => super::instance_id(&config.data_dir)?,
            };
            Ok::<_, std::io::Error>((instance, super::holder_token(&config.data_dir)?))
        };
        match kept() {
            Ok((instance, holder)) => MirrorConfig::from_config(config, instance, holder),
            Err(e) => {
                tracing::error!(data_dir = %config.data_dir.display(), error = %e, "cannot keep the mirror's instance id; the postgres mirror is off");
                None
            }
        }
    }

    /// Brings the mirror in line with `config`: nothing when its settings are the same;
    /// otherwise the running one stops, the writer is told whether to keep an outbox, and
    /// the new one (if any) starts, comparing every table first.
    pub async fn apply(&mut self, config: &Config) {
        let wanted = Self::wanted(config);
        if self.running.as_ref().map(|r| &r.cfg) == wanted.as_ref() {
            return;
        }
        self.stop().await;
        // The writer records (or stops recording) before the new mirror reads anything.
        let _ = self.ops.send(Op::MirrorOn(wanted.is_some())).await;
        let (done, committed) = tokio::sync::oneshot::channel();
        let _ = self.ops.send(Op::Barrier(done)).await;
        let _ = committed.await;
        let Some(cfg) = wanted else {
            return;
        };
        tracing::info!(target = %crate::config::redact_url(&cfg.url), schema = %cfg.schema, instance = %cfg.instance, "starting the postgres mirror");
        let cancel = self.parent.child_token();
        match spawn(
            cfg.clone(),
            self.store.clone(),
            self.ops.clone(),
            self.outbox.clone(),
            cancel.clone(),
        ) {
            Ok(done) => self.running = Some(Running { cfg, cancel, done }),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the postgres mirror's thread; the mirror is off")
            }
        }
    }

    /// Stops the running mirror and waits for it.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            tracing::info!(target = %crate::config::redact_url(&r.cfg.url), "stopping the postgres mirror");
            r.cancel.cancel();
            let _ = r.done.await;
        }
    }
}
