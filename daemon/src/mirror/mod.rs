//! The PostgreSQL mirror: everything kqd keeps in DuckDB, in one PostgreSQL schema, for a
//! team. One task reads what the outbox says PostgreSQL lacks, reads those rows from DuckDB
//! as they are now, writes them in one PostgreSQL transaction with the instance's progress
//! row, and only then acknowledges the entries to the writer. Replaying any of it gives the
//! same state, so a crash, an outage or a dropped connection at any step costs a retry,
//! never a row. At every (re)connect, and every ten minutes, it compares each table part
//! with PostgreSQL by (key, version) and sends what differs, which is also how the first
//! load happens.

mod control;
mod copy;
mod duck;
mod pg;
pub mod tables;
pub mod url;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::store::outbox::{Owed, Read};
use crate::store::{MirrorState, MirrorStatus, Op, Store};
use duck::Duck;
use pg::{Mode, Pg, TableWrite};
use tables::{Mirrored, Shape};

pub use control::Control;

/// (context, key): an object's uid, or an incident's id, in its context.
pub type Key = (String, String);

/// Owed entries read at a time.
const OUTBOX_BATCH: usize = 50_000;
/// Owed objects of one table read by key (a join) in one transaction; more are read by
/// streaming the table once, which costs one scan however many.
const BY_KEY: usize = 1000;
/// Rows per transaction when a part is streamed.
const STREAM_CHUNK: usize = 5000;
/// Changes sent per transaction.
const CHANGES_BATCH: usize = 5000;
/// How often every part is compared again while streaming.
const VERIFY_EVERY: Duration = Duration::from_secs(600);
/// How often the `mirror` row is rewritten while nothing happens.
const REPORT_EVERY: Duration = Duration::from_secs(2);

/// What the mirror needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorConfig {
    /// The URL, libpq style (`postgres://user@host/db?sslmode=require`).
    pub url: String,
    /// The PostgreSQL schema it writes (`kq`).
    pub schema: String,
    /// This kqd's instance id: stable per data directory, or set by `mirror_instance`.
    pub instance: String,
    /// What this kqd claims the instance with: made once per data directory, so that a
    /// kqd started again on its directory (after a crash, say) takes its instance back at
    /// once, and a kqd elsewhere configured with the same `mirror_instance` does not.
    pub holder: String,
    /// Mirror `objects` (the whole JSON of every object, most of the bytes).
    pub objects: bool,
    /// A role to grant read access to the schema, now and for what it adds later.
    pub read_role: Option<String>,
}

impl MirrorConfig {
    /// The mirror the config asks for (`None` without `postgres_url`), as this `instance`
    /// claimed by `holder`.
    pub fn from_config(
        config: &crate::config::Config,
        instance: String,
        holder: String,
    ) -> Option<MirrorConfig> {
        Some(MirrorConfig {
            url: config.postgres_url.clone()?,
            schema: config.postgres_schema.clone(),
            instance,
            holder,
            objects: config.mirror_objects,
            read_role: config.mirror_read_role.clone(),
        })
    }
}

/// What went wrong, naming the side.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("{0}")]
    Config(String),
    #[error("postgres: {message}")]
    Pg {
        message: String,
        /// Retrying cannot help: the database refuses the data itself.
        data: bool,
    },
    #[error("{0}")]
    Refused(String),
    #[error("reading the inventory: {0}")]
    Duck(String),
    #[error("mirror: {0}")]
    Internal(String),
    #[error("the store writer stopped")]
    WriterGone,
}

impl MirrorError {
    fn pg(e: tokio_postgres::Error) -> MirrorError {
        // A SQLSTATE of class 22 (data exception) or 23 (integrity) is about a row; the
        // others (connection, resources, a restart, a serialization failure) pass.
        let data = e
            .code()
            .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"));
        let message = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            // tokio-postgres says "error performing TLS handshake" and keeps the why (an
            // unknown issuer, a name mismatch) in its sources.
            None => {
                let mut m = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    m.push_str(&format!(": {s}"));
                    source = s.source();
                }
                m
            }
        };
        MirrorError::Pg { message, data }
    }

    fn duck(e: duckdb::Error) -> MirrorError {
        MirrorError::Duck(e.to_string())
    }
}

/// The instance id kept in the data directory, made on first use:
/// `<host>-<8 hex digits>`.
pub fn instance_id(data_dir: &std::path::Path) -> std::io::Result<String> {
    kept(data_dir, "mirror-instance", || {
        let host = pg::hostname();
        format!(
            "{}-{:08x}",
            if host.is_empty() { "kqd" } else { &host },
            fastrand::u32(..)
        )
    })
}

/// The claim token kept in the data directory (see [`MirrorConfig::holder`]), made on
/// first use: 32 random hex digits.
pub fn holder_token(data_dir: &std::path::Path) -> std::io::Result<String> {
    kept(data_dir, "mirror-holder", || {
        format!("{:032x}", fastrand::u128(..))
    })
}

/// The value kept in `data_dir/<file>`, written by `make` when there is none yet.
fn kept(
    data_dir: &std::path::Path,
    file: &str,
    make: impl FnOnce() -> String,
) -> std::io::Result<String> {
    let path = data_dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = make();
    crate::private::dir(data_dir)?;
    std::fs::write(&path, format!("{id}\n"))?;
    Ok(id)
}

/// The longest wait between connection attempts: one attempt every few seconds costs a
/// database nothing, and a mirror back within seconds of its database matters.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// `kqd --check-config`'s look at the database (see [`Pg::check`]).
pub async fn check(cfg: &MirrorConfig) -> Result<String, Vec<String>> {
    Pg::check(cfg).await
}

/// Runs the mirror until `cancel` fires: connects, compares, streams, and after any
/// failure reconnects with backoff (1 s doubling to [`MAX_BACKOFF`], with jitter).
pub async fn run(
    cfg: MirrorConfig,
    store: Arc<Store>,
    ops: mpsc::Sender<Op>,
    mut wake: watch::Receiver<i64>,
    cancel: CancellationToken,
) {
    let target = crate::config::redact_url(&cfg.url);
    let mut m = Mirror {
        status: MirrorStatus {
            target: target.clone(),
            schema: cfg.schema.clone(),
            instance: cfg.instance.clone(),
            ..Default::default()
        },
        ops,
        cfg,
        duck: None,
        store,
        changes_seq: 0,
        changes_floor: 0,
        sent_seq: 0,
        rates: Vec::new(),
        reported: Instant::now() - REPORT_EVERY,
        compared: None,
        streamed: false,
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        let result = m.session(&mut wake, &cancel).await;
        if cancel.is_cancelled() {
            break;
        }
        if let Err(e) = result {
            if matches!(e, MirrorError::WriterGone) {
                break;
            }
            let refused = matches!(e, MirrorError::Refused(_) | MirrorError::Config(_));
            tracing::warn!(target = %target, error = %e, "postgres mirror failed; will retry");
            m.status.state = if refused {
                MirrorState::Refused
            } else {
                MirrorState::Error
            };
            m.status.connected = false;
            m.error(&e);
            let _ = m.report(true).await;
        }
        // The backoff is for attempts that fail in a row: a session that got as far as
        // streaming starts it over.
        if std::mem::take(&mut m.streamed) {
            backoff = Duration::from_secs(1);
        }
        let jitter = backoff.mul_f64(fastrand::f64() / 5.0);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff + jitter) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    tracing::info!("postgres mirror stopped");
}

struct Mirror {
    cfg: MirrorConfig,
    store: Arc<Store>,
    duck: Option<Duck>,
    ops: mpsc::Sender<Op>,
    status: MirrorStatus,
    /// The highest change number PostgreSQL has.
    changes_seq: i64,
    /// PostgreSQL has no change numbered below this.
    changes_floor: i64,
    /// Every entry numbered up to this was sent (and acknowledged to the writer) in this
    /// session. Its acknowledgement waits in the writer's queue behind the watchers' ops,
    /// a while during an initial sync; reading past it keeps an entry from going twice.
    sent_seq: i64,
    /// (when, rows) of recent commits, for rows/s.
    rates: Vec<(Instant, u64)>,
    reported: Instant,
    /// When the current session last compared every table with PostgreSQL. Until it has,
    /// an entry's `children` flag is not trusted: it says the child rows are as PostgreSQL
    /// had them before, which a database new to this kqd (or restored) does not.
    compared: Option<Instant>,
    /// The current session got as far as streaming.
    streamed: bool,
}

fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

impl Mirror {
    fn duck(&mut self) -> Result<Duck, MirrorError> {
        if self.duck.is_none() {
            let conn = self
                .store
                .reader()
                .map_err(|e| MirrorError::Duck(e.to_string()))?;
            self.duck = Some(Duck::new(conn)?);
        }
        Ok(self.duck.clone().expect("set above"))
    }

    fn error(&mut self, e: &MirrorError) {
        self.status.last_error = Some(e.to_string());
        self.status.last_error_at = Some(now_us());
    }

    /// One connection's life: connect, compare everything, then stream until the
    /// connection fails or kqd stops.
    async fn session(
        &mut self,
        wake: &mut watch::Receiver<i64>,
        cancel: &CancellationToken,
    ) -> Result<(), MirrorError> {
        // The state stays what it is until this attempt connects: `connecting` (the
        // default) at the first, and at a retry that of the failure it follows (the run
        // loop sets `error` or `refused` after every failed session), so that during an
        // outage the row says `error` throughout instead of flickering to `connecting`.
        self.report(true).await?;
        let mut pg = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = Pg::connect(&self.cfg) => r?,
        };
        tracing::info!(target = %self.status.target, schema = %self.cfg.schema, instance = %self.cfg.instance, "postgres mirror connected");
        let result = self.serve(&mut pg, wake, cancel).await;
        if cancel.is_cancelled() {
            // Stopping (kqd, or a changed URL): the instance is free for another kqd now.
            pg.release().await;
        }
        result
    }

    /// A connected session: compare everything, then stream until the connection fails
    /// or kqd stops.
    async fn serve(
        &mut self,
        pg: &mut Pg,
        wake: &mut watch::Receiver<i64>,
        cancel: &CancellationToken,
    ) -> Result<(), MirrorError> {
        self.status.connected = true;
        self.status.state = MirrorState::Verifying;
        self.report(true).await?;
        self.changes_seq = pg.changes_seq().await?;
        self.changes_floor = 0;
        // A new session reads every entry again: one sent by a session that failed before
        // its commit is still owed.
        self.sent_seq = 0;
        self.compared = None;
        let changes = tables::get("changes").expect("changes are mirrored");
        let kept = self.duck()?.changes_after(changes, i64::MAX, 1).await?;
        if kept.max.unwrap_or(0) < self.changes_seq {
            // A fresh DuckDB file numbers its changes from 1 again: PostgreSQL's are from
            // the file before, and go.
            tracing::warn!(
                postgres = self.changes_seq,
                duckdb = kept.max.unwrap_or(0),
                "the inventory's changes start over; replacing the mirrored ones"
            );
            pg.reset_changes().await?;
            self.changes_seq = 0;
        }
        // What the outbox owes first (it is what changed most recently), then everything
        // compared; then what the outbox owes, as it comes. A read of DuckDB that fails
        // (its memory limit, while the writer is busy) is retried on the same connection.
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let verify = self.compared.is_none_or(|t| t.elapsed() > VERIFY_EVERY);
            match self.step(pg, cancel, verify).await {
                Ok(()) => {
                    if verify && !cancel.is_cancelled() {
                        self.compared = Some(Instant::now());
                        if self.status.state != MirrorState::Streaming {
                            self.status.state = MirrorState::Streaming;
                            self.streamed = true;
                            self.report(true).await?;
                        }
                    }
                }
                Err(e @ MirrorError::Duck(_)) => {
                    tracing::warn!(error = %e, "the mirror could not read the inventory; retrying in a second");
                    self.error(&e);
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
            self.report(false).await?;
            pg.keep_claim().await?;
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = wake.changed() => if r.is_err() { return Err(MirrorError::WriterGone) },
                _ = tokio::time::sleep(REPORT_EVERY) => {}
            }
            if pg.client.is_closed() {
                return Err(MirrorError::Pg {
                    message: "the connection closed".into(),
                    data: false,
                });
            }
        }
    }

    /// Sends what is owed, then (when `verify`) compares everything.
    async fn step(
        &mut self,
        pg: &mut Pg,
        cancel: &CancellationToken,
        verify: bool,
    ) -> Result<(), MirrorError> {
        self.drain(pg, cancel).await?;
        if verify {
            self.verify(pg, cancel).await?;
        }
        Ok(())
    }

    /// Sends what the outbox owes and the new changes until neither has anything left.
    async fn drain(&mut self, pg: &mut Pg, cancel: &CancellationToken) -> Result<(), MirrorError> {
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let (owed, changes) = self
                .duck()?
                .round(
                    OUTBOX_BATCH,
                    self.sent_seq,
                    tables::get("changes").expect("changes are mirrored"),
                    self.changes_seq,
                    CHANGES_BATCH,
                )
                .await?;
            let changes = self.new_changes(changes);
            let Some(last) = owed.iter().map(|r| r.seq).max() else {
                match changes {
                    None => return Ok(()),
                    Some(c) => self.send_changes(pg, c).await?,
                }
                continue;
            };
            self.send_owed(pg, owed, changes).await?;
            self.sent_seq = last;
        }
    }

    /// What of the changes read (those numbered after what PostgreSQL has) is to be sent,
    /// with the retention prune they carry: those numbered below the lowest DuckDB keeps
    /// (or all PostgreSQL has, when it keeps none). `None` when there is neither.
    fn new_changes(&self, read: duck::ChangesAfter) -> Option<NewChanges> {
        let duck::ChangesAfter { batches, min, .. } = read;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let floor = min.unwrap_or(self.changes_seq + 1);
        let prune = (floor > self.changes_floor).then_some(floor);
        if rows == 0 && prune.is_none() {
            return None;
        }
        Some(NewChanges {
            last: last_seq(&batches).unwrap_or(self.changes_seq),
            batches,
            prune,
            floor,
        })
    }

    /// New changes in a transaction of their own.
    async fn send_changes(&mut self, pg: &mut Pg, c: NewChanges) -> Result<(), MirrorError> {
        self.commit(pg, &[c.write()], Some(c.last)).await?;
        self.changes_sent(&c);
        Ok(())
    }

    /// PostgreSQL has committed `c`.
    fn changes_sent(&mut self, c: &NewChanges) {
        self.changes_seq = c.last;
        self.changes_floor = c.floor;
    }

    /// Applies writes in one transaction and counts what they did.
    async fn commit(
        &mut self,
        pg: &mut Pg,
        writes: &[TableWrite],
        changes_seq: Option<i64>,
    ) -> Result<(), MirrorError> {
        // Read at every commit: a context's cluster_id arrives before its objects, and a
        // row sent without it would not be sent again until it changes.
        let ids = self.duck()?.cluster_ids().await?;
        let t = Instant::now();
        let applied = pg.apply(writes, &ids, changes_seq).await?;
        tracing::debug!(
            tables = ?writes.iter().map(|w| w.table.name()).collect::<Vec<_>>(),
            rows = applied.rows,
            pg_ms = t.elapsed().as_millis() as u64,
            "committed to postgres"
        );
        self.status.rows_mirrored += applied.rows as i64;
        self.status.nul_replaced += applied.nul_replaced as i64;
        if applied.nul_replaced > 0 {
            tracing::warn!(
                replaced = applied.nul_replaced,
                "replaced NUL characters PostgreSQL cannot store"
            );
        }
        self.status.last_commit_at = Some(now_us());
        self.rates.push((Instant::now(), applied.rows));
        Ok(())
    }

    /// Sends the rows of owed entries and acknowledges them. A keyed part is compared and
    /// sent in transactions of its own; the small tables owed whole go with the rows, in
    /// one transaction (one each, they were three of the four transactions of a round under
    /// load). When PostgreSQL refuses the data itself, each is tried alone, and a row it
    /// refuses alone is set aside.
    async fn send_owed(
        &mut self,
        pg: &mut Pg,
        owed: Vec<Read>,
        changes: Option<NewChanges>,
    ) -> Result<(), MirrorError> {
        let (parts, mut rows): (Vec<Read>, Vec<Read>) = owed
            .into_iter()
            .partition(|r| matches!(r.owed, Owed::Part { .. }));
        // The small tables owed whole, each read once however many entries owe it.
        let mut whole: Vec<&'static Mirrored> = Vec::new();
        let mut whole_parts = Vec::new();
        for p in parts {
            let Owed::Part { table, context } = &p.owed else {
                unreachable!("partitioned above")
            };
            match tables::get(table) {
                Some(m) if m.shape == Shape::Whole => {
                    if !whole.iter().any(|w| w.name() == m.name()) {
                        whole.push(m);
                    }
                    whole_parts.push(p);
                }
                Some(m) => {
                    self.send_part(pg, m, context.as_deref()).await?;
                    self.acknowledge(vec![p]).await?;
                }
                None => self.acknowledge(vec![p]).await?,
            }
        }
        if rows.is_empty() && whole.is_empty() {
            if let Some(c) = changes {
                self.send_changes(pg, c).await?;
            }
            return Ok(());
        }
        let row_refs: Vec<&Read> = rows.iter().collect();
        match self
            .send_rows(pg, &row_refs, &whole, changes.as_ref())
            .await
        {
            Ok(()) => {
                if let Some(c) = &changes {
                    self.changes_sent(c);
                }
            }
            Err(MirrorError::Pg { data: true, .. }) => {
                if let Some(c) = changes {
                    self.send_changes(pg, c).await?;
                }
                for m in &whole {
                    self.send_part(pg, m, None).await?;
                }
                for r in &rows {
                    match self.send_rows(pg, &[r], &[], None).await {
                        Ok(()) => {}
                        Err(e @ MirrorError::Pg { data: true, .. }) => self.set_aside(r, &e),
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
        rows.extend(whole_parts);
        self.acknowledge(rows).await
    }

    fn set_aside(&mut self, r: &Read, e: &MirrorError) {
        let (table, context, key) = r.owed.columns();
        tracing::error!(table, context, key, error = %e, "postgres refused a row; set it aside");
        self.status.set_aside += 1;
        self.error(&MirrorError::Internal(format!(
            "set aside {table} {context}/{key}: {e}"
        )));
    }

    async fn acknowledge(&mut self, read: Vec<Read>) -> Result<(), MirrorError> {
        self.ops
            .send(Op::MirrorAck(read))
            .await
            .map_err(|_| MirrorError::WriterGone)
    }

    /// The rows of owed objects and incidents. Few of one table go in one transaction
    /// with the rows of their children and `objects` rows (a join by key), the small
    /// tables owed whole and the new `changes`; many are streamed from one scan of their
    /// table.
    async fn send_rows(
        &mut self,
        pg: &mut Pg,
        rows: &[&Read],
        whole: &[&'static Mirrored],
        changes: Option<&NewChanges>,
    ) -> Result<(), MirrorError> {
        let mut by_table: BTreeMap<&'static str, (&'static Mirrored, Vec<Key>)> = BTreeMap::new();
        for r in rows {
            let Owed::Row {
                table,
                context,
                key,
            } = &r.owed
            else {
                continue;
            };
            let Some(m) = tables::get(table) else {
                continue;
            };
            // A modify that left an object's child rows alone (a pod's status message)
            // costs neither a read of them nor a write: PostgreSQL has them as they are,
            // once this session compared every table.
            let children = r.children || self.compared.is_none();
            let targets = m.targets(self.cfg.objects);
            for t in targets.into_iter().filter(|t| children || !t.is_child()) {
                by_table
                    .entry(t.name())
                    .or_insert_with(|| (t, Vec::new()))
                    .1
                    .push((context.to_string(), key.clone()));
            }
        }
        let mut few = Vec::new();
        for (_, (m, keys)) in by_table {
            if keys.len() > BY_KEY {
                let mut wanted = duck::Wanted::new();
                for (c, k) in keys {
                    wanted.entry(c).or_default().insert(k);
                }
                self.stream_part(pg, m, None, wanted).await?;
                continue;
            }
            few.push((m, keys));
        }
        // The tables are read at once, each on a connection of its own: one after another,
        // under load, they took 165–300 ms a round, longer than the PostgreSQL transaction
        // that follows them.
        let duck = self.duck()?;
        let reads = few.iter().map(|(m, keys)| duck.rows(m, keys.clone()));
        let whole_reads = whole.iter().map(|m| duck.whole(m));
        let (read, whole_read) = futures::future::try_join(
            futures::future::try_join_all(reads),
            futures::future::try_join_all(whole_reads),
        )
        .await?;
        let writes: Vec<TableWrite> = few
            .into_iter()
            .zip(read)
            .map(|((m, keys), batches)| TableWrite {
                table: m,
                mode: Mode::Keys(keys),
                batches,
            })
            .chain(whole.iter().zip(whole_read).map(|(m, batches)| TableWrite {
                table: m,
                mode: Mode::Whole,
                batches,
            }))
            .chain(changes.map(NewChanges::write))
            .collect();
        if writes.is_empty() {
            return Ok(());
        }
        self.commit(pg, &writes, changes.map(|c| c.last)).await
    }

    /// Sends the rows of `wanted` (keys by context) of a table as DuckDB streams them (one
    /// scan, of `context` only when given), in transactions of about [`STREAM_CHUNK`] rows
    /// cut between objects, so each transaction replaces whole objects. Wanted keys DuckDB
    /// no longer has are deleted at the end.
    async fn stream_part(
        &mut self,
        pg: &mut Pg,
        m: &'static Mirrored,
        context: Option<&str>,
        wanted: duck::Wanted,
    ) -> Result<(), MirrorError> {
        use arrow::array::{Array, StringArray};
        let (unit, at) = m.unit().expect("keyed tables are streamed");
        let ctx_at = m.position("context").expect("keyed tables have contexts");
        let wanted = Arc::new(wanted);
        let mut rx = self
            .duck()?
            .stream(m, context.map(str::to_string), Some(wanted.clone()));
        let mut seen: HashSet<Key> = HashSet::new();
        let mut chunk: Vec<arrow::record_batch::RecordBatch> = Vec::new();
        let mut chunk_rows = 0;
        let mut chunk_keys: Vec<Key> = Vec::new();
        let mut last: Option<(String, String)> = None;
        let text = |b: &arrow::record_batch::RecordBatch, i: usize| {
            b.column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| MirrorError::Internal(format!("{}.{unit} is not text", m.name())))
        };
        while let Some(batch) = rx.recv().await {
            let batch = batch?;
            let (units, ctxs) = (text(&batch, at)?, text(&batch, ctx_at)?);
            let mut start = 0;
            for i in 0..batch.num_rows() {
                if !units.is_valid(i) || !ctxs.is_valid(i) {
                    continue;
                }
                let (c, u) = (ctxs.value(i), units.value(i));
                if last.as_ref().is_some_and(|(lc, lu)| lc == c && lu == u) {
                    continue;
                }
                // Between two objects: the chunk may end here.
                if chunk_rows + (i - start) >= STREAM_CHUNK {
                    chunk.push(batch.slice(start, i - start));
                    start = i;
                    let writes = [TableWrite {
                        table: m,
                        mode: Mode::Keys(std::mem::take(&mut chunk_keys)),
                        batches: std::mem::take(&mut chunk),
                    }];
                    self.commit(pg, &writes, None).await?;
                    chunk_rows = 0;
                    self.report(false).await?;
                }
                let key = (c.to_string(), u.to_string());
                last = Some(key.clone());
                // An object's stale rows are deleted once, by the chunk its rows start in;
                // one seen again later (stored apart) is only upserted.
                if seen.insert(key.clone()) {
                    chunk_keys.push(key);
                }
            }
            chunk_rows += batch.num_rows() - start;
            chunk.push(batch.slice(start, batch.num_rows() - start));
        }
        // What is left, and the wanted keys DuckDB no longer has.
        for (c, keys) in wanted.iter() {
            for k in keys {
                let key = (c.clone(), k.clone());
                if !seen.contains(&key) {
                    chunk_keys.push(key);
                }
            }
        }
        if !chunk_keys.is_empty() || chunk_rows > 0 {
            let writes = [TableWrite {
                table: m,
                mode: Mode::Keys(chunk_keys),
                batches: chunk,
            }];
            self.commit(pg, &writes, None).await?;
        }
        Ok(())
    }

    /// Brings one part up to date: a whole table is sent whole; a keyed table's part is
    /// compared by (key, version) with PostgreSQL, and the keys that differ are sent.
    /// Returns how many keys differed.
    async fn send_part(
        &mut self,
        pg: &mut Pg,
        m: &'static Mirrored,
        context: Option<&str>,
    ) -> Result<usize, MirrorError> {
        let started = Instant::now();
        let r = self.send_part_inner(pg, m, context).await;
        tracing::debug!(table = m.name(), context = ?context, elapsed_ms = started.elapsed().as_millis() as u64, "sent a part");
        r
    }

    async fn send_part_inner(
        &mut self,
        pg: &mut Pg,
        m: &'static Mirrored,
        context: Option<&str>,
    ) -> Result<usize, MirrorError> {
        match m.shape {
            Shape::Whole => {
                let batches = self.duck()?.whole(m).await?;
                let writes = [TableWrite {
                    table: m,
                    mode: Mode::Whole,
                    batches,
                }];
                self.commit(pg, &writes, None).await?;
                Ok(0)
            }
            Shape::Changes => Ok(0),
            Shape::Keyed { versioned, .. } => {
                if m.name() == "objects" && !self.cfg.objects {
                    return Ok(0);
                }
                let contexts: Vec<String> = match context {
                    Some(c) => vec![c.to_string()],
                    None => {
                        let mut all: HashSet<String> =
                            self.duck()?.contexts(m).await?.into_iter().collect();
                        all.extend(pg.contexts(m).await?);
                        all.into_iter().collect()
                    }
                };
                let mut differ = 0;
                let mut wanted = duck::Wanted::new();
                // A key the outbox owes is sent when the outbox is drained, as it is then:
                // sending it here too would send it twice (the first load, while the
                // initial sync fills the outbox, would cost double).
                let owed = self.duck()?.owed_keys(m, self.cfg.objects).await?;
                for ctx in &contexts {
                    let here = self.duck()?.versions(m, ctx.clone()).await?;
                    let there = pg.versions(m, ctx).await?;
                    let keys: HashSet<String> = here
                        .iter()
                        .filter(|(k, v)| !versioned || there.get(*k) != Some(*v))
                        .map(|(k, _)| k)
                        .chain(there.keys().filter(|k| !here.contains_key(*k)))
                        .filter(|k| !owed.contains(*k))
                        .map(|k| k.1.clone())
                        .collect();
                    if keys.is_empty() {
                        continue;
                    }
                    if versioned {
                        differ += keys.len();
                    }
                    wanted.insert(ctx.clone(), keys);
                }
                if wanted.is_empty() {
                    return Ok(differ);
                }
                // Children follow their parents; `objects` rows have their own part. One
                // scan of each table covers every context that differs.
                let targets: Vec<&'static Mirrored> = if m.name() == "objects" {
                    vec![m]
                } else {
                    m.targets(false)
                };
                let only = (wanted.len() == 1)
                    .then(|| wanted.keys().next().cloned())
                    .flatten();
                for t in targets {
                    self.stream_part(pg, t, only.as_deref(), wanted.clone())
                        .await?;
                }
                Ok(differ)
            }
        }
    }

    /// Compares every part with PostgreSQL and sends what differs.
    async fn verify(&mut self, pg: &mut Pg, cancel: &CancellationToken) -> Result<(), MirrorError> {
        let started = Instant::now();
        let mut differ = 0;
        for m in tables::all() {
            if cancel.is_cancelled() {
                return Ok(());
            }
            if m.is_child() {
                continue;
            }
            differ += self.send_part(pg, m, None).await?;
        }
        self.status.verified_at = Some(now_us());
        self.status.mismatched = differ as i64;
        tracing::info!(
            differed = differ,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "postgres mirror compared every table"
        );
        Ok(())
    }

    /// Rewrites the `mirror` row: at once when `now`, else at most every
    /// [`REPORT_EVERY`].
    async fn report(&mut self, now: bool) -> Result<(), MirrorError> {
        if !now && self.reported.elapsed() < REPORT_EVERY {
            return Ok(());
        }
        self.reported = Instant::now();
        let (depth, oldest) = self.duck()?.outbox_depth().await?;
        self.status.outbox = depth;
        self.status.lag_seconds = oldest.map_or(0.0, |t| ((now_us() - t) as f64 / 1e6).max(0.0));
        let window = Duration::from_secs(10);
        self.rates.retain(|(t, _)| t.elapsed() < window);
        self.status.rows_per_s =
            self.rates.iter().map(|(_, n)| *n as f64).sum::<f64>() / window.as_secs_f64();
        self.ops
            .send(Op::MirrorStatus(Box::new(self.status.clone())))
            .await
            .map_err(|_| MirrorError::WriterGone)
    }
}

/// New `changes` read from DuckDB for PostgreSQL. They go in the transaction of the
/// round's owed rows: a transaction of their own was one PostgreSQL commit more a round.
struct NewChanges {
    batches: Vec<arrow::record_batch::RecordBatch>,
    /// Changes numbered below this go (retention pruned them in DuckDB).
    prune: Option<i64>,
    /// The lowest number DuckDB keeps.
    floor: i64,
    /// The highest number sent.
    last: i64,
}

impl NewChanges {
    fn write(&self) -> TableWrite {
        TableWrite {
            table: tables::get("changes").expect("changes are mirrored"),
            mode: Mode::Append { floor: self.prune },
            batches: self.batches.clone(),
        }
    }
}

/// The `seq` of the last row of the last batch.
fn last_seq(batches: &[arrow::record_batch::RecordBatch]) -> Option<i64> {
    use arrow::array::{Array, Int64Array};
    let b = batches.iter().rev().find(|b| b.num_rows() > 0)?;
    let col = b.column_by_name("seq")?;
    let a = col.as_any().downcast_ref::<Int64Array>()?;
    (!a.is_null(a.len() - 1)).then(|| a.value(a.len() - 1))
}
