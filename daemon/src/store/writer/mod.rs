//! The writer thread: batches ops into transactions and merges staged rows by identity.
//! This module holds the transaction loop and the dispatch of each op; the parts it calls
//! live beside it, one concern each: `objects` (object rows, the index, sweeps and
//! removals), `status` (the `contexts` and `resources` rows), `checkpoint` (when to
//! checkpoint, and whether to vacuum), `hold` (what a failed batch does), `tracking`
//! (incidents), `image_feed` (what image sizing hears), `retention`, and `outbox` (what
//! the PostgreSQL mirror still owes).

mod checkpoint;
mod hold;
mod image_feed;
mod objects;
mod outbox;
mod retention;
mod status;
mod tracking;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use duckdb::arrow::datatypes::SchemaRef;
use duckdb::types::{TimeUnit, Value};
use duckdb::{Connection, params_from_iter};
use tokio::sync::{mpsc, oneshot};

use super::health::{Health, Hold, WriteFailure};
use super::incidents::{IncidentRow, Tracker};
use super::index::{Index, Seen};
use super::{Op, StoreError, StoreOptions};
use crate::rows::{Kind, ObjectRows, Row};

pub use status::{ContextInfo, ContextState};

/// How often retention runs (it also runs at start).
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// How often the writer wakes for incident timers while some are pending.
const TICK: std::time::Duration = std::time::Duration::from_millis(200);

type Key = (Arc<str>, String);

/// What one batch has gathered while its ops are applied.
#[derive(Default)]
struct Batch {
    /// The last state of each object the batch names (`None`: deleted), by table.
    pending: BTreeMap<Kind, HashMap<Key, Option<ObjectRows>>>,
    /// Contexts whose objects changed: their counts and last-change times are rewritten.
    touched: HashSet<Arc<str>>,
    /// `contexts` and `resources` rows an op changed (a state, an error, what the
    /// kubeconfig says): rewritten in this batch.
    dirty: HashSet<String>,
    dirty_res: HashSet<ResKey>,
    /// Rows whose only news is their counts and last-change times: rewritten in this batch
    /// unless counts were written less than a second ago (see [`status::Late`]).
    counted: HashSet<String>,
    counted_res: HashSet<ResKey>,
    /// `images` rows changed: orphaned references may go.
    images_changed: bool,
}

#[derive(Debug, Clone, Default)]
struct ContextRow {
    info: ContextInfo,
    state: super::ContextPhase,
    error: Option<String>,
    last_event_at: Option<i64>,
    synced_at: Option<i64>,
    server_version: Option<String>,
    object_count: i64,
    updated_at: i64,
    cluster_id: Option<String>,
    config_error: Option<String>,
}

/// (context, API group, resource)
type ResKey = (String, String, String);

#[derive(Debug, Clone, Default)]
struct ResourceRow {
    state: crate::store::ResourcePhase,
    error: Option<String>,
    object_count: i64,
    last_event_at: Option<i64>,
    synced_at: Option<i64>,
}

/// Owns the writing connection. Only this type writes DuckDB.
pub struct Writer {
    conn: Connection,
    opts: StoreOptions,
    contexts: BTreeMap<String, ContextRow>,
    /// The Arrow schema of each inventory table, for building record batches.
    schemas: HashMap<&'static str, SchemaRef>,
    /// What the database holds, by identity; see [`Index`].
    index: Index,
    /// The schema was migrated at this start: stored rows are rewritten by the next list.
    migrated: bool,
    /// Turns what pods, jobs, nodes and Warning events show into `incidents` rows.
    tracker: Tracker,
    /// Incidents written, published once their transaction commits.
    follow: tokio::sync::broadcast::Sender<Arc<IncidentRow>>,
    /// The `resources` rows, kept here and rewritten when they change.
    resources: BTreeMap<ResKey, ResourceRow>,
    /// Told when a batch is lost, so that every context relists.
    resync: tokio::sync::watch::Sender<u64>,
    /// Image sizing's inbox, when it is on; the image references already sent to it; and,
    /// for pods that name pull secrets, the (context, namespace)s each was sent with. Both
    /// are looked up by `&str` on every pod event, so that a known reference costs no
    /// allocation.
    sightings: Option<tokio::sync::mpsc::UnboundedSender<crate::images::Sighting>>,
    seen_refs: HashSet<String>,
    seen_secret_refs: HashMap<String, Vec<(Arc<str>, String)>>,
    /// The database file, named in errors.
    path: std::path::PathBuf,
    /// What readers are told is wrong with the store.
    health: Arc<Health>,
    /// Set while writes fail: why, and how long to wait before trying again.
    hold: Option<Hold>,
    /// What the current transaction owes the PostgreSQL mirror.
    outbox: outbox::Outbox,
    /// The last `changes.seq` given.
    changes_seq: i64,
    /// When to checkpoint next, and whether that checkpoint vacuums.
    checkpoints: checkpoint::Checkpoints,
    /// Status rows whose counts moved since they were last written, not yet rewritten.
    late: status::Late,
}

fn now_micros() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

fn ts(v: Option<i64>) -> Value {
    v.map_or(Value::Null, |t| Value::Timestamp(TimeUnit::Microsecond, t))
}

/// Until when a batch whose first op was taken `now` waits for more ops when the channel runs
/// empty (it takes what is queued in any case). The window coalesces ops that arrive close
/// together into one transaction, with at most one commit per `interval`. Ops that queued
/// while the last batch was written have already waited out that write, so holding them
/// for a whole window again would only add to their latency; but when the channel is half
/// full or more (`behind`: the initial sync, a storm of events), a whole window makes the
/// larger batches that let the writer catch up.
fn batch_deadline(
    now: Instant,
    closed_at: Instant,
    interval: std::time::Duration,
    behind: bool,
) -> Instant {
    if behind {
        now + interval
    } else {
        (closed_at + interval).max(now)
    }
}

/// Takes ops after `first` into one batch until the deadline passes with the channel
/// empty, or the batch reaches `batch_max` ops or `batch_bytes` of text; returns it, and
/// whether every sender is gone.
fn collect_batch(
    rt: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<Op>,
    first: Op,
    deadline: Instant,
    opts: &StoreOptions,
) -> (Vec<Op>, bool) {
    let mut bytes = first.text_bytes();
    let mut batch = vec![first];
    while batch.len() < opts.batch_max && bytes < opts.batch_bytes {
        let op = match rx.try_recv() {
            Ok(op) => op,
            Err(mpsc::error::TryRecvError::Disconnected) => return (batch, true),
            Err(mpsc::error::TryRecvError::Empty) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match rt.block_on(async { tokio::time::timeout(left, rx.recv()).await }) {
                    Ok(Some(op)) => op,
                    Ok(None) => return (batch, true),
                    Err(_) => break,
                }
            }
        };
        bytes += op.text_bytes();
        batch.push(op);
    }
    (batch, false)
}

impl Writer {
    /// `migrated`: the schema changed at this start, so stored rows may lack new columns.
    pub fn new(
        conn: Connection,
        opts: StoreOptions,
        resync: tokio::sync::watch::Sender<u64>,
        migrated: bool,
        follow: tokio::sync::broadcast::Sender<Arc<IncidentRow>>,
        path: std::path::PathBuf,
        health: Arc<Health>,
    ) -> Result<Writer, StoreError> {
        // `kq_stage.keys` names the objects a relist found, for its sweep; it is emptied
        // inside every transaction, so it never holds rows between batches.
        conn.execute_batch(
            "CREATE SCHEMA IF NOT EXISTS kq_stage;
             CREATE OR REPLACE TABLE kq_stage.keys (context VARCHAR, uid VARCHAR);
             CREATE OR REPLACE TABLE kq_stage.owed AS SELECT * FROM main.kq_mirror_outbox LIMIT 0;
             CREATE OR REPLACE TABLE kq_stage.resources AS
               SELECT state, error, object_count, last_event_at, synced_at, context, api_group, resource
                 FROM main.resources LIMIT 0;",
        )?;
        let mut schemas = HashMap::new();
        for t in Kind::ALL
            .iter()
            .map(|k| k.table())
            .chain(["containers", "changes"])
        {
            let schema = conn
                .prepare(&format!("SELECT * FROM main.{t} LIMIT 0"))?
                .query_arrow([])?
                .get_schema();
            schemas.insert(t, schema);
        }
        let started = Instant::now();
        let index = Index::load(&conn, !migrated)?;
        let tracker = Tracker::load(&conn, opts.incidents.clone())?;
        let dead = checkpoint::stored_dead_rows(&conn)?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            live = index.len(),
            dead,
            "loaded the index of stored objects"
        );
        // Contexts found in the file from an earlier run start as `connecting` until their
        // supervisor reports; the daemon removes the ones no longer configured.
        let mut contexts = BTreeMap::new();
        {
            let mut stmt = conn.prepare(
                "SELECT name, cluster, server, \"user\", namespace, source_file FROM contexts",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(ContextInfo {
                    name: r.get(0)?,
                    cluster: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    server: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    user: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    namespace: r.get(4)?,
                    source_file: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                })
            })?;
            for info in rows {
                let info = info?;
                contexts.insert(
                    info.name.clone(),
                    ContextRow {
                        info,
                        state: super::ContextPhase::Connecting,
                        ..Default::default()
                    },
                );
            }
        }
        // Resource states are rebuilt by this run's watchers, and registry counts are this
        // run's.
        conn.execute_batch("DELETE FROM main.resources; DELETE FROM main.registries;")?;
        let mut outbox = outbox::Outbox::load(&conn, opts.mirror)?;
        outbox.part("resources", None);
        outbox.part("registries", None);
        let changes_seq: i64 =
            conn.query_row("SELECT coalesce(max(seq), 0) FROM main.changes", [], |r| {
                r.get(0)
            })?;
        Ok(Writer {
            conn,
            opts,
            contexts,
            schemas,
            index,
            migrated,
            tracker,
            follow,
            resources: BTreeMap::new(),
            resync,
            sightings: None,
            seen_refs: HashSet::new(),
            seen_secret_refs: HashMap::new(),
            path,
            health,
            hold: None,
            outbox,
            changes_seq,
            checkpoints: checkpoint::Checkpoints::new(Instant::now(), dead),
            late: status::Late::default(),
        })
    }

    /// Where to say, after each commit that recorded something, the outbox's last number.
    pub fn wake_on_commit(&mut self, tx: tokio::sync::watch::Sender<i64>) {
        self.outbox.committed = Some(tx);
    }

    /// Tells `tx` the tables each commit wrote.
    pub fn tell_commits(&mut self, tx: tokio::sync::broadcast::Sender<crate::store::Committed>) {
        self.outbox.commits = Some(tx);
    }

    /// Runs until every sender is gone, then checkpoints the database.
    pub fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut pruned_at: Option<Instant> = None;
        // When the last batch stopped taking ops, for the next one's window.
        let mut closed_at = Instant::now();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime builds");
        loop {
            self.checkpoint_if_due();
            // Retention runs at start and then between batches, at most every PRUNE_EVERY.
            if pruned_at.is_none_or(|t: Instant| t.elapsed() > PRUNE_EVERY) {
                if let Err(e) = self.prune() {
                    tracing::warn!(error = %e, "pruning old changes and events failed; will retry");
                }
                pruned_at = Some(Instant::now());
            }
            // While writes fail, the next attempt waits out the hold; with nothing to write
            // by then, a small write of the status rows tells whether writing works again.
            if let Some(wait) = self.hold.as_ref().map(|h| h.wait) {
                let deadline = Instant::now() + wait;
                match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                    Ok(Some(op)) => {
                        let closed = self.write_held(op, &mut rx, deadline);
                        if closed {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => self.probe(),
                }
                continue;
            }
            // Incidents waiting out a grace period or a healthy pod's probation, and counts
            // held back, need the writer to wake without ops.
            let wake = [
                self.tracker.waiting().then_some(TICK),
                self.late
                    .due()
                    .map(|due| due.saturating_duration_since(Instant::now())),
            ]
            .into_iter()
            .flatten()
            .min();
            let first = match wake {
                Some(wait) => {
                    match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                        Ok(Some(op)) => Some(op),
                        Ok(None) => break,
                        Err(_) => None,
                    }
                }
                None => match rx.blocking_recv() {
                    Some(op) => Some(op),
                    None => break,
                },
            };
            if self.tracker.due(now_micros()) {
                self.tick_incidents();
            }
            let Some(first) = first else {
                self.write_late_if_due();
                continue;
            };
            let deadline = batch_deadline(
                Instant::now(),
                closed_at,
                self.opts.batch_interval,
                rx.len() + 1 >= rx.max_capacity() / 2,
            );
            let (batch, closed) = collect_batch(&rt, &mut rx, first, deadline, &self.opts);
            closed_at = Instant::now();
            self.write_batch(batch);
            if closed {
                break;
            }
        }
        // Counts held back are written before the stop.
        self.late.expire();
        self.write_late_if_due();
        // The last checkpoint vacuums if a vacuum is owed, whatever the load: no event waits
        // for it any more. A vacuum rewrites most of the file (seconds at 100k pods), so the
        // log says how long the stop spent on it.
        let started = Instant::now();
        let last = self.checkpoints.at_stop(self.index.len() as u64);
        if let Err(e) = self.conn.execute_batch(&last.sql()) {
            tracing::warn!(error = %e, "final checkpoint failed; the WAL will be replayed at next start");
        }
        tracing::info!(
            vacuum = last == checkpoint::Checkpoint::Vacuuming,
            final_checkpoint_ms = started.elapsed().as_millis() as u64,
            "store writer stopped"
        );
    }

    /// Checkpoints once the WAL has passed the threshold. DuckDB's automatic checkpoint ran
    /// inside the `COMMIT` that crossed it, for seconds at 100k pods, and only then could
    /// the mirror and the commit followers hear of that commit. Here they have heard, and
    /// read while it runs: a checkpoint does not hold readers up, only the next write.
    /// Whether it vacuums is the load's call (see [`checkpoint`]).
    fn checkpoint_if_due(&mut self) {
        let wal = super::wal_path(&self.path);
        let wal_bytes = std::fs::metadata(&wal).map_or(0, |m| m.len());
        let now = Instant::now();
        let live = self.index.len() as u64;
        let dead = self.checkpoints.dead;
        let Some(kind) = self
            .checkpoints
            .due(wal_bytes, self.opts.checkpoint_threshold, live, now)
        else {
            return;
        };
        match self.conn.execute_batch(&kind.sql()) {
            Ok(()) => {
                self.checkpoints.succeeded(kind, Instant::now());
                tracing::debug!(
                    wal_bytes,
                    live,
                    dead,
                    vacuum = kind == checkpoint::Checkpoint::Vacuuming,
                    elapsed_ms = now.elapsed().as_millis() as u64,
                    "checkpointed"
                );
            }
            Err(e) if e.to_string().contains("other write transactions active") => {
                // Another connection's transaction holds DuckDB's checkpoint lock (seen
                // while the mirror reads, for up to a few seconds); DuckDB's
                // automatic checkpoint skipped quietly then too. The next turn tries again.
                tracing::debug!(
                    wal_bytes,
                    "checkpoint deferred: another transaction holds the checkpoint lock"
                );
            }
            Err(e) => {
                // A full disk fails here too; the WAL keeps every commit meanwhile, and
                // writes say what is wrong in the status tables.
                self.checkpoints.failed(now);
                tracing::warn!(path = %self.path.display(), wal_bytes, error = %e, "checkpoint failed; will retry");
            }
        }
    }

    /// Writes one batch, answers its barriers, and handles a failure.
    fn write_batch(&mut self, batch: Vec<Op>) {
        let n = batch.len();
        let started = Instant::now();
        self.checkpoints.load.record(n, started);
        let mut barriers = Vec::new();
        match self.apply(batch, &mut barriers) {
            Ok(()) => {
                tracing::trace!(
                    ops = n,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "committed batch"
                );
                self.recovered();
            }
            Err(e) => self.failed(&e, n),
        }
        // Barriers ask whether the writer moves, and it does, written or not.
        for b in barriers {
            let _ = b.send(());
        }
    }

    /// Writes the status rows held back once they are due, in a transaction of their own:
    /// no batch came to take them.
    fn write_late_if_due(&mut self) {
        if self.late.due().is_some_and(|due| due <= Instant::now()) {
            self.write_batch(Vec::new());
        }
    }

    /// Rebuilds the incident tracker from the database, after a rollback.
    fn reload_tracker(&mut self) {
        match Tracker::load(&self.conn, self.opts.incidents.clone()) {
            Ok(t) => self.tracker = t,
            Err(e) => tracing::error!(error = %e, "cannot reload the incidents"),
        }
    }

    /// Sends committed incident rows to followers (none listening is fine).
    fn publish(&mut self) {
        for row in self.tracker.take_written() {
            let _ = self.follow.send(Arc::new(row));
        }
    }

    fn cluster_ids(&self) -> HashMap<String, Option<String>> {
        self.contexts
            .iter()
            .map(|(k, v)| (k.clone(), v.cluster_id.clone()))
            .collect()
    }

    /// Rebuilds the index from the database, after a rollback or a bulk delete.
    fn reload_index(&mut self) {
        match Index::load(&self.conn, !self.migrated) {
            Ok(mut index) => {
                index.adopt_secrets(std::mem::take(&mut self.index));
                self.index = index;
            }
            Err(e) => tracing::error!(error = %e, "cannot reload the index of stored objects"),
        }
    }

    /// Applies one batch in one transaction: every op, then the rows they left pending, the
    /// counts and the status rows. Barriers are answered by the caller, applied or not.
    fn apply(
        &mut self,
        ops: Vec<Op>,
        barriers: &mut Vec<oneshot::Sender<()>>,
    ) -> Result<(), StoreError> {
        let mut rest = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Barrier(done) => barriers.push(done),
                op => rest.push(op),
            }
        }
        self.in_transaction(|w| {
            let mut b = Batch::default();
            rest.into_iter().try_for_each(|op| w.apply_op(&mut b, op))?;
            w.finish(b)
        })?;
        self.publish();
        Ok(())
    }

    /// Runs `f` in a transaction: committed when it succeeds, rolled back when it or the
    /// commit fails.
    fn in_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.conn.execute_batch("BEGIN TRANSACTION")?;
        let result = f(self).and_then(|v| {
            // What the transaction owes the mirror commits with it, or not at all.
            let t = Instant::now();
            self.write_outbox()?;
            let outbox_ms = t.elapsed().as_millis() as u64;
            let t = Instant::now();
            self.conn.execute_batch("COMMIT")?;
            tracing::trace!(
                outbox_ms,
                commit_ms = t.elapsed().as_millis() as u64,
                "committed"
            );
            Ok(v)
        });
        match result {
            Ok(_) => self.outbox.committed(),
            Err(_) => {
                self.outbox.clear();
                // A failed COMMIT (a full disk fails there) leaves nothing to roll back;
                // the ROLLBACK is then refused, which is fine.
                let _ = self.conn.execute_batch("ROLLBACK");
            }
        }
        result
    }

    /// One op of a batch: object rows wait in `b.pending` (so a batch keeps an object's last
    /// state only), status changes go to the writer's rows and mark them dirty.
    fn apply_op(&mut self, b: &mut Batch, op: Op) -> Result<(), StoreError> {
        match op {
            Op::Upsert {
                kind,
                context,
                mut rows,
            } => {
                if let Some(s) = rows.images.take() {
                    self.forward_images(*s);
                }
                b.touched.insert(context.clone());
                b.counted_res
                    .insert(objects::resource_of(kind, &context, &rows));
                let earlier = b
                    .pending
                    .entry(kind)
                    .or_default()
                    .insert((context.clone(), rows.uid.clone()), Some(rows));
                self.observe_superseded(&context, earlier)?;
            }
            Op::Delete { kind, context, uid } => {
                b.touched.insert(context.clone());
                let earlier = b
                    .pending
                    .entry(kind)
                    .or_default()
                    .insert((context.clone(), uid), None);
                self.observe_superseded(&context, earlier)?;
            }
            Op::Sweep {
                kind,
                context,
                keep,
                scope,
            } => {
                // Tables are independent, so only this kind's b.pending rows must land
                // before its sweep; the rest keep batching.
                self.flush_kind(&mut b.pending, kind)?;
                b.touched.insert(context.clone());
                self.sweep(kind, &context, &keep, scope.as_ref())?;
                if kind == Kind::Nodes {
                    self.forward_images(crate::images::Sighting::NodesListed {
                        context: context.clone(),
                    });
                }
            }
            Op::RemoveResource {
                context,
                group,
                resource,
            } => {
                self.flush_kind(&mut b.pending, Kind::Objects)?;
                b.touched.insert(context.clone());
                self.remove_resource(&context, &group, &resource)?;
            }
            Op::ContextInfo(info) => {
                let row = self.contexts.entry(info.name.clone()).or_default();
                row.info = info.clone();
                b.dirty.insert(info.name);
            }
            Op::ContextState(s) => {
                let row = self.contexts.entry(s.name.clone()).or_default();
                row.info.name = s.name.clone();
                row.state = s.state;
                row.error = s.error;
                if s.server_version.is_some() {
                    row.server_version = s.server_version;
                }
                if s.synced {
                    row.synced_at = Some(now_micros());
                }
                b.dirty.insert(s.name);
            }
            Op::ResourceState {
                context,
                group,
                resource,
                state,
                error,
            } => {
                let count = self.index.count(&context, &group, &resource);
                let key = (context.to_string(), group, resource);
                let row = self.resources.entry(key.clone()).or_default();
                row.object_count = count;
                row.state = state;
                row.error = error;
                if state == super::ResourcePhase::Ready {
                    row.synced_at = Some(now_micros());
                }
                b.dirty_res.insert(key);
            }
            Op::ContextConfigError { name, error } => {
                let row = self.contexts.entry(name.clone()).or_default();
                if row.config_error != error {
                    row.config_error = error;
                    b.dirty.insert(name);
                }
            }
            Op::ClusterId { name, cluster_id } => {
                let row = self.contexts.entry(name.clone()).or_default();
                row.cluster_id = cluster_id;
                b.dirty.insert(name);
            }
            Op::RemoveContext { name } => {
                self.flush(&mut b.pending)?;
                self.remove_context(&name)?;
                b.touched.retain(|c| **c != *name);
                b.dirty.remove(&name);
            }
            Op::Image(found) => {
                super::images::write(&self.conn, &found)?;
                self.outbox.part("images", None);
                self.outbox.part("image_refs", None);
                b.images_changed = true;
            }
            Op::Registries(all) => {
                super::images::write_registries(&self.conn, &all)?;
                self.outbox.part("registries", None);
            }
            Op::MirrorOn(on) => self.mirror_on(on)?,
            Op::MirrorAck(read) => self.acknowledge(&read)?,
            Op::MirrorStatus(status) => self.write_mirror_status(&status)?,
            Op::ImageSightings(tx) => self.sightings = Some(tx),
            Op::CrashLog {
                context,
                incident,
                marker,
                log,
            } => {
                self.tracker
                    .set_last_log(&self.conn, &context, &incident, &marker, log)?;
            }
            // Taken out of the batch before it is applied.
            Op::Barrier(done) => drop(done),
        }
        Ok(())
    }

    /// The end of a batch: pending rows are written, counts taken from the index, and the
    /// status rows the batch touched rewritten.
    fn finish(&mut self, mut b: Batch) -> Result<(), StoreError> {
        if b.images_changed {
            super::images::drop_orphans(&self.conn)?;
        }
        let t = Instant::now();
        self.flush(&mut b.pending)?;
        tracing::trace!(flush_ms = t.elapsed().as_millis() as u64, "flushed");
        let t = Instant::now();
        let now = now_micros();
        // Counts come from the index, which the flush kept current.
        for (ctx, group, resource, n) in self.index.take_changed() {
            let key = (ctx.to_string(), group, resource);
            if let Some(row) = self.resources.get_mut(&key) {
                row.object_count = n;
                b.counted_res.insert(key);
            }
        }
        for ctx in &b.touched {
            if let Some(row) = self.contexts.get_mut(&**ctx) {
                row.last_event_at = Some(now);
                row.object_count = self.index.total(ctx);
                b.counted.insert(ctx.to_string());
            }
        }
        for key in b.dirty_res.iter().chain(&b.counted_res) {
            if let Some(row) = self.resources.get_mut(key) {
                row.last_event_at = Some(now);
            }
        }
        self.late.settle(&mut b, Instant::now());
        self.write_contexts(b.dirty.iter(), now)?;
        self.write_resources(b.dirty_res.iter())?;
        tracing::trace!(
            contexts = b.dirty.len(),
            resources = b.dirty_res.len(),
            status_ms = t.elapsed().as_millis() as u64,
            "wrote status rows"
        );
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    #[test]
    fn a_batch_waits_out_its_window_only_when_the_writer_is_behind_or_just_committed() {
        let window = std::time::Duration::from_millis(50);
        let now = Instant::now() + std::time::Duration::from_secs(10);
        let ms = std::time::Duration::from_millis;
        // Ops that queued during a long write, or the first op after a quiet spell, go now.
        assert_eq!(batch_deadline(now, now - ms(200), window, false), now);
        // Right after a short write, the window keeps commits at most one per 50 ms.
        assert_eq!(
            batch_deadline(now, now - ms(20), window, false),
            now + ms(30)
        );
        // A channel half full: a whole window, for a batch large enough to catch up.
        assert_eq!(
            batch_deadline(now, now - ms(200), window, true),
            now + window
        );
    }

    #[test]
    fn a_batch_closes_at_its_op_count_or_its_bytes_of_text_whichever_comes_first() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // Every pod of this test carries the same text (its name has the same length).
        let one = running("p0").text_bytes();
        assert!(one > 0);
        let batches = |opts: &StoreOptions| {
            let (tx, mut rx) = mpsc::channel(64);
            for i in 0..10 {
                tx.try_send(running(&format!("p{i}"))).unwrap();
            }
            let mut sizes = Vec::new();
            while let Ok(first) = rx.try_recv() {
                let (batch, closed) = collect_batch(&rt, &mut rx, first, Instant::now(), opts);
                assert!(!closed, "the sender is still there");
                sizes.push(batch.len());
            }
            sizes
        };
        let opts = |batch_max, batch_bytes| StoreOptions {
            batch_max,
            batch_bytes,
            ..StoreOptions::default()
        };
        // Small pods under the default limits: one transaction.
        assert_eq!(batches(&StoreOptions::default()), [10]);
        // Closed by bytes once it holds three pods' text, however many ops it may take.
        assert_eq!(batches(&opts(1000, 3 * one)), [3, 3, 3, 1]);
        // Closed by count when that comes first.
        assert_eq!(batches(&opts(4, 1 << 30)), [4, 4, 2]);
    }

    /// A writer over a fresh, migrated database file, with what it reports to.
    pub(super) struct Fixture {
        pub(super) writer: Writer,
        pub(super) resync: tokio::sync::watch::Receiver<u64>,
        pub(super) follow: tokio::sync::broadcast::Receiver<Arc<IncidentRow>>,
        pub(super) health: Arc<Health>,
        /// Another connection to the same database, as a reader (or a meddler) has.
        pub(super) other: Connection,
        _dir: tempfile::TempDir,
    }

    pub(super) fn fixture(opts: StoreOptions) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kq.duckdb");
        let (conn, migrated) = super::super::open_and_migrate(&path, &opts).unwrap();
        let other = conn.try_clone().unwrap();
        let (resync_tx, resync) = tokio::sync::watch::channel(0);
        let (follow_tx, follow) = tokio::sync::broadcast::channel(16);
        let health = Arc::new(Health::default());
        let writer = Writer::new(
            conn,
            opts,
            resync_tx,
            migrated,
            follow_tx,
            path,
            health.clone(),
        )
        .unwrap();
        Fixture {
            writer,
            resync,
            follow,
            health,
            other,
            _dir: dir,
        }
    }

    pub(super) fn ctx() -> Arc<str> {
        Arc::from("test")
    }

    pub(super) fn pod(name: &str, status: serde_json::Value) -> Op {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "resourceVersion": "1", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "main", "image": "nginx:1"}]},
            "status": status,
        }))
        .unwrap();
        Op::Upsert {
            kind: Kind::Pods,
            context: ctx(),
            rows: crate::rows::pod(&ctx(), &p),
        }
    }

    pub(super) fn running(name: &str) -> Op {
        pod(
            name,
            json!({"phase": "Running", "containerStatuses": [{"name": "main", "image": "nginx:1",
                   "imageID": "", "ready": true, "restartCount": 0,
                   "state": {"running": {"startedAt": "2020-01-01T00:00:00Z"}}}]}),
        )
    }

    /// The size of the fixture's WAL (0 once it is checkpointed away).
    fn wal_bytes(f: &Fixture) -> u64 {
        std::fs::metadata(super::super::wal_path(&f.writer.path)).map_or(0, |m| m.len())
    }

    pub(super) fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn the_writer_checkpoints_past_the_threshold_only_after_the_commit_was_told() {
        let mut f = fixture(StoreOptions {
            checkpoint_threshold: 1,
            ..StoreOptions::default()
        });
        let (tx, mut commits) = tokio::sync::broadcast::channel(16);
        f.writer.tell_commits(tx);
        f.writer.write_batch(vec![running("a")]);
        // The commit is told while its WAL is still there: DuckDB did not checkpoint
        // inside the COMMIT, before anyone could hear of it.
        assert!(commits.try_recv().unwrap().contains(&"pods"));
        assert!(wal_bytes(&f) > 0, "DuckDB checkpointed inside the COMMIT");
        f.writer.checkpoint_if_due();
        assert_eq!(
            wal_bytes(&f),
            0,
            "past the threshold, the writer checkpointed"
        );
        assert_eq!(count(&f.other, "SELECT count(*) FROM pods"), 1);

        // Another connection's open write (an update) defers the checkpoint, which is
        // not a failure: the next turn tries again and succeeds once that is done.
        f.writer.write_batch(vec![running("b")]);
        f.other
            .execute_batch("BEGIN TRANSACTION; UPDATE pods SET phase = phase WHERE name = 'a'")
            .unwrap();
        f.writer.checkpoint_if_due();
        assert!(wal_bytes(&f) > 0, "checkpointed under another open write");
        assert!(
            f.writer.checkpoints.retry_at.is_none(),
            "a deferral is not a failure"
        );
        f.other.execute_batch("COMMIT").unwrap();
        f.writer.checkpoint_if_due();
        assert_eq!(
            wal_bytes(&f),
            0,
            "the checkpoint came once the other write was done"
        );

        // Under the threshold the WAL stays until it grows past it.
        let mut f = fixture(StoreOptions::default());
        f.writer.write_batch(vec![running("c")]);
        f.writer.checkpoint_if_due();
        assert!(wal_bytes(&f) > 0, "a small WAL was checkpointed");
    }

    #[test]
    fn the_writer_vacuums_once_half_its_rows_were_deleted_and_the_load_is_light() {
        let mut f = fixture(StoreOptions {
            checkpoint_threshold: 1,
            ..StoreOptions::default()
        });
        let row_groups = |f: &Fixture| {
            count(
                &f.other,
                "SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('objects')",
            )
        };
        // Three row groups of objects, then nine rows in ten deleted, as churn does: the
        // live rows fit in one row group, so a vacuum would merge them. They were written
        // behind the writer's back, so its count of deleted rows does not know of them.
        f.other
            .execute_batch(
                "INSERT INTO objects (context, name, uid, object)
                 SELECT 'c', 'o' || i, 'u' || i, json_object('i', i) FROM range(300000) t(i);
                 CHECKPOINT;
                 DELETE FROM objects WHERE name NOT LIKE '%0';",
            )
            .unwrap();
        assert_eq!(row_groups(&f), 3);

        // Two pods stored, one changed: one row in two deleted is not yet half the live rows.
        f.writer.write_batch(vec![running("a"), running("b")]);
        f.writer.checkpoint_if_due();
        assert_eq!(wal_bytes(&f), 0, "the writer checkpointed");
        assert_eq!(
            row_groups(&f),
            3,
            "a light load vacuumed with nothing deleted"
        );
        // Pod `a` at a later resourceVersion: a modify, which deletes its old rows.
        let changed = |rv: &str| {
            let p: Pod = serde_json::from_value(json!({
                "metadata": {"name": "a", "namespace": "default", "uid": "uid-a",
                             "resourceVersion": rv, "creationTimestamp": "2020-01-01T00:00:00Z"},
                "spec": {"containers": [{"name": "main", "image": "nginx:1"}]},
            }))
            .unwrap();
            Op::Upsert {
                kind: Kind::Pods,
                context: ctx(),
                rows: crate::rows::pod(&ctx(), &p),
            }
        };
        f.writer.write_batch(vec![changed("2")]);
        assert_eq!(f.writer.checkpoints.dead, 1);
        f.writer.checkpoints.load.record(100_000, Instant::now());
        f.writer.checkpoint_if_due();
        assert_eq!(wal_bytes(&f), 0, "the busy writer checkpointed");
        assert_eq!(row_groups(&f), 3, "a busy checkpoint vacuumed");

        // Once the load is light, the next change's checkpoint pays the vacuum.
        f.writer.checkpoints.load = checkpoint::Load::new(Instant::now());
        f.writer.write_batch(vec![changed("3")]);
        f.writer.checkpoint_if_due();
        assert_eq!(row_groups(&f), 1, "the vacuum never came");
        assert_eq!(f.writer.checkpoints.dead, 0);
        // The merge lost no row (the fixture's pods come without `objects` rows).
        assert_eq!(count(&f.other, "SELECT count(*) FROM objects"), 30_000);
        assert_eq!(count(&f.other, "SELECT count(*) FROM pods"), 2);
    }

    #[test]
    fn a_restarted_writer_counts_the_deleted_rows_in_its_file_and_vacuums_at_a_stop_only_when_owed()
    {
        let f = fixture(StoreOptions::default());
        let row_groups = || {
            count(
                &f.other,
                "SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('objects')",
            )
        };
        // A writer started on the file, as kqd's next run would start it, and stopped.
        let restart = || {
            let (resync, _resync_rx) = tokio::sync::watch::channel(0);
            let (follow, _follow_rx) = tokio::sync::broadcast::channel(16);
            let writer = Writer::new(
                f.other.try_clone().unwrap(),
                StoreOptions::default(),
                resync,
                false,
                follow,
                f.writer.path.clone(),
                Arc::new(Health::default()),
            )
            .unwrap();
            let counted = (writer.checkpoints.dead, writer.index.len());
            let (tx, rx) = mpsc::channel(1);
            drop(tx);
            writer.run(rx);
            counted
        };
        // Five row groups of objects (four of 122,880 rows), then every other row of the first
        // two deleted, behind any writer: a vacuum would merge those two into one, but a fifth
        // of the rows is not the share at which one is owed.
        let i = "CAST(substr(name, 2) AS INTEGER)";
        f.other
            .execute_batch(&format!(
                "INSERT INTO objects (context, name, uid, resource_version, api_group, resource, object)
                 SELECT 'c', 'o' || i, 'u' || i, '1', '', 'widgets', json_object('i', i)
                   FROM range(600000) t(i);
                 CHECKPOINT;
                 DELETE FROM objects WHERE {i} < 245760 AND {i} % 2 = 0;"
            ))
            .unwrap();
        assert_eq!(row_groups(), 5);
        assert_eq!(restart(), (122_880, 477_120), "deleted and live rows");
        assert_eq!(row_groups(), 5, "a stop vacuumed with no vacuum owed");

        // Nine in ten of the rest deleted too: the next run's stop pays the vacuum, and loses
        // no live row.
        f.other
            .execute_batch(&format!(
                "DELETE FROM objects WHERE {i} >= 245760 AND {i} % 10 <> 0;"
            ))
            .unwrap();
        assert_eq!(restart(), (441_696, 158_304));
        assert_eq!(row_groups(), 2, "the owed vacuum never came");
        assert_eq!(count(&f.other, "SELECT count(*) FROM objects"), 158_304);
        assert_eq!(restart(), (0, 158_304), "the vacuum left deleted rows");
    }

    #[test]
    fn a_failed_batch_rolls_back_reloads_the_index_holds_and_relists_once_writes_succeed() {
        let mut f = fixture(StoreOptions::default());
        f.writer.write_batch(vec![running("kept")]);
        assert_eq!(count(&f.other, "SELECT count(*) FROM pods"), 1);
        assert_eq!(f.writer.index.total("test"), 1);

        // A table the batch needs is gone: the batch fails as a whole.
        f.other
            .execute_batch("ALTER TABLE containers RENAME TO containers_away")
            .unwrap();
        f.writer.write_batch(vec![running("lost")]);
        assert_eq!(
            count(&f.other, "SELECT count(*) FROM pods"),
            1,
            "the pod row of the failed batch was rolled back with it"
        );
        assert_eq!(
            f.writer.index.total("test"),
            1,
            "the index was reloaded from the file"
        );
        let hold = f.writer.hold.clone().expect("the writer holds");
        assert!(
            matches!(hold.cause, WriteFailure::Other { .. }),
            "{:?}",
            hold.cause
        );
        assert!(
            !f.resync.has_changed().unwrap(),
            "no relist while writes fail"
        );

        // Still failing: the next attempt extends the hold and still does not relist.
        f.writer.write_batch(vec![running("lost")]);
        assert_eq!(f.writer.hold.as_ref().map(|h| h.failures), Some(2));
        assert!(!f.resync.has_changed().unwrap());

        // Writes succeed again: the hold ends and every context relists, once.
        f.other
            .execute_batch("ALTER TABLE containers_away RENAME TO containers")
            .unwrap();
        f.writer.probe();
        assert!(f.writer.hold.is_none());
        assert!(f.resync.has_changed().unwrap());
        assert_eq!(*f.resync.borrow_and_update(), 1);
        let conn = f.other.try_clone().unwrap();
        let mut seen = 0;
        f.health.apply_to(&conn, &mut seen).unwrap();
        let error: Option<String> = conn
            .query_row("SELECT getvariable('kq_write_error')::VARCHAR", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(error, None, "readers are told writes work again");
        // The relist that follows writes the lost pod.
        f.writer.write_batch(vec![running("lost")]);
        assert_eq!(count(&f.other, "SELECT count(*) FROM pods"), 2);
    }

    #[test]
    fn a_failed_incident_tick_rolls_back_and_publishes_nothing() {
        let mut opts = StoreOptions::default();
        opts.incidents.image_pull_grace = std::time::Duration::from_millis(1);
        opts.incidents.healthy_after = std::time::Duration::from_millis(1);
        let mut f = fixture(opts);
        // A pod that crashed once and runs again (healthy since long ago, so its timer is
        // due), and a pod whose image pull fails (due after its grace).
        f.writer.write_batch(vec![pod(
            "recovered",
            json!({"phase": "Running", "containerStatuses": [{"name": "main", "image": "nginx:1",
                   "imageID": "", "ready": true, "restartCount": 1,
                   "state": {"running": {"startedAt": "2020-01-01T00:10:00Z"}},
                   "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                       "startedAt": "2020-01-01T00:00:00Z", "finishedAt": "2020-01-01T00:05:00Z"}}}]}),
        )]);
        assert_eq!(
            count(
                &f.other,
                "SELECT count(*) FROM incidents WHERE resolved_at IS NULL"
            ),
            1
        );
        f.writer.write_batch(vec![pod(
            "pulling",
            json!({"phase": "Pending", "containerStatuses": [{"name": "main", "image": "nginx:1",
                   "imageID": "", "ready": false, "restartCount": 0,
                   "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}),
        )]);
        // What those batches committed (the long-Pending pod's incident) is published.
        while f.follow.try_recv().is_ok() {}
        let due = Instant::now() + std::time::Duration::from_secs(5);
        while !f.writer.tracker.due(now_micros()) {
            assert!(Instant::now() < due, "the timers never fell due");
        }
        // Another transaction holds the open incident's row: the tick records the image
        // pull, then fails to resolve the crash, and rolls both back.
        f.other
            .execute_batch("BEGIN; DELETE FROM incidents WHERE resolved_at IS NULL")
            .unwrap();
        f.writer.tick_incidents();
        f.other.execute_batch("ROLLBACK").unwrap();
        assert_eq!(
            count(
                &f.other,
                "SELECT count(*) FROM incidents WHERE type = 'image_pull'"
            ),
            0,
            "the tick was rolled back"
        );
        let published = f.follow.try_recv();
        assert!(
            published.is_err(),
            "a rolled-back incident was published to followers: {:?}",
            published.map(|r| (r.typ.clone(), r.object_name.clone()))
        );
    }
}
