//! The store: the one DuckDB writer. Watchers send [`Op`]s through a bounded channel; a
//! dedicated thread batches them into transactions (closed by size or by a short time
//! limit) and writes them with the Appender, guided by an index of what is stored (see
//! `index`). Readers get their own connections to the same database through [`Store::reader`].

mod batch;
mod health;
mod images;
mod incidents;
mod index;
pub(crate) mod migrate;
pub mod outbox;
mod phase;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use duckdb::Connection;
use tokio::sync::{mpsc, oneshot};

pub use health::{Health, WriteFailure};
pub use incidents::IncidentRow;
pub use outbox::{MirrorState, MirrorStatus};
pub use phase::{ContextPhase, ResourcePhase};
pub use writer::{ContextInfo, ContextState, Writer};

use crate::rows::{Kind, ObjectRows};

/// A WAL size DuckDB never reaches: its automatic checkpoints are off.
const NO_AUTOMATIC_CHECKPOINT: &str = "1000TB";

/// DuckDB's write-ahead log beside the database file.
fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".wal");
    PathBuf::from(p)
}

/// Errors of the store, naming the database file involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: PathBuf,
        source: duckdb::Error,
    },
    #[error(
        "the database {path} has schema version {found}, newer than this kqd supports ({supported}); upgrade kqd or move the file aside"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("migrating {path} to schema version {version}: {source}")]
    Migrate {
        path: PathBuf,
        version: u32,
        source: duckdb::Error,
    },
    #[error("cannot stage rows: {0}")]
    Batch(String),
    #[error("database error: {0}")]
    Db(#[from] duckdb::Error),
    #[error("cannot create {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One change for the writer.
#[derive(Debug)]
pub enum Op {
    /// Insert or replace an object's rows.
    Upsert {
        kind: Kind,
        context: Arc<str>,
        rows: ObjectRows,
    },
    /// Remove an object's rows.
    Delete {
        kind: Kind,
        context: Arc<str>,
        uid: String,
    },
    /// A relist finished: remove rows of this context and kind whose uid was not listed.
    /// For `objects`, `scope` names the resource (API group, plural) that was relisted.
    Sweep {
        kind: Kind,
        context: Arc<str>,
        keep: Vec<String>,
        scope: Option<(String, String)>,
    },
    /// A resource's watch changed state: syncing, ready (listed), or forbidden with why.
    ResourceState {
        context: Arc<str>,
        group: String,
        resource: String,
        state: ResourcePhase,
        error: Option<String>,
    },
    /// A resource stopped being served (its CRD was deleted): remove its objects.
    RemoveResource {
        context: Arc<str>,
        group: String,
        resource: String,
    },
    /// Static facts about a context, from the kubeconfig.
    ContextInfo(ContextInfo),
    /// A context's connection state changed.
    ContextState(ContextState),
    /// The uid of a context's kube-system namespace, which identifies its cluster.
    ClusterId {
        name: String,
        cluster_id: Option<String>,
    },
    /// The context's kubeconfig file is broken (kqd runs it from the last good version), or
    /// fine again (`None`).
    ContextConfigError { name: String, error: Option<String> },
    /// A context left the kubeconfig: remove its rows everywhere.
    RemoveContext { name: String },
    /// An image was sized (or failed to be): its `images` row and the references naming it.
    Image(Box<crate::images::ImageFound>),
    /// What kqd has asked each registry: the whole `registries` table.
    Registries(Vec<crate::images::RegistryStatus>),
    /// Where to send what pods and nodes say about images (image sizing is on).
    ImageSightings(tokio::sync::mpsc::UnboundedSender<crate::images::Sighting>),
    /// The mirror was turned on or off (SIGHUP): record an outbox, or drop it.
    MirrorOn(bool),
    /// PostgreSQL committed these outbox entries' rows.
    MirrorAck(Vec<outbox::Read>),
    /// The mirror's state, for the `mirror` row.
    MirrorStatus(Box<MirrorStatus>),
    /// The log tail fetched for an incident's occurrence (`marker`), already masked.
    CrashLog {
        context: Arc<str>,
        incident: String,
        marker: String,
        log: String,
    },
    /// Answered once everything sent before it is committed.
    Barrier(oneshot::Sender<()>),
}

impl Op {
    /// The bytes of text this op carries into a batch: what its rows hold in `Text`
    /// values, the `objects` JSON above all. Counted for `StoreOptions::batch_bytes`.
    pub fn text_bytes(&self) -> usize {
        match self {
            Op::Upsert { rows, .. } => rows.text_bytes(),
            _ => 0,
        }
    }
}

/// Text bytes per transaction at most, by default. Measured at 10 × 10k pods: without a
/// byte limit (batches of up to 2,500 pods) the sync peaked at 250–272 MiB, with 8 MiB at
/// 255 MiB, with 4 MiB at 228–238 MiB; the more frequent commits make the sync 10–20%
/// slower (`tests/e2e/BENCHMARKS.md`).
pub const BATCH_BYTES: usize = 4 << 20;

/// Tunables of the writer.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Ops per transaction at most.
    pub batch_max: usize,
    /// Text bytes per transaction at most (the ops' rows, `Op::text_bytes`): a batch is
    /// closed once it holds this much, whatever its op count. The ops, the Arrow columns
    /// and DuckDB's appender each hold a batch's text while it is written, so batches of a
    /// few thousand pods' JSON were what made the sync's RSS peak.
    pub batch_bytes: usize,
    /// The batch window: at most one commit per interval, and how long a batch waits for
    /// more ops when the writer is behind (see `writer::batch_deadline`).
    pub batch_interval: std::time::Duration,
    /// DuckDB's memory limit, e.g. "512MB".
    pub memory_limit: String,
    /// WAL size in bytes that makes the writer checkpoint after a commit. Appended rows stay
    /// in memory until they are checkpointed, so this bounds memory as much as
    /// `memory_limit` does.
    pub checkpoint_threshold: u64,
    /// How long `changes` rows are kept.
    pub changes_retention: std::time::Duration,
    /// How long events are kept after they were last seen.
    pub events_retention: std::time::Duration,
    /// How long ended incidents are kept once their object is gone.
    pub incidents_retention: std::time::Duration,
    /// Grace periods and timeouts of incident detection.
    pub incidents: crate::incidents::IncidentOptions,
    /// The PostgreSQL mirror is on: every transaction records what it owes it.
    pub mirror: bool,
    /// Record what each modify changed (`changes.diff`), from the stored state it replaces.
    pub diffs: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            batch_max: 20_000,
            batch_bytes: BATCH_BYTES,
            batch_interval: std::time::Duration::from_millis(50),
            // DuckDB's buffer pool is most of kqd's memory; 64 MB keeps the daemon under its
            // budget at 100k pods, and larger queries spill to disk rather than fail.
            memory_limit: "64MB".to_string(),
            // Small, because a checkpoint holds up every write while it runs, for time in
            // proportion to the WAL: at 1,000 events/s over 100k pods, 256 MB meant a 1.4–2.8 s
            // stall every half minute (watch-to-query p99 1.4 s), 16 MB one of about 0.1 s every
            // two seconds (p99 0.25 s), for the same checkpointing time in all.
            checkpoint_threshold: 16_000_000,
            diffs: true,
            changes_retention: std::time::Duration::from_secs(7 * 86_400),
            events_retention: std::time::Duration::from_secs(14 * 86_400),
            incidents_retention: std::time::Duration::from_secs(90 * 86_400),
            incidents: Default::default(),
            mirror: false,
        }
    }
}

/// What [`Store::open`] returns: the store, the channel to the writer, and its thread.
pub struct Opened {
    pub store: Arc<Store>,
    pub ops: mpsc::Sender<Op>,
    pub writer: std::thread::JoinHandle<()>,
    /// Bumped when a batch could not be written: watchers relist so nothing stays lost.
    pub resync: tokio::sync::watch::Receiver<u64>,
    /// The outbox's last sequence number, after each commit that recorded something.
    pub outbox: tokio::sync::watch::Receiver<i64>,
}

/// The tables one commit wrote, by name, sorted.
pub type Committed = Arc<Vec<&'static str>>;

/// The open database: hands out read connections; the writer owns the writing one.
pub struct Store {
    root: Mutex<Connection>,
    pub path: PathBuf,
    /// Incidents as they are recorded or updated, for followers.
    incidents: tokio::sync::broadcast::Sender<Arc<IncidentRow>>,
    /// The tables each commit wrote, for followers (`.watch`).
    commits: tokio::sync::broadcast::Sender<Committed>,
    /// The Arrow schema of `incidents`, for streaming them.
    pub incidents_schema: duckdb::arrow::datatypes::SchemaRef,
    /// What is wrong with the store, for readers (see `health`).
    pub health: Arc<Health>,
}

/// Opens the file with kqd's settings and brings its schema up to date.
fn open_and_migrate(path: &Path, opts: &StoreOptions) -> Result<(Connection, bool), StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let config = duckdb::Config::default()
        .enable_autoload_extension(false)
        .and_then(|c| c.with("autoinstall_known_extensions", "false"))
        .and_then(|c| c.max_memory(&opts.memory_limit))
        // The writer checkpoints itself once the WAL passes `opts.checkpoint_threshold`
        // (see `Writer::checkpoint_if_due`); DuckDB's own automatic checkpoint, which runs
        // inside the COMMIT that crossed the threshold, never comes.
        .and_then(|c| c.with("checkpoint_threshold", NO_AUTOMATIC_CHECKPOINT))
        .map_err(open_error)?;
    let conn = Connection::open_with_flags(path, config).map_err(open_error)?;
    let migrated = migrate::apply(&conn, path)?;
    Ok((conn, migrated))
}

/// Whether DuckDB refused the file because its bytes are not a sound database: not a
/// DuckDB file at all, a failed checksum, or a WAL that cannot be replayed. A lock held by
/// another process, a permission, a full disk, or a file from a newer DuckDB are not
/// corruption, and moving such a file aside would lose or split a good inventory.
fn is_corrupt(e: &duckdb::Error) -> bool {
    let m = e.to_string().to_ascii_lowercase();
    let not_corrupt = [
        "could not set lock",
        "conflicting lock",
        "permission denied",
        "no space left",
        "newer version",
        "older version",
    ];
    let corrupt = [
        "not a valid duckdb database file",
        "corrupt",
        "checksum",
        "replaying wal",
        "replay wal",
    ];
    corrupt.iter().any(|c| m.contains(c)) && !not_corrupt.iter().any(|c| m.contains(c))
}

/// Renames the database file and its WAL to `<file>.corrupt-<UTC time>` (and `….wal`), so
/// that DuckDB would still pair them if someone opens the moved file.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let mut moved = path.as_os_str().to_owned();
    moved.push(format!(".corrupt-{stamp}"));
    let moved = PathBuf::from(moved);
    let rename = |from: &Path, to: &Path| match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Io {
            path: from.to_path_buf(),
            source,
        }),
    };
    rename(path, &moved)?;
    rename(&wal_path(path), &wal_path(&moved))?;
    Ok(moved)
}

impl Store {
    /// Opens (or creates) the database file, applies migrations, and starts the writer
    /// thread. Returns the store and the channel to send ops on.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Opened, StoreError> {
        if let Some(dir) = path.parent() {
            crate::private::dir(dir).map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        // Files an earlier kqd (or another umask) left readable by others.
        for f in [path.to_path_buf(), wal_path(path)] {
            crate::private::file(&f).map_err(|source| StoreError::Io { path: f, source })?;
        }
        let health = Arc::new(Health::default());
        let (conn, migrated) = match open_and_migrate(path, &opts) {
            Err(StoreError::Open { source, .. }) if is_corrupt(&source) => {
                // The inventory can be listed again from the clusters; the history in the
                // bad file cannot, so it is kept beside the new one rather than deleted.
                let moved = move_aside(path)?;
                let notice = format!(
                    "{} could not be opened ({source}); moved it aside to {} and started a fresh inventory: the history from before (incidents, changes, events) is in the moved file",
                    path.display(),
                    moved.display()
                );
                tracing::error!(path = %path.display(), moved_to = %moved.display(), error = %source, "the database file is corrupt; moved it aside and started a fresh one");
                health.set_notice(Some(notice));
                open_and_migrate(path, &opts)?
            }
            other => other?,
        };
        let writer_conn = conn.try_clone()?;
        let (incidents, _) = tokio::sync::broadcast::channel(1024);
        let (commits, _) = tokio::sync::broadcast::channel(64);
        let incidents_schema = conn
            .prepare("SELECT * FROM main.incidents LIMIT 0")?
            .query_arrow([])?
            .get_schema();
        let store = Arc::new(Store {
            root: Mutex::new(conn),
            path: path.to_path_buf(),
            incidents: incidents.clone(),
            commits: commits.clone(),
            incidents_schema,
            health: health.clone(),
        });
        let (tx, rx) = mpsc::channel(1024);
        let (resync_tx, resync) = tokio::sync::watch::channel(0u64);
        let (outbox_tx, outbox) = tokio::sync::watch::channel(0i64);
        let mut writer = Writer::new(
            writer_conn,
            opts,
            resync_tx,
            migrated,
            incidents,
            path.to_path_buf(),
            health.clone(),
        )?;
        writer.wake_on_commit(outbox_tx);
        writer.tell_commits(commits);
        let handle = std::thread::Builder::new()
            .name("kq-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| StoreError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Opened {
            store,
            ops: tx,
            writer: handle,
            resync,
            outbox,
        })
    }

    /// The tables of each commit from now on.
    pub fn follow_commits(&self) -> tokio::sync::broadcast::Receiver<Committed> {
        self.commits.subscribe()
    }

    /// Incidents as they are recorded or updated from now on.
    pub fn follow_incidents(&self) -> tokio::sync::broadcast::Receiver<Arc<IncidentRow>> {
        self.incidents.subscribe()
    }

    /// Incident rows as one Arrow batch with the table's schema.
    pub fn incident_batch(
        &self,
        rows: &[Arc<IncidentRow>],
    ) -> Result<duckdb::arrow::record_batch::RecordBatch, StoreError> {
        let values: Vec<_> = rows.iter().map(|r| r.values()).collect();
        batch::record_batch(
            &self.incidents_schema,
            values.iter().map(Vec::as_slice),
            None,
        )
    }

    /// A new connection to the database for queries.
    pub fn reader(&self) -> Result<Connection, StoreError> {
        Ok(self
            .root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_clone()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stops the writer and waits for it, as kqd does at exit: a writer thread still
    /// checkpointing when the test process exits would race DuckDB's teardown.
    fn close(opened: Opened) {
        let Opened {
            store, ops, writer, ..
        } = opened;
        drop(ops);
        writer.join().unwrap();
        drop(store);
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_file_that_is_not_a_database_is_moved_aside_with_its_wal_and_a_fresh_one_opens() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("kq.duckdb");
        let junk: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
        std::fs::write(&db, &junk).unwrap();
        std::fs::write(wal_path(&db), b"not a wal either").unwrap();
        let opened = Store::open(&db, StoreOptions::default()).unwrap();
        let names = files(dir.path());
        let moved: Vec<&String> = names.iter().filter(|n| n.contains(".corrupt-")).collect();
        assert_eq!(moved.len(), 2, "the file and its WAL: {names:?}");
        assert!(moved[0].ends_with(".wal") || moved[1].ends_with(".wal"));
        let kept = moved.iter().find(|n| !n.ends_with(".wal")).unwrap();
        assert_eq!(std::fs::read(dir.path().join(kept)).unwrap(), junk);
        let conn = opened.store.reader().unwrap();
        let mut seen = 0;
        opened.store.health.apply_to(&conn, &mut seen).unwrap();
        let (state, error): (String, String) = conn
            .query_row(
                "SELECT state, error FROM status WHERE context = 'kqd'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(state, "notice");
        assert!(error.contains(kept.as_str()), "{error}");
        drop(conn);
        close(opened);
    }

    #[test]
    fn a_database_from_a_newer_kq_is_refused_and_left_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("kq.duckdb");
        close(Store::open(&db, StoreOptions::default()).unwrap());
        // As a later kq would leave it, written while no kqd runs.
        Connection::open(&db)
            .unwrap()
            .execute_batch("UPDATE kq_meta SET value = '9999' WHERE key = 'schema_version'")
            .unwrap();
        let before = files(dir.path());
        match Store::open(&db, StoreOptions::default()) {
            Err(StoreError::NewerSchema { found: 9999, .. }) => {}
            Err(e) => panic!("refused for the wrong reason: {e}"),
            Ok(_) => panic!("a newer schema was opened"),
        }
        assert_eq!(files(dir.path()), before, "nothing moved");
    }

    #[test]
    fn objects_json_is_stored_with_zstd() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("kq.duckdb");
        close(Store::open(&db, StoreOptions::default()).unwrap());
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "INSERT INTO objects (context, name, uid, object)
             SELECT 'c', 'o' || i, 'u' || i, json_object('spec', repeat('x', 200) || i)
             FROM range(5000) t(i);
             CHECKPOINT;",
        )
        .unwrap();
        let compressions: Vec<String> = conn
            .prepare(
                "SELECT DISTINCT compression FROM pragma_storage_info('objects')
                 WHERE column_name = 'object' AND segment_type <> 'VALIDITY'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(compressions, ["ZSTD"]);
    }

    #[test]
    fn corruption_is_told_apart_from_a_lock_a_permission_and_a_full_disk() {
        let e = |m: &str| duckdb::Error::DuckDBFailure(duckdb::ffi::Error::new(1), Some(m.into()));
        assert!(is_corrupt(&e(
            "IO Error: The file \"/x/kq.duckdb\" exists, but it is not a valid DuckDB database file!"
        )));
        assert!(is_corrupt(&e(
            "IO Error: Corrupt database file: computed checksum 1 does not match stored checksum 2 in block at location 3"
        )));
        for not in [
            "IO Error: Could not set lock on file \"/x/kq.duckdb\": Conflicting lock is held in /usr/bin/kqd (PID 7)",
            "IO Error: Cannot open file \"/x/kq.duckdb\": Permission denied",
            "IO Error: Could not write file \"/x/kq.duckdb.wal\": No space left on device",
        ] {
            assert!(!is_corrupt(&e(not)), "{not}");
        }
    }
}
