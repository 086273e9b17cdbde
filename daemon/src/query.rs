//! Runs client SQL on read connections, never on the writer's: one statement at a time,
//! refused unless it only reads (or exports with COPY … TO), inside a read-only transaction
//! that is always rolled back. Results stream as Arrow record batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use duckdb::arrow::datatypes::SchemaRef;
use duckdb::arrow::record_batch::RecordBatch;
use duckdb::types::Value;
use duckdb::{Connection, InterruptHandle};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Why a query did not run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    ReadOnly(String),
    #[error("{0}")]
    Sql(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// kqd is stopping: the query was refused or cut short, not wrong.
    #[error("{0}")]
    Stopping(String),
}

/// The error of a query refused or cut short because kqd is stopping.
pub fn stopping() -> QueryError {
    QueryError::Stopping(kq_schema::follow::SHUTTING_DOWN.to_string())
}

/// Statements that only read. `COPY` is allowed only as `COPY (query) TO …`.
const READ_KEYWORDS: &[&str] = &[
    "SELECT",
    "WITH",
    "FROM",
    "VALUES",
    "TABLE",
    "DESCRIBE",
    "SHOW",
    "SUMMARIZE",
    "EXPLAIN",
    "PIVOT",
    "UNPIVOT",
];

/// Statements that write, or change the session or the database outside any transaction.
const WRITE_KEYWORDS: &[&str] = &[
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "UPSERT",
    "TRUNCATE",
    "CREATE",
    "DROP",
    "ALTER",
    "COMMENT",
    "ATTACH",
    "DETACH",
    "USE",
    "SET",
    "RESET",
    "PRAGMA",
    "INSTALL",
    "LOAD",
    "FORCE",
    "UPDATE",
    "CHECKPOINT",
    "VACUUM",
    "ANALYZE",
    "EXPORT",
    "IMPORT",
    "CALL",
    "BEGIN",
    "START",
    "COMMIT",
    "END",
    "ROLLBACK",
    "ABORT",
    "GRANT",
    "REVOKE",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "COPY",
];

/// What [`classify`] makes of a statement.
#[derive(Debug, PartialEq, Eq)]
pub enum Class {
    /// Reads only: run it.
    Read,
    /// Writes: refuse it.
    Write(String),
    /// Starts with a word that is neither: let DuckDB's parser say what is wrong.
    Unknown,
}

/// Classifies one statement by its first keyword.
pub fn classify(sql: &str) -> Result<Class, QueryError> {
    let stmt = single_statement(sql)?;
    let keyword: String = stmt
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    if READ_KEYWORDS.contains(&keyword.as_str()) || stmt.starts_with('(') {
        return Ok(Class::Read);
    }
    if keyword == "COPY" && stmt[4..].trim_start().starts_with('(') {
        return Ok(Class::Read);
    }
    if WRITE_KEYWORDS.contains(&keyword.as_str()) {
        return Ok(Class::Write(keyword));
    }
    Ok(Class::Unknown)
}

/// The error for a refused statement.
pub fn read_only_error(keyword: &str) -> QueryError {
    QueryError::ReadOnly(format!(
        "read-only: kq cannot run {keyword} statements, the inventory is written only by kqd; use SELECT, or COPY (SELECT …) TO 'file' to export"
    ))
}

/// Checks that `sql` is one statement that cannot change the inventory. Unknown statements
/// are refused too; [`Engine::start`] first asks DuckDB's parser about them.
pub fn check_read_only(sql: &str) -> Result<(), QueryError> {
    match classify(sql)? {
        Class::Read => Ok(()),
        Class::Write(k) => Err(read_only_error(&k)),
        Class::Unknown => Err(read_only_error("this")),
    }
}

/// Strips comments and a trailing `;`, and refuses more than one statement.
fn single_statement(sql: &str) -> Result<String, QueryError> {
    let mut statements = kq_schema::sql::split_statements(sql);
    if statements.len() > 1 {
        return Err(multiple());
    }
    Ok(statements.pop().unwrap_or_default())
}

fn multiple() -> QueryError {
    QueryError::Sql("one statement at a time, please: the input holds more than one".to_string())
}

/// A query that has started: its schema is known and its batches are on the way.
pub struct Running {
    pub schema: SchemaRef,
    pub batches: mpsc::Receiver<Result<RecordBatch, QueryError>>,
    pub cancel: Cancel,
}

/// Stops a running query. It only ever interrupts the query it was made for: once that
/// query has ended, its connection goes back to the pool and cancelling does nothing.
#[derive(Clone)]
pub struct Cancel {
    handle: Arc<Mutex<Option<Arc<InterruptHandle>>>>,
    /// Set when kqd's shutdown cancelled the query.
    shutdown: Arc<AtomicBool>,
    /// Set by the query's thread when that cancel cut the result short, so the client is
    /// told so instead of reading part of a result as the whole (a query that ended by
    /// itself just before the cancel landed is whole).
    cut_short: Arc<AtomicBool>,
}

impl Cancel {
    fn new(handle: Arc<InterruptHandle>) -> Cancel {
        Cancel {
            handle: Arc::new(Mutex::new(Some(handle))),
            shutdown: Arc::new(AtomicBool::new(false)),
            cut_short: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Interrupts the query, and keeps interrupting it every 20 ms until it has ended.
    /// DuckDB clears a connection's interrupt when a statement begins executing, so one
    /// that lands between `prepare` and the start of execution (a busy machine widens that
    /// window) would be lost, and a long query would run on with nobody waiting for it.
    pub fn cancel(&self) {
        if !self.interrupt() {
            return;
        }
        let again = self.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(20));
                if !again.interrupt() {
                    break;
                }
            }
        });
    }

    /// Cancels the query because kqd is stopping.
    fn shut_down(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.cancel();
    }

    fn by_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Whether kqd's shutdown cut the result short.
    pub fn cut_short(&self) -> bool {
        self.cut_short.load(Ordering::SeqCst)
    }

    /// Interrupts the query if it is still running; the lock keeps `finish` (after which
    /// the connection may serve another query) from passing in between.
    fn interrupt(&self) -> bool {
        match self
            .handle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(h) => {
                h.interrupt();
                true
            }
            None => false,
        }
    }

    fn finish(&self) {
        *self.handle.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Cancels its query when dropped while still armed.
struct Armed(Option<Cancel>);

impl Drop for Armed {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.cancel();
        }
    }
}

fn is_interrupt(e: &QueryError) -> bool {
    matches!(e, QueryError::Sql(m) if m.contains("INTERRUPT") || m.contains("nterrupted"))
}

/// Hands out read connections, reusing idle ones, and cancels the queries still running
/// when kqd stops (a long query, or a client that stopped reading, would otherwise hold the
/// shutdown until systemd kills kqd).
pub struct Engine {
    store: Arc<Store>,
    idle: Mutex<Vec<Reader>>,
    running: Mutex<HashMap<u64, Cancel>>,
    next: AtomicU64,
    stopping: CancellationToken,
}

/// A read connection and the generation of the store's health its session variables show.
struct Reader {
    conn: Connection,
    seen: u64,
}

impl std::ops::Deref for Reader {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Engine {
    /// The store queries run against.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// An engine over `store` whose running queries are cancelled when `stopping` fires;
    /// from then on, new queries are refused. Call from within a Tokio runtime.
    pub fn new(store: Arc<Store>, stopping: CancellationToken) -> Arc<Engine> {
        let engine = Arc::new(Engine {
            store,
            idle: Mutex::new(Vec::new()),
            running: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            stopping: stopping.clone(),
        });
        let weak = Arc::downgrade(&engine);
        tokio::spawn(async move {
            stopping.cancelled().await;
            if let Some(engine) = weak.upgrade() {
                let running: Vec<Cancel> = engine.running().drain().map(|(_, c)| c).collect();
                if !running.is_empty() {
                    tracing::info!(queries = running.len(), "cancelling running queries");
                }
                for c in running {
                    c.shut_down();
                }
            }
        });
        engine
    }

    /// Fires when kqd begins to stop.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Cancel>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connection(&self) -> Result<Reader, QueryError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut reader = match idle {
            Some(r) => r,
            None => Reader {
                conn: self
                    .store
                    .reader()
                    .map_err(|e| QueryError::Internal(e.to_string()))?,
                seen: 0,
            },
        };
        // What is wrong with the store (a full disk, a file moved aside) reaches `status`
        // through session variables. A statement this connection prepared before reads
        // them as they are when it runs (see the test below).
        self.store
            .health
            .apply_to(&reader.conn, &mut reader.seen)
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        Ok(reader)
    }

    fn give_back(&self, c: Reader) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < 8 {
            idle.push(c);
        }
    }

    /// Starts `sql` on a blocking thread and returns once its schema is known (or it failed).
    pub async fn start(self: &Arc<Self>, sql: String) -> Result<Running, QueryError> {
        self.start_with(sql, Vec::new()).await
    }

    /// What a prepared statement needs bound: its parameters' names, in order (`1`, `2`, …
    /// for `?` placeholders). Preparing parses and binds without executing.
    pub fn parameters(&self, sql: &str) -> Result<Vec<String>, QueryError> {
        let conn = self.connection()?;
        let names = conn.prepare(sql).map_err(sql_error).and_then(|stmt| {
            (1..=stmt.parameter_count())
                .map(|i| stmt.parameter_name(i).map_err(sql_error))
                .collect()
        });
        self.give_back(conn);
        names
    }

    /// Starts `sql` with its parameters bound in order, as [`Engine::start`] does.
    pub async fn start_with(
        self: &Arc<Self>,
        sql: String,
        params: Vec<Value>,
    ) -> Result<Running, QueryError> {
        let class = classify(&sql)?;
        let conn = self.connection()?;
        match class {
            Class::Read => {}
            Class::Write(k) => {
                self.give_back(conn);
                return Err(read_only_error(&k));
            }
            // A typo such as `selec` deserves DuckDB's syntax error, not a refusal. Preparing
            // parses and binds without executing.
            Class::Unknown => {
                let parsed = conn.prepare(&sql).map(|_| ()).map_err(sql_error);
                self.give_back(conn);
                parsed?;
                return Err(read_only_error("this"));
            }
        }
        let cancel = Cancel::new(conn.interrupt_handle());
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.running().insert(id, cancel.clone());
        // Checked once registered, so a shutdown either finds the query in `running` or is
        // seen here, and the query is refused.
        if self.stopping.is_cancelled() {
            self.running().remove(&id);
            self.give_back(conn);
            return Err(stopping());
        }
        let (schema_tx, schema_rx) = oneshot::channel();
        let (batch_tx, batch_rx) = mpsc::channel(4);
        let engine = self.clone();
        let thread_cancel = cancel.clone();
        tokio::task::spawn_blocking(move || {
            let clean = run_blocking(&conn, &sql, &params, &thread_cancel, schema_tx, batch_tx);
            thread_cancel.finish();
            engine.running().remove(&id);
            // Only a connection that ended cleanly, with its transaction rolled back, is
            // reused; any other is dropped.
            if clean && run_plain(&conn, "ROLLBACK").is_ok() {
                engine.give_back(conn);
            }
        });
        // Until the schema arrives, a caller that goes away (its future dropped) cancels too.
        let mut armed = Armed(Some(cancel.clone()));
        let schema = schema_rx.await;
        armed.0 = None;
        schema
            .map_err(|_| QueryError::Internal("the query thread stopped".into()))?
            .map(|schema| Running {
                schema,
                batches: batch_rx,
                cancel,
            })
    }
}

/// Runs a statement without results, parsed anew. In this DuckDB a cached statement is no
/// cheaper: running it binds and plans an `EXECUTE` (201–206 µs for `BEGIN` and `ROLLBACK`
/// cached, 161–168 µs parsed anew; `tests/e2e/BENCHMARKS.md`).
fn run_plain(conn: &Connection, sql: &str) -> Result<(), duckdb::Error> {
    conn.execute_batch(sql)
}

/// Runs the statement, sending its schema, then its batches. Returns whether it ran to the
/// end without error or cancellation.
fn run_blocking(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    cancel: &Cancel,
    schema_tx: oneshot::Sender<Result<SchemaRef, QueryError>>,
    batch_tx: mpsc::Sender<Result<RecordBatch, QueryError>>,
) -> bool {
    if let Err(e) = run_plain(conn, "BEGIN TRANSACTION READ ONLY") {
        let _ = schema_tx.send(Err(QueryError::Internal(e.to_string())));
        return false;
    }
    // A statement asked again on this connection (a dashboard's, a script's loop, `kq
    // watch`) skips parsing, binding and planning: for `select count(*) from pods` that
    // was about 0.45 of the 1.7 ms its GetFlightInfo took. DuckDB binds a cached statement
    // again by itself when the catalog changed.
    let mut stmt = match conn.prepare_cached(sql) {
        Ok(s) => s,
        Err(e) => {
            let _ = schema_tx.send(Err(sql_error(e)));
            return false;
        }
    };
    tracing::debug!(sql, "query started");
    let stream = match stmt.stream_arrow(duckdb::params_from_iter(params)) {
        Ok(s) => s,
        Err(e) => {
            let mut e = sql_error(e);
            if is_interrupt(&e) {
                if cancel.by_shutdown() {
                    tracing::info!(sql, "query cancelled: kqd is shutting down");
                    e = stopping();
                } else {
                    tracing::info!(sql, "query cancelled: the client went away");
                }
            }
            let _ = schema_tx.send(Err(e));
            return false;
        }
    };
    if schema_tx.send(Ok(stream.get_schema())).is_err() {
        return false;
    }
    for batch in stream {
        let item = batch.map_err(sql_error);
        let interrupted = item.as_ref().err().is_some_and(is_interrupt);
        let failed = item.is_err();
        // The reader tells its client why the batches stopped (`Cancel::cut_short`):
        // sending it here could block on a client that stopped reading.
        if interrupted && cancel.by_shutdown() {
            tracing::info!(sql, "query cancelled: kqd is shutting down");
            cancel.cut_short.store(true, Ordering::SeqCst);
            return false;
        }
        // A closed channel means the client went away; stop here.
        if batch_tx.is_closed() || interrupted {
            tracing::info!(sql, "query cancelled: the client went away");
            return false;
        }
        if batch_tx.blocking_send(item).is_err() || failed {
            return false;
        }
    }
    true
}

fn sql_error(e: duckdb::Error) -> QueryError {
    let text = e.to_string();
    if text.contains("read-only") || text.contains("read only") {
        QueryError::ReadOnly(format!("read-only: {text}"))
    } else {
        QueryError::Sql(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_pass() {
        for ok in [
            "select 1",
            "  -- comment\n SELECT * FROM pods;",
            "with x as (select 1) select * from x",
            "FROM pods",
            "copy (select * from pods) to '/tmp/x.csv'",
            "describe pods",
            "select ';' as semi",
        ] {
            assert!(check_read_only(ok).is_ok(), "{ok}");
        }
        for bad in [
            "insert into pods values (1)",
            "delete from pods",
            "drop table pods",
            "copy pods from '/tmp/x.csv'",
            "update pods set name = 'x'",
            "attach 'x.db'",
            "set threads = 1",
            "select 1; drop table pods",
            "/* hi */ create table t (a int)",
        ] {
            assert!(check_read_only(bad).is_err(), "{bad}");
        }
        let e = check_read_only("drop table pods").unwrap_err().to_string();
        assert!(e.starts_with("read-only"), "{e}");
        assert_eq!(classify("selec 1").unwrap(), Class::Unknown);
    }

    /// A query that would run for minutes.
    const CROSS_JOIN: &str =
        "select sum(a.range * b.range) from range(100000000) a, range(100000) b";

    /// The engine over a real, migrated store in a temp dir, and what keeps it open.
    fn engine(
        stopping: &CancellationToken,
    ) -> (Arc<Engine>, crate::store::Opened, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let opened = Store::open(
            &dir.path().join("kq.duckdb"),
            crate::store::StoreOptions::default(),
        )
        .unwrap();
        let engine = Engine::new(opened.store.clone(), stopping.clone());
        (engine, opened, dir)
    }

    /// Waits for the next item of a running query, within a deadline.
    async fn next(r: &mut Running) -> Option<Result<RecordBatch, QueryError>> {
        tokio::time::timeout(std::time::Duration::from_secs(20), r.batches.recv())
            .await
            .expect("the query answers within 20 s")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_shutdown_cuts_a_running_query_short_and_refuses_new_ones() {
        let stopping = CancellationToken::new();
        let (engine, _opened, _dir) = engine(&stopping);
        let mut running = engine.start(CROSS_JOIN.to_string()).await.unwrap();
        // Before the shutdown the query is simply running: a result that ended by itself
        // is never reported as cut short.
        assert!(!running.cancel.cut_short());
        stopping.cancel();
        assert!(next(&mut running).await.is_none(), "the batches end");
        assert!(running.cancel.cut_short(), "and are reported cut short");
        match engine.start("select 1".to_string()).await {
            Err(QueryError::Stopping(m)) => assert_eq!(m, kq_schema::follow::SHUTTING_DOWN),
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a query started after the shutdown began"),
        }
    }

    /// The first column of the first row `sql` gives through the engine, as text.
    async fn first(engine: &Arc<Engine>, sql: &str) -> Option<String> {
        let mut running = engine.start(sql.to_string()).await.unwrap();
        let batch = next(&mut running).await.unwrap().unwrap();
        while next(&mut running).await.is_some() {}
        let text = arrow::util::display::array_value_to_string(batch.column(0), 0).unwrap();
        (!batch.column(0).is_null(0)).then_some(text)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_statement_asked_again_answers_from_the_data_and_the_session_as_they_are_now() {
        let stopping = CancellationToken::new();
        let (engine, opened, _dir) = engine(&stopping);
        let error = "select getvariable('kq_write_error')::VARCHAR";
        let count = "select count(*) from contexts";
        assert_eq!(first(&engine, error).await, None);
        assert_eq!(first(&engine, count).await.as_deref(), Some("0"));
        // Both statements are now prepared on the one pooled connection, which the next
        // queries reuse. A write error set since must show, and so must a row written
        // since.
        opened
            .store
            .health
            .set_write_error(Some("disk full".to_string()));
        let w = opened.store.reader().unwrap();
        w.execute_batch("INSERT INTO contexts (name) VALUES ('c1')")
            .unwrap();
        assert_eq!(
            first(&engine, error).await.as_deref(),
            Some("disk full"),
            "the session variable as it is now"
        );
        assert_eq!(first(&engine, count).await.as_deref(), Some("1"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_query_that_ends_by_itself_is_whole_even_if_the_shutdown_follows() {
        let stopping = CancellationToken::new();
        let (engine, _opened, _dir) = engine(&stopping);
        let mut running = engine.start("select 42 as n".to_string()).await.unwrap();
        let batch = next(&mut running).await.unwrap().unwrap();
        assert_eq!(batch.num_rows(), 1);
        assert!(next(&mut running).await.is_none());
        stopping.cancel();
        assert!(!running.cancel.cut_short());
    }
}
