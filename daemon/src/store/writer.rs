//! The writer thread: batches ops into transactions and merges staged rows by identity.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use duckdb::arrow::datatypes::SchemaRef;
use duckdb::types::{TimeUnit, Value};
use duckdb::{Connection, params_from_iter};
use tokio::sync::{mpsc, oneshot};

use super::{Op, StoreError, StoreOptions};
use crate::rows::{Kind, ObjectRows};

/// How often retention runs (it also runs at start).
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

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
    /// connecting | syncing | ready | error
    pub state: &'static str,
    pub error: Option<String>,
    pub server_version: Option<String>,
    /// The initial list of every watched kind completed.
    pub synced: bool,
}

#[derive(Debug, Clone, Default)]
struct ContextRow {
    info: ContextInfo,
    state: String,
    error: Option<String>,
    last_event_at: Option<i64>,
    synced_at: Option<i64>,
    server_version: Option<String>,
    object_count: i64,
    updated_at: i64,
    cluster_id: Option<String>,
}

type Key = (Arc<str>, String);

/// (context, API group, resource)
type ResKey = (String, String, String);

#[derive(Debug, Clone, Default)]
struct ResourceRow {
    state: String,
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
    /// The Arrow schema of each staging table, for building record batches.
    stage_schemas: HashMap<&'static str, SchemaRef>,
    /// The `resources` rows, kept here and rewritten when they change.
    resources: BTreeMap<ResKey, ResourceRow>,
    /// Told when a batch is lost, so that every context relists.
    resync: tokio::sync::watch::Sender<u64>,
}

/// The resource an upserted object belongs to: a typed kind's, or the one its `objects` row
/// names (columns 8 and 11: api_group and resource).
fn resource_of(kind: Kind, context: &str, rows: &ObjectRows) -> ResKey {
    if kind == Kind::Objects {
        let text = |i: usize| match rows.row.get(i) {
            Some(Value::Text(t)) => t.clone(),
            _ => String::new(),
        };
        return (context.to_string(), text(8), text(11));
    }
    let g = kind.gvk();
    (context.to_string(), g.group, g.resource)
}

/// SQL that records the staged batch of `kind` in `changes`, run before the merge so it can
/// compare with the stored rows: an unseen uid is an add, a new resourceVersion a modify (a
/// relist that finds nothing new records nothing), a staged key without a row a delete.
fn changes_sql(kind: Kind) -> String {
    let table = kind.table();
    // Rows of `objects` name their resource; typed tables name themselves.
    let (what_s, what_m) = if kind == Kind::Objects {
        ("s.resource".to_string(), "m.resource".to_string())
    } else {
        (format!("'{table}'"), format!("'{table}'"))
    };
    let (ns_s, ns_m) = if kind.namespaced() {
        ("s.namespace", "m.namespace")
    } else {
        ("NULL", "NULL")
    };
    format!(
        "INSERT INTO main.changes
         SELECT now(), s.context, {what_s}, {ns_s}, s.name, s.uid,
                CASE WHEN m.uid IS NULL THEN 'add' ELSE 'modify' END, s.resource_version
         FROM kq_stage.{table} s LEFT JOIN main.{table} m ON m.context = s.context AND m.uid = s.uid
         WHERE m.uid IS NULL OR m.resource_version IS DISTINCT FROM s.resource_version;
         INSERT INTO main.changes
         SELECT now(), m.context, {what_m}, {ns_m}, m.name, m.uid, 'delete', m.resource_version
         FROM main.{table} m JOIN kq_stage.keys k ON m.context = k.context AND m.uid = k.uid
         WHERE NOT EXISTS (SELECT 1 FROM kq_stage.{table} s WHERE s.context = k.context AND s.uid = k.uid);"
    )
}

fn now_micros() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

fn ts(v: Option<i64>) -> Value {
    v.map_or(Value::Null, |t| Value::Timestamp(TimeUnit::Microsecond, t))
}

impl Writer {
    pub fn new(
        conn: Connection,
        opts: StoreOptions,
        resync: tokio::sync::watch::Sender<u64>,
    ) -> Result<Writer, StoreError> {
        // Staging tables mirror the inventory tables; they are emptied inside every
        // transaction, so they never hold rows between batches.
        let mut sql = String::from(
            "CREATE SCHEMA IF NOT EXISTS kq_stage;
             CREATE OR REPLACE TABLE kq_stage.keys (context VARCHAR, uid VARCHAR);
             CREATE OR REPLACE TABLE kq_stage.containers AS SELECT * FROM main.containers LIMIT 0;",
        );
        for k in Kind::ALL {
            sql.push_str(&format!(
                "CREATE OR REPLACE TABLE kq_stage.{t} AS SELECT * FROM main.{t} LIMIT 0;",
                t = k.table()
            ));
        }
        conn.execute_batch(&sql)?;
        let mut stage_schemas = HashMap::new();
        for t in Kind::ALL.iter().map(|k| k.table()).chain(["containers"]) {
            let schema = conn
                .prepare(&format!("SELECT * FROM kq_stage.{t} LIMIT 0"))?
                .query_arrow([])?
                .get_schema();
            stage_schemas.insert(t, schema);
        }
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
                        state: "connecting".into(),
                        ..Default::default()
                    },
                );
            }
        }
        // Resource states are rebuilt by this run's watchers.
        conn.execute_batch("DELETE FROM main.resources")?;
        Ok(Writer {
            conn,
            opts,
            contexts,
            stage_schemas,
            resources: BTreeMap::new(),
            resync,
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
            let Some(first) = rx.blocking_recv() else {
                break;
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
            let n = batch.len();
            let started = Instant::now();
            let mut barriers = Vec::new();
            match self.apply(batch, &mut barriers) {
                Ok(()) => tracing::trace!(
                    ops = n,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "committed batch"
                ),
                Err(e) => {
                    tracing::error!(ops = n, error = %e, "a batch failed and was rolled back; every context relists");
                    self.resync.send_modify(|g| *g += 1);
                }
            }
            for b in barriers {
                let _ = b.send(());
            }
            if closed {
                break;
            }
        }
        if let Err(e) = self.conn.execute_batch("CHECKPOINT") {
            tracing::warn!(error = %e, "final checkpoint failed; the WAL will be replayed at next start");
        }
        tracing::info!("store writer stopped");
    }

    /// Applies the retention periods of `changes` and `events`.
    fn prune(&self) -> Result<(), StoreError> {
        let changes = self.opts.changes_retention.as_secs();
        let events = self.opts.events_retention.as_secs();
        let removed = self.conn.execute(&format!("DELETE FROM main.changes WHERE changed_at < ago(to_seconds({changes}))"), [])?
            + self.conn.execute(
                &format!("DELETE FROM main.events WHERE coalesce(last_seen, created_at) < ago(to_seconds({events}))"),
                [],
            )?;
        if removed > 0 {
            tracing::info!(removed, "pruned changes and events past their retention");
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
        self.conn.execute_batch("BEGIN TRANSACTION")?;
        let result = (|| -> Result<(), StoreError> {
            for op in batch {
                match op {
                    Op::Upsert {
                        kind,
                        context,
                        rows,
                    } => {
                        touched.insert(context.clone());
                        dirty_res.insert(resource_of(kind, &context, &rows));
                        pending
                            .entry(kind)
                            .or_default()
                            .insert((context, rows.uid.clone()), Some(rows));
                    }
                    Op::Delete { kind, context, uid } => {
                        touched.insert(context.clone());
                        pending
                            .entry(kind)
                            .or_default()
                            .insert((context, uid), None);
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
                        if row.state.is_empty() {
                            row.state = "connecting".into();
                        }
                        row.info = info.clone();
                        dirty.insert(info.name);
                    }
                    Op::ContextState(s) => {
                        let row = self.contexts.entry(s.name.clone()).or_default();
                        row.info.name = s.name.clone();
                        row.state = s.state.to_string();
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
                        let key = (context.to_string(), group, resource);
                        let row = self.resources.entry(key.clone()).or_default();
                        row.state = state.to_string();
                        row.error = error;
                        if state == "ready" {
                            row.synced_at = Some(now_micros());
                        }
                        dirty_res.insert(key);
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
                    Op::Barrier(b) => barriers.push(b),
                }
            }
            let t = Instant::now();
            self.flush(&mut pending)?;
            tracing::trace!(flush_ms = t.elapsed().as_millis() as u64, "flushed");
            let now = now_micros();
            // One count per touched context, by resource: it feeds both `resources` and the
            // context's total.
            let totals = self.count_resources(&touched, &mut dirty_res)?;
            for ctx in &touched {
                if let Some(row) = self.contexts.get_mut(&**ctx) {
                    row.last_event_at = Some(now);
                    row.object_count = totals.get(&**ctx).copied().unwrap_or(0);
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
                Ok(())
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Merges pending upserts and deletes: stage the keys and rows, delete the old rows of
    /// every staged key, insert the staged rows.
    /// Merges the pending rows of one kind.
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

    fn flush(
        &mut self,
        pending: &mut BTreeMap<Kind, HashMap<Key, Option<ObjectRows>>>,
    ) -> Result<(), StoreError> {
        for (kind, objects) in std::mem::take(pending) {
            if objects.is_empty() {
                continue;
            }
            let table = kind.table();
            {
                let mut keys = self.conn.appender_to_db("keys", "kq_stage")?;
                for (ctx, uid) in objects.keys() {
                    keys.append_row([&**ctx, uid.as_str()])?;
                }
                keys.flush()?;
            }
            self.stage(table, objects.values().flatten().map(|r| r.row.as_slice()))?;
            let mut sql = changes_sql(kind);
            sql.push_str(&format!(
                "DELETE FROM main.{table} USING kq_stage.keys k WHERE main.{table}.context = k.context AND main.{table}.uid = k.uid;
                 INSERT INTO main.{table} SELECT * FROM kq_stage.{table};
                 DELETE FROM kq_stage.{table};"
            ));
            // Rows that belong to the object live in other tables too: a pod's containers,
            // and every typed object's `objects` row. They are replaced by the object's uid.
            let mut dependents: Vec<(&str, &str, Vec<&[Value]>)> = Vec::new();
            if let Some((child, fk)) = kind.child() {
                dependents.push((
                    child,
                    fk,
                    objects
                        .values()
                        .flatten()
                        .flat_map(|r| r.children.iter().map(Vec::as_slice))
                        .collect(),
                ));
            }
            if kind != Kind::Objects {
                dependents.push((
                    "objects",
                    "uid",
                    objects
                        .values()
                        .flatten()
                        .filter_map(|r| r.object.as_deref())
                        .collect(),
                ));
            }
            for (child, fk, rows) in dependents {
                self.stage(child, rows.into_iter())?;
                sql.push_str(&format!(
                    "DELETE FROM main.{child} USING kq_stage.keys k WHERE main.{child}.context = k.context AND main.{child}.{fk} = k.uid;
                     INSERT INTO main.{child} SELECT * FROM kq_stage.{child};
                     DELETE FROM kq_stage.{child};"
                ));
            }
            sql.push_str("DELETE FROM kq_stage.keys;");
            let staged = Instant::now();
            self.conn.execute_batch(&sql)?;
            tracing::trace!(
                table,
                objects = objects.len(),
                merge_ms = staged.elapsed().as_millis() as u64,
                "merged staged rows"
            );
        }
        Ok(())
    }

    /// Appends rows to a staging table as one Arrow batch.
    fn stage<'a>(
        &self,
        table: &'static str,
        rows: impl Iterator<Item = &'a [Value]> + Clone,
    ) -> Result<(), StoreError> {
        if rows.clone().next().is_none() {
            return Ok(());
        }
        let schema = &self.stage_schemas[table];
        let batch = super::batch::record_batch(schema, rows)?;
        let mut app = self.conn.appender_to_db(table, "kq_stage")?;
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
        context: &str,
        keep: &[String],
        scope: Option<&(String, String)>,
    ) -> Result<(), StoreError> {
        {
            let mut keys = self.conn.appender_to_db("keys", "kq_stage")?;
            for uid in keep {
                keys.append_row([context, uid.as_str()])?;
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
        Ok(())
    }

    /// Refreshes the object counts of the touched contexts' resources, and returns each
    /// context's total (`objects` holds one row for every object, typed or not).
    fn count_resources(
        &mut self,
        touched: &HashSet<Arc<str>>,
        dirty: &mut HashSet<ResKey>,
    ) -> Result<HashMap<String, i64>, StoreError> {
        let mut totals = HashMap::new();
        for ctx in touched {
            let mut stmt = self.conn.prepare("SELECT api_group, resource, count(*) FROM main.objects WHERE context = ? GROUP BY ALL")?;
            let counts = stmt.query_map([&**ctx], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for c in counts {
                let (group, resource, n) = c?;
                *totals.entry(ctx.to_string()).or_insert(0) += n;
                let key = (ctx.to_string(), group, resource);
                if let Some(row) = self.resources.get_mut(&key)
                    && row.object_count != n
                {
                    row.object_count = n;
                    dirty.insert(key);
                }
            }
        }
        Ok(totals)
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
            Value::Text(row.state.clone()),
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
            Value::Text(row.state.clone()),
            row.error.clone().map_or(Value::Null, Value::Text),
            ts(row.last_event_at),
            ts(row.synced_at),
            row.server_version.clone().map_or(Value::Null, Value::Text),
            Value::BigInt(row.object_count),
            ts(Some(row.updated_at)),
            row.cluster_id.clone().map_or(Value::Null, Value::Text),
        ];
        self.conn.execute(
            "INSERT INTO contexts (name, cluster, server, \"user\", namespace, source_file, state, error, last_event_at, synced_at, server_version, object_count, updated_at, cluster_id)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            params_from_iter(values.iter()),
        )?;
        Ok(())
    }
}
