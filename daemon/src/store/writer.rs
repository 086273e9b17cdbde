//! The writer thread: batches ops into transactions and merges staged rows by identity.

use std::collections::{BTreeMap, HashMap, HashSet};
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

/// How often retention runs (it also runs at start).
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// How often the writer wakes for incident timers while some are pending.
const TICK: std::time::Duration = std::time::Duration::from_millis(200);

/// Facts about a context that come from the kubeconfig.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContextInfo {
    pub name: String,
    pub cluster: String,
    pub server: String,
    pub user: String,
    pub namespace: Option<String>,
    pub source_file: String,
}

/// A change of a context's connection state.
#[derive(Debug, Clone)]
pub struct ContextState {
    pub name: String,
    pub state: super::ContextPhase,
    pub error: Option<String>,
    pub server_version: Option<String>,
    /// The initial list of every watched kind completed.
    pub synced: bool,
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

type Key = (Arc<str>, String);

/// (context, API group, resource)
type ResKey = (String, String, String);

#[derive(Debug, Clone, Default)]
struct ResourceRow {
    state: super::ResourcePhase,
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
}

/// While writes fail, how many ops a batch reads at most: past that the channel fills and
/// the watchers' events wait (in the channel and in the API servers' watch streams) until
/// writes succeed again, instead of being read and lost.
const HELD_OPS: usize = 1024;

/// The resource an upserted object belongs to: a typed kind's, or the one its `objects` row
/// names.
fn resource_of(kind: Kind, context: &str, rows: &ObjectRows) -> ResKey {
    if kind == Kind::Objects {
        let p = positions(kind);
        let text = |i: Option<usize>| {
            i.and_then(|i| text_at(&rows.row, i))
                .unwrap_or_default()
                .to_string()
        };
        return (context.to_string(), text(p.api_group), text(p.resource));
    }
    (
        context.to_string(),
        kind.group().to_string(),
        kind.table().to_string(),
    )
}

/// Where a row of one table holds what the writer reads back from it, found once by
/// column name in kq-schema's catalog, whose order the rows functions write in.
#[derive(Debug)]
struct Positions {
    namespace: Option<usize>,
    name: usize,
    resource_version: usize,
    /// `objects` only: the resource the row's object belongs to.
    api_group: Option<usize>,
    resource: Option<usize>,
}

fn positions(kind: Kind) -> &'static Positions {
    static ALL: std::sync::OnceLock<HashMap<Kind, Positions>> = std::sync::OnceLock::new();
    let all = ALL.get_or_init(|| {
        Kind::ALL
            .iter()
            .map(|&k| {
                let table = kq_schema::table(k.table()).expect("every kind has a catalog table");
                let at = |name: &str| table.columns.iter().position(|c| c.name == name);
                let must = |name: &str| {
                    at(name).unwrap_or_else(|| panic!("{} has no column {name}", table.name))
                };
                let positions = Positions {
                    namespace: at("namespace"),
                    name: must("name"),
                    resource_version: must("resource_version"),
                    api_group: at("api_group"),
                    resource: at("resource"),
                };
                (k, positions)
            })
            .collect()
    });
    &all[&kind]
}

fn text_at(row: &Row, i: usize) -> Option<&str> {
    match row.get(i) {
        Some(Value::Text(t)) => Some(t.as_str()),
        _ => None,
    }
}

/// The `changes` row recording that `rows` was added or modified.
fn change_row(now: i64, kind: Kind, context: &str, rows: &ObjectRows, op: &str) -> Row {
    let p = positions(kind);
    let (ns, name, rv) = (p.namespace, p.name, p.resource_version);
    let what = if kind == Kind::Objects {
        p.resource
            .and_then(|i| text_at(&rows.row, i))
            .unwrap_or_default()
    } else {
        kind.table()
    };
    let text = |v: Option<&str>| v.map_or(Value::Null, |t| Value::Text(t.to_string()));
    vec![
        Value::Timestamp(TimeUnit::Microsecond, now),
        Value::Text(context.to_string()),
        Value::Text(what.to_string()),
        text(ns.and_then(|i| text_at(&rows.row, i))),
        text(text_at(&rows.row, name)),
        Value::Text(rows.uid.clone()),
        Value::Text(op.to_string()),
        text(text_at(&rows.row, rv)),
    ]
}

fn now_micros() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

fn ts(v: Option<i64>) -> Value {
    v.map_or(Value::Null, |t| Value::Timestamp(TimeUnit::Microsecond, t))
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
        // `kq_stage.keys` names the objects a batch replaces or deletes; it is emptied inside
        // every transaction, so it never holds rows between batches.
        conn.execute_batch(
            "CREATE SCHEMA IF NOT EXISTS kq_stage;
             CREATE OR REPLACE TABLE kq_stage.keys (context VARCHAR, uid VARCHAR, gone BOOLEAN);",
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
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
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
        })
    }

    /// Runs until every sender is gone, then checkpoints the database.
    pub fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut pruned_at: Option<Instant> = None;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime builds");
        loop {
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
                match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                    Ok(Some(op)) => {
                        let closed = self.write_held(op, &mut rx, wait);
                        if closed {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => self.probe(),
                }
                continue;
            }
            // Incidents waiting out a grace period or a healthy pod's probation need the
            // writer to wake without ops.
            let first = if self.tracker.waiting() {
                match rt.block_on(async { tokio::time::timeout(TICK, rx.recv()).await }) {
                    Ok(Some(op)) => Some(op),
                    Ok(None) => break,
                    Err(_) => None,
                }
            } else {
                match rx.blocking_recv() {
                    Some(op) => Some(op),
                    None => break,
                }
            };
            if self.tracker.due(now_micros()) {
                self.tick_incidents();
            }
            let Some(first) = first else {
                continue;
            };
            let deadline = Instant::now() + self.opts.batch_interval;
            let mut batch = vec![first];
            let mut closed = false;
            while batch.len() < self.opts.batch_max {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        match rt.block_on(async { tokio::time::timeout(left, rx.recv()).await }) {
                            Ok(Some(op)) => batch.push(op),
                            Ok(None) => {
                                closed = true;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
            self.write_batch(batch);
            if closed {
                break;
            }
        }
        if let Err(e) = self.conn.execute_batch("CHECKPOINT") {
            tracing::warn!(error = %e, "final checkpoint failed; the WAL will be replayed at next start");
        }
        tracing::info!("store writer stopped");
    }

    /// Writes one batch, answers its barriers, and handles a failure.
    fn write_batch(&mut self, batch: Vec<Op>) {
        let n = batch.len();
        let started = Instant::now();
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

    /// While writes fail: gathers at most [`HELD_OPS`] ops for `wait`, without reading
    /// further, then tries them as one batch. Returns whether the channel closed.
    fn write_held(
        &mut self,
        first: Op,
        rx: &mut mpsc::Receiver<Op>,
        wait: std::time::Duration,
    ) -> bool {
        let deadline = Instant::now() + wait;
        let mut batch = vec![first];
        while batch.len() < HELD_OPS {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.write_batch(batch);
                    return true;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        // Wait out the rest of the hold without reading, so that senders wait too; a
        // shutdown (every sender gone) ends the wait early.
        while Instant::now() < deadline && !rx.is_closed() {
            std::thread::sleep(std::time::Duration::from_millis(50).min(deadline - Instant::now()));
        }
        self.write_batch(batch);
        false
    }

    /// A batch failed and was rolled back. What the writer keeps in memory is rebuilt from
    /// the file; the cause is told to readers and, when the file takes it, to `contexts`;
    /// and the writer holds off before it tries again. Contexts relist only once writes
    /// succeed again: relisting into a disk that is still full would only load every API
    /// server and fail again.
    fn failed(&mut self, e: &StoreError, ops: usize) {
        self.reload_index();
        self.reload_tracker();
        self.forget_images();
        self.hold_on(e, ops);
        // Best effort: a nearly full disk may still take the few rows that say why.
        if let Err(e) = self.write_status(true) {
            tracing::debug!(error = %e, "cannot record the write failure in contexts either");
        }
    }

    /// Starts or extends the hold for the failure `e`, and tells readers its cause.
    fn hold_on(&mut self, e: &StoreError, ops: usize) {
        let cause = WriteFailure::classify(e, &self.path);
        let previous = self.hold.take();
        // The first failure, or a new cause, is an error; the same cause again is news only
        // in that it lasts.
        let repeated = previous.as_ref().is_some_and(|h| h.cause == cause);
        let hold = Hold::after(previous, cause);
        let retry_in_ms = hold.wait.as_millis() as u64;
        if repeated {
            tracing::warn!(ops, failures = hold.failures, cause = %hold.cause, retry_in_ms, "writes still fail");
        } else {
            tracing::error!(ops, error = %e, cause = %hold.cause, retry_in_ms, "a batch failed and was rolled back; holding writes until they succeed, then every context relists");
        }
        self.health.set_write_error(Some(hold.cause.to_string()));
        self.hold = Some(hold);
    }

    /// Writes succeeded: when they had been failing, the hold ends and every context
    /// relists, once, to restore what the failed batches lost.
    fn recovered(&mut self) {
        let Some(hold) = self.hold.take() else { return };
        tracing::info!(failures = hold.failures, cause = %hold.cause, "writes succeed again; every context relists to restore what the failed writes lost");
        self.health.set_write_error(None);
        if let Err(e) = self.write_status(false) {
            tracing::warn!(error = %e, "cannot clear the write failure from contexts");
        }
        self.resync.send_modify(|g| *g += 1);
    }

    /// With nothing to write during a hold: a write of the status rows (still naming the
    /// cause) tells whether the database takes writes again.
    fn probe(&mut self) {
        match self.write_status(true) {
            Ok(()) => self.recovered(),
            Err(e) => self.hold_on(&e, 0),
        }
    }

    /// Rewrites every `contexts` row in a transaction of its own; with `failing`, each
    /// names the hold's cause as its error.
    fn write_status(&mut self, failing: bool) -> Result<(), StoreError> {
        let cause = self
            .hold
            .as_ref()
            .filter(|_| failing)
            .map(|h| h.cause.to_string());
        self.conn.execute_batch("BEGIN TRANSACTION")?;
        let names: Vec<String> = self.contexts.keys().cloned().collect();
        let now = now_micros();
        let result = names
            .iter()
            .try_for_each(|n| self.write_context_as(n, now, cause.as_deref()));
        match result.and_then(|()| Ok(self.conn.execute_batch("COMMIT")?)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Passes what a pod or node says about images to image sizing, when it is on; a pod's
    /// references only the first time any pod names them, or the first time a namespace's
    /// pods name them with pull secrets (which may be what a lookup lacked).
    fn forward_images(&mut self, s: crate::images::Sighting) {
        let Some(tx) = &self.sightings else { return };
        let s = match s {
            crate::images::Sighting::Pod {
                context,
                namespace,
                node,
                pull_secrets,
                mut refs,
            } => {
                let (seen, seen_secret) = (&mut self.seen_refs, &mut self.seen_secret_refs);
                refs.retain(|r| {
                    let new_ref = !seen.contains(r.as_str()) && seen.insert(r.clone());
                    let new_secret = !pull_secrets.is_empty()
                        && match seen_secret.get_mut(r.as_str()) {
                            Some(v) if v.iter().any(|(c, n)| *c == context && *n == namespace) => {
                                false
                            }
                            Some(v) => {
                                v.push((context.clone(), namespace.clone()));
                                true
                            }
                            None => {
                                seen_secret
                                    .insert(r.clone(), vec![(context.clone(), namespace.clone())]);
                                true
                            }
                        };
                    new_ref || new_secret
                });
                if refs.is_empty() {
                    return;
                }
                crate::images::Sighting::Pod {
                    context,
                    namespace,
                    node,
                    pull_secrets,
                    refs,
                }
            }
            other => other,
        };
        if tx.send(s).is_err() {
            self.sightings = None;
        }
    }

    /// After a rollback, whose batch may have held `images` rows: image sizing forgets every
    /// reference, so that the relist sends them again and their rows are written anew, from
    /// its memory of node reports and from the SQLite cache, at no registry request.
    fn forget_images(&mut self) {
        if self.seen_refs.is_empty() {
            return;
        }
        let refs = self.seen_refs.drain().collect();
        self.seen_secret_refs.clear();
        self.forward_images(crate::images::Sighting::Unused { refs });
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

    /// A batch keeps only an object's last state, but a crash followed within the batch by a
    /// recovery or a delete must still be seen: the state being replaced is observed now.
    fn observe_superseded(
        &mut self,
        ctx: &Arc<str>,
        earlier: Option<Option<ObjectRows>>,
    ) -> Result<(), StoreError> {
        let Some(Some(rows)) = earlier else {
            return Ok(());
        };
        let Some(o) = rows.observed else {
            return Ok(());
        };
        let cluster_id = self.contexts.get(&**ctx).and_then(|c| c.cluster_id.clone());
        self.tracker
            .observe(&self.conn, ctx, cluster_id.as_deref(), &o, now_micros())
    }

    /// Runs the incident tracker's timers in a transaction of their own. Rows the tracker
    /// wrote before a failure were rolled back with it, so they are dropped, not published.
    fn tick_incidents(&mut self) {
        let ids = self.cluster_ids();
        let result = self
            .conn
            .execute_batch("BEGIN TRANSACTION")
            .map_err(StoreError::from)
            .and_then(|()| self.tracker.tick(&self.conn, &ids, now_micros()))
            .and_then(|()| Ok(self.conn.execute_batch("COMMIT")?));
        match result {
            Ok(()) => self.publish(),
            Err(e) => {
                tracing::error!(error = %e, "incident timers failed; rolled back");
                let _ = self.conn.execute_batch("ROLLBACK");
                drop(self.tracker.take_written());
                self.reload_tracker();
            }
        }
    }

    /// Rebuilds the index from the database, after a rollback or a bulk delete.
    fn reload_index(&mut self) {
        match Index::load(&self.conn, !self.migrated) {
            Ok(index) => self.index = index,
            Err(e) => tracing::error!(error = %e, "cannot reload the index of stored objects"),
        }
    }

    /// Applies the retention periods of `changes`, `events` and `incidents`, and forgets
    /// image references no container uses any more. Expired events take their `objects`
    /// rows with them. An ended incident goes only once its object is gone too: while the
    /// object still shows the occurrence, the row is what keeps a relist from raising it
    /// again.
    fn prune(&mut self) -> Result<(), StoreError> {
        let changes = self.opts.changes_retention.as_secs();
        let events = self.opts.events_retention.as_secs();
        let old =
            |e: &str| format!("coalesce({e}last_seen, {e}created_at) < ago(to_seconds({events}))");
        let pruned_changes = self.conn.execute(
            &format!("DELETE FROM main.changes WHERE changed_at < ago(to_seconds({changes}))"),
            [],
        )?;
        self.conn.execute(
            &format!(
                "DELETE FROM main.objects WHERE api_group = '' AND resource = 'events'
                 AND EXISTS (SELECT 1 FROM main.events e
                             WHERE e.context = objects.context AND e.uid = objects.uid AND {})",
                old("e.")
            ),
            [],
        )?;
        let pruned_events = self
            .conn
            .execute(&format!("DELETE FROM main.events WHERE {}", old("")), [])?;
        if pruned_events > 0 {
            self.reload_index();
        }
        let incidents = self.opts.incidents_retention.as_secs();
        let pruned_incidents = self.conn.execute(
            &format!(
                "DELETE FROM main.incidents WHERE resolved_at < ago(to_seconds({incidents}))
                 AND NOT EXISTS (SELECT 1 FROM main.objects o
                                 WHERE o.context = incidents.context AND o.uid = incidents.object_uid)"
            ),
            [],
        )?;
        if pruned_incidents > 0 {
            self.reload_tracker();
        }
        let unused = super::images::prune_unused(&self.conn)?;
        if !unused.is_empty() {
            tracing::info!(
                references = unused.len(),
                "dropped image references no container uses"
            );
            for r in &unused {
                self.seen_refs.remove(r);
                self.seen_secret_refs.remove(r);
            }
            self.forward_images(crate::images::Sighting::Unused { refs: unused });
        }
        if pruned_changes + pruned_events + pruned_incidents > 0 {
            tracing::info!(
                changes = pruned_changes,
                events = pruned_events,
                incidents = pruned_incidents,
                "pruned rows past their retention"
            );
        }
        Ok(())
    }

    fn apply(
        &mut self,
        batch: Vec<Op>,
        barriers: &mut Vec<oneshot::Sender<()>>,
    ) -> Result<(), StoreError> {
        let mut pending: BTreeMap<Kind, HashMap<Key, Option<ObjectRows>>> = BTreeMap::new();
        let mut touched: HashSet<Arc<str>> = HashSet::new();
        let mut dirty: HashSet<String> = HashSet::new();
        let mut dirty_res: HashSet<ResKey> = HashSet::new();
        let mut images_changed = false;
        self.conn.execute_batch("BEGIN TRANSACTION")?;
        let result = (|| -> Result<(), StoreError> {
            for op in batch {
                match op {
                    Op::Upsert {
                        kind,
                        context,
                        mut rows,
                    } => {
                        if let Some(s) = rows.images.take() {
                            self.forward_images(*s);
                        }
                        touched.insert(context.clone());
                        dirty_res.insert(resource_of(kind, &context, &rows));
                        let earlier = pending
                            .entry(kind)
                            .or_default()
                            .insert((context.clone(), rows.uid.clone()), Some(rows));
                        self.observe_superseded(&context, earlier)?;
                    }
                    Op::Delete { kind, context, uid } => {
                        touched.insert(context.clone());
                        let earlier = pending
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
                        // Tables are independent, so only this kind's pending rows must land
                        // before its sweep; the rest keep batching.
                        self.flush_kind(&mut pending, kind)?;
                        touched.insert(context.clone());
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
                        self.flush_kind(&mut pending, Kind::Objects)?;
                        touched.insert(context.clone());
                        self.remove_resource(&context, &group, &resource)?;
                    }
                    Op::ContextInfo(info) => {
                        let row = self.contexts.entry(info.name.clone()).or_default();
                        row.info = info.clone();
                        dirty.insert(info.name);
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
                        dirty.insert(s.name);
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
                        dirty_res.insert(key);
                    }
                    Op::ContextConfigError { name, error } => {
                        let row = self.contexts.entry(name.clone()).or_default();
                        if row.config_error != error {
                            row.config_error = error;
                            dirty.insert(name);
                        }
                    }
                    Op::ClusterId { name, cluster_id } => {
                        let row = self.contexts.entry(name.clone()).or_default();
                        row.cluster_id = cluster_id;
                        dirty.insert(name);
                    }
                    Op::RemoveContext { name } => {
                        self.flush(&mut pending)?;
                        self.remove_context(&name)?;
                        touched.retain(|c| **c != *name);
                        dirty.remove(&name);
                    }
                    Op::Image(found) => {
                        super::images::write(&self.conn, &found)?;
                        images_changed = true;
                    }
                    Op::Registries(all) => super::images::write_registries(&self.conn, &all)?,
                    Op::ImageSightings(tx) => self.sightings = Some(tx),
                    Op::Barrier(b) => barriers.push(b),
                }
            }
            if images_changed {
                super::images::drop_orphans(&self.conn)?;
            }
            let t = Instant::now();
            self.flush(&mut pending)?;
            tracing::trace!(flush_ms = t.elapsed().as_millis() as u64, "flushed");
            let now = now_micros();
            // Counts come from the index, which the flush kept current.
            for (ctx, group, resource, n) in self.index.take_changed() {
                let key = (ctx.to_string(), group, resource);
                if let Some(row) = self.resources.get_mut(&key) {
                    row.object_count = n;
                    dirty_res.insert(key);
                }
            }
            for ctx in &touched {
                if let Some(row) = self.contexts.get_mut(&**ctx) {
                    row.last_event_at = Some(now);
                    row.object_count = self.index.total(ctx);
                    dirty.insert(ctx.to_string());
                }
            }
            for name in &dirty {
                self.write_context(name, now)?;
            }
            for key in &dirty_res {
                if let Some(row) = self.resources.get_mut(key) {
                    row.last_event_at = Some(now);
                }
            }
            for key in &dirty_res {
                self.write_resource(key)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                let t = Instant::now();
                self.conn.execute_batch("COMMIT")?;
                tracing::trace!(commit_ms = t.elapsed().as_millis() as u64, "committed");
                self.publish();
                Ok(())
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Writes the pending rows of one kind (before a sweep or removal that depends on them).
    fn flush_kind(
        &mut self,
        pending: &mut BTreeMap<Kind, HashMap<Key, Option<ObjectRows>>>,
        kind: Kind,
    ) -> Result<(), StoreError> {
        match pending.remove(&kind) {
            Some(objects) => self.flush(&mut BTreeMap::from([(kind, objects)])),
            None => Ok(()),
        }
    }

    /// The index's id of the resource an upserted object belongs to.
    fn resource_id(&mut self, kind: Kind, rows: &ObjectRows) -> u32 {
        if kind == Kind::Objects {
            let p = positions(kind);
            let at = |i: Option<usize>| i.and_then(|i| text_at(&rows.row, i)).unwrap_or_default();
            return self.index.resource_id(at(p.api_group), at(p.resource));
        }
        self.index.resource_id(kind.group(), kind.table())
    }

    /// Writes pending upserts and deletes. The index says which objects are new (appended),
    /// changed (old rows deleted by key, new ones appended), unchanged (skipped) or gone
    /// (deleted and recorded), so the database is searched only for rows that must go.
    fn flush(
        &mut self,
        pending: &mut BTreeMap<Kind, HashMap<Key, Option<ObjectRows>>>,
    ) -> Result<(), StoreError> {
        let now = now_micros();
        for (kind, mut objects) in std::mem::take(pending) {
            let table = kind.table();
            // Every upsert is observed, unchanged ones too: after a restart the relist is
            // what rebuilds the tracker's timers.
            let mut observed = Vec::new();
            let mut gone = Vec::new();
            for ((ctx, uid), rows) in objects.iter_mut() {
                match rows {
                    Some(r) => observed.extend(r.observed.take().map(|o| (ctx.clone(), o))),
                    None if kind.has_incidents() => gone.push((ctx.clone(), uid.clone())),
                    None => {}
                }
            }
            let mut fresh: Vec<&ObjectRows> = Vec::new();
            let mut changes: Vec<Row> = Vec::new();
            // (context, uid, gone): rows to delete, and whether the object itself is gone.
            let mut stale: Vec<(&str, &str, bool)> = Vec::new();
            for ((ctx, uid), rows) in &objects {
                match rows {
                    Some(r) => {
                        let res = self.resource_id(kind, r);
                        let rv = positions(kind).resource_version;
                        let op = match self.index.upsert(ctx, uid, text_at(&r.row, rv), res) {
                            Seen::Same => continue,
                            Seen::New => "add",
                            Seen::Changed => {
                                stale.push((ctx, uid, false));
                                "modify"
                            }
                        };
                        changes.push(change_row(now, kind, ctx, r, op));
                        fresh.push(r);
                    }
                    None => {
                        if self.index.remove(ctx, uid) {
                            stale.push((ctx, uid, true));
                        }
                    }
                }
            }
            let started = Instant::now();
            if !stale.is_empty() {
                self.delete_stale(kind, &stale)?;
            }
            self.append(table, fresh.iter().map(|r| r.row.as_slice()))?;
            if let Some((child, _)) = kind.child() {
                let rows = fresh.iter().flat_map(|r| r.children.iter());
                self.append(child, rows.map(Vec::as_slice))?;
            }
            if kind != Kind::Objects {
                let rows = fresh.iter().filter_map(|r| r.object.as_deref());
                self.append("objects", rows)?;
            }
            self.append("changes", changes.iter().map(Vec::as_slice))?;
            for (ctx, uid) in gone {
                self.tracker.gone(&self.conn, &ctx, &uid, now)?;
            }
            for (ctx, o) in observed {
                let cluster_id = self.contexts.get(&*ctx).and_then(|c| c.cluster_id.clone());
                self.tracker
                    .observe(&self.conn, &ctx, cluster_id.as_deref(), &o, now)?;
            }
            tracing::trace!(
                table,
                written = fresh.len(),
                removed = stale.len(),
                skipped = objects.len() - fresh.len() - stale.iter().filter(|s| s.2).count(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "wrote rows"
            );
        }
        Ok(())
    }

    /// Deletes the stored rows of changed and deleted objects (with their containers and
    /// `objects` rows), recording the deletes in `changes`.
    fn delete_stale(&mut self, kind: Kind, stale: &[(&str, &str, bool)]) -> Result<(), StoreError> {
        {
            let mut keys = self.conn.appender_to_db("keys", "kq_stage")?;
            for (ctx, uid, gone) in stale {
                keys.append_row(duckdb::params![ctx, uid, gone])?;
            }
            keys.flush()?;
        }
        let table = kind.table();
        let what = if kind == Kind::Objects {
            "m.resource".to_string()
        } else {
            format!("'{table}'")
        };
        let ns = if kind.namespaced() {
            "m.namespace"
        } else {
            "NULL"
        };
        let mut sql = format!(
            "INSERT INTO main.changes
             SELECT now(), m.context, {what}, {ns}, m.name, m.uid, 'delete', m.resource_version
             FROM main.{table} m JOIN kq_stage.keys k ON m.context = k.context AND m.uid = k.uid
             WHERE k.gone;"
        );
        let mut targets = vec![(table, "uid")];
        targets.extend(kind.child());
        if kind != Kind::Objects {
            targets.push(("objects", "uid"));
        }
        for (t, fk) in targets {
            sql.push_str(&format!(
                "DELETE FROM main.{t} USING kq_stage.keys k WHERE main.{t}.context = k.context AND main.{t}.{fk} = k.uid;"
            ));
        }
        sql.push_str("DELETE FROM kq_stage.keys;");
        self.conn.execute_batch(&sql)?;
        Ok(())
    }

    /// Appends rows to an inventory table as one Arrow batch.
    fn append<'a>(
        &self,
        table: &'static str,
        rows: impl Iterator<Item = &'a [Value]> + Clone,
    ) -> Result<(), StoreError> {
        if rows.clone().next().is_none() {
            return Ok(());
        }
        let schema = &self.schemas[table];
        let batch = super::batch::record_batch(schema, rows)?;
        let mut app = self.conn.appender_to_db(table, "main")?;
        app.append_record_batch(batch)?;
        app.flush()?;
        Ok(())
    }

    /// After a relist: removes (and records as deleted) the rows of this context and kind
    /// whose uid was not listed. Typed kinds also sweep their `objects` rows; `objects` itself
    /// is swept per resource (`scope`: API group and resource).
    fn sweep(
        &mut self,
        kind: Kind,
        ctx: &Arc<str>,
        keep: &[String],
        scope: Option<&(String, String)>,
    ) -> Result<(), StoreError> {
        // The index knows whether anything is gone; a relist that finds every object still
        // there (the usual case) costs no query.
        let res = match scope {
            Some((g, r)) => self.index.resource_id(g, r),
            None => self.index.resource_id(kind.group(), kind.table()),
        };
        if self.index.sweep(ctx, res, keep) == 0 {
            return Ok(());
        }
        let context: &str = ctx;
        {
            let mut keys = self.conn.appender_to_db("keys", "kq_stage")?;
            for uid in keep {
                keys.append_row(duckdb::params![context, uid.as_str(), false])?;
            }
            keys.flush()?;
        }
        let table = kind.table();
        let gone = "context = ? AND uid NOT IN (SELECT uid FROM kq_stage.keys)";
        let ns = if kind.namespaced() {
            "namespace"
        } else {
            "NULL"
        };
        let (what, scoped, mut params) = match (kind, scope) {
            (Kind::Objects, Some((g, r))) => (
                "resource".to_string(),
                " AND api_group = ? AND resource = ?",
                vec![context, g.as_str(), r.as_str()],
            ),
            _ => (format!("'{table}'"), "", vec![context]),
        };
        self.conn.execute(
            &format!(
                "INSERT INTO main.changes SELECT now(), context, {what}, {ns}, name, uid, 'delete', resource_version
                 FROM main.{table} WHERE {gone}{scoped}"
            ),
            params_from_iter(params.iter()),
        )?;
        let removed = self.conn.execute(
            &format!("DELETE FROM main.{table} WHERE {gone}{scoped}"),
            params_from_iter(params.iter()),
        )?;
        if let Some((child, fk)) = kind.child() {
            self.conn.execute(&format!("DELETE FROM main.{child} WHERE context = ? AND {fk} NOT IN (SELECT uid FROM kq_stage.keys)"), [context])?;
        }
        let gvk = kind.gvk();
        if kind != Kind::Objects {
            params = vec![context, gvk.group.as_str(), gvk.resource.as_str()];
            self.conn.execute(
                &format!(
                    "DELETE FROM main.objects WHERE {gone} AND api_group = ? AND resource = ?"
                ),
                params_from_iter(params.iter()),
            )?;
        }
        let resource = scope.map_or(table, |(_, r)| r.as_str());
        self.conn.execute_batch("DELETE FROM kq_stage.keys")?;
        if kind.has_incidents() {
            let index = &self.index;
            self.tracker.sweep(
                &self.conn,
                ctx,
                |uid| index.contains(ctx, uid),
                now_micros(),
            )?;
        }
        if removed > 0 {
            tracing::info!(
                context,
                table,
                resource,
                removed,
                "relist removed rows of objects deleted while not watching"
            );
        }
        Ok(())
    }

    /// A resource is no longer served (its CRD was deleted): its objects go.
    fn remove_resource(
        &mut self,
        context: &str,
        group: &str,
        resource: &str,
    ) -> Result<(), StoreError> {
        let params = duckdb::params![context, group, resource];
        self.conn.execute(
            "INSERT INTO main.changes SELECT now(), context, resource, namespace, name, uid, 'delete', resource_version
             FROM main.objects WHERE context = $1 AND api_group = $2 AND resource = $3",
            params,
        )?;
        let removed = self.conn.execute(
            "DELETE FROM main.objects WHERE context = $1 AND api_group = $2 AND resource = $3",
            params,
        )?;
        self.conn.execute(
            "DELETE FROM main.resources WHERE context = ? AND api_group = ? AND resource = ?",
            [context, group, resource],
        )?;
        self.resources
            .remove(&(context.to_string(), group.to_string(), resource.to_string()));
        let res = self.index.resource_id(group, resource);
        self.index.remove_resource(&Arc::from(context), res);
        tracing::info!(
            context,
            group,
            resource,
            removed,
            "resource no longer served; removed its objects"
        );
        Ok(())
    }

    fn remove_context(&mut self, name: &str) -> Result<(), StoreError> {
        for k in Kind::ALL {
            self.conn.execute(
                &format!("DELETE FROM main.{} WHERE context = ?", k.table()),
                [name],
            )?;
            if let Some((child, _)) = k.child() {
                self.conn.execute(
                    &format!("DELETE FROM main.{child} WHERE context = ?"),
                    [name],
                )?;
            }
        }
        self.conn
            .execute("DELETE FROM contexts WHERE name = ?", [name])?;
        self.conn
            .execute("DELETE FROM main.resources WHERE context = ?", [name])?;
        self.contexts.remove(name);
        self.resources.retain(|(c, _, _), _| c != name);
        self.index.remove_context(name);
        self.tracker
            .remove_context(&self.conn, name, now_micros())?;
        Ok(())
    }

    fn write_resource(&mut self, key: &ResKey) -> Result<(), StoreError> {
        let (ctx, group, resource) = key;
        self.conn.execute(
            "DELETE FROM main.resources WHERE context = ? AND api_group = ? AND resource = ?",
            [ctx, group, resource],
        )?;
        let Some(row) = self.resources.get(key) else {
            return Ok(());
        };
        let values: Vec<Value> = vec![
            Value::Text(ctx.clone()),
            Value::Text(group.clone()),
            Value::Text(resource.clone()),
            Value::Text(row.state.as_str().to_string()),
            row.error.clone().map_or(Value::Null, Value::Text),
            Value::BigInt(row.object_count),
            ts(row.last_event_at),
            ts(row.synced_at),
        ];
        self.conn.execute(
            "INSERT INTO main.resources VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            params_from_iter(values.iter()),
        )?;
        Ok(())
    }

    fn write_context(&mut self, name: &str, now: i64) -> Result<(), StoreError> {
        let cause = self.hold.as_ref().map(|h| h.cause.to_string());
        self.write_context_as(name, now, cause.as_deref())
    }

    /// Writes a context's row; `error`, when given, stands in for the context's own.
    fn write_context_as(
        &mut self,
        name: &str,
        now: i64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let Some(row) = self.contexts.get_mut(name) else {
            return Ok(());
        };
        row.updated_at = now;
        let info = &row.info;
        self.conn
            .execute("DELETE FROM contexts WHERE name = ?", [name])?;
        let values: Vec<Value> = vec![
            Value::Text(name.to_string()),
            Value::Text(info.cluster.clone()),
            Value::Text(info.server.clone()),
            Value::Text(info.user.clone()),
            info.namespace.clone().map_or(Value::Null, Value::Text),
            Value::Text(info.source_file.clone()),
            Value::Text(row.state.as_str().to_string()),
            error
                .map(str::to_string)
                .or_else(|| row.error.clone())
                .map_or(Value::Null, Value::Text),
            ts(row.last_event_at),
            ts(row.synced_at),
            row.server_version.clone().map_or(Value::Null, Value::Text),
            Value::BigInt(row.object_count),
            ts(Some(row.updated_at)),
            row.cluster_id.clone().map_or(Value::Null, Value::Text),
            row.config_error.clone().map_or(Value::Null, Value::Text),
        ];
        self.conn.execute(
            "INSERT INTO contexts (name, cluster, server, \"user\", namespace, source_file, state, error, last_event_at, synced_at, server_version, object_count, updated_at, cluster_id, config_error)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            params_from_iter(values.iter()),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    /// A writer over a fresh, migrated database file, with what it reports to.
    struct Fixture {
        writer: Writer,
        resync: tokio::sync::watch::Receiver<u64>,
        follow: tokio::sync::broadcast::Receiver<Arc<IncidentRow>>,
        health: Arc<Health>,
        /// Another connection to the same database, as a reader (or a meddler) has.
        other: Connection,
        _dir: tempfile::TempDir,
    }

    fn fixture(opts: StoreOptions) -> Fixture {
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

    fn ctx() -> Arc<str> {
        Arc::from("test")
    }

    fn pod(name: &str, status: serde_json::Value) -> Op {
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

    fn running(name: &str) -> Op {
        pod(
            name,
            json!({"phase": "Running", "containerStatuses": [{"name": "main", "image": "nginx:1",
                   "imageID": "", "ready": true, "restartCount": 0,
                   "state": {"running": {"startedAt": "2020-01-01T00:00:00Z"}}}]}),
        )
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn row_positions_come_from_the_catalog_and_match_what_the_rows_functions_write() {
        let Op::Upsert { rows, .. } = running("positioned") else {
            unreachable!()
        };
        let p = positions(Kind::Pods);
        assert_eq!(text_at(&rows.row, p.name), Some("positioned"));
        assert_eq!(text_at(&rows.row, p.resource_version), Some("1"));
        assert_eq!(
            p.namespace.and_then(|i| text_at(&rows.row, i)),
            Some("default")
        );
        let meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("positioned".into()),
            ..Default::default()
        };
        let object = crate::rows::object_row(&ctx(), &Kind::Pods.gvk(), &meta, "{}".into());
        let o = positions(Kind::Objects);
        let at = |i: Option<usize>| i.and_then(|i| text_at(&object, i));
        assert_eq!((at(o.api_group), at(o.resource)), (Some(""), Some("pods")));
        assert!(positions(Kind::Nodes).namespace.is_none());
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
