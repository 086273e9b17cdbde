//! The image cache, a SQLite file that outlives the daemon: tag→digest answers for a day,
//! digest→size answers for ever (digests are immutable), and failures for a shorter while.
//! A file kq cannot read is moved aside and rebuilt: the cache is never worth failing for.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::manifest::Entry;

/// Marks the file as kq's, so a foreign SQLite file is never written into.
const APPLICATION_ID: i32 = 0x6b71_696d; // "kqim"
const VERSION: i32 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tags (
  reference TEXT PRIMARY KEY,
  digest TEXT NOT NULL,
  fetched_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sizes (
  digest TEXT NOT NULL,
  platform TEXT NOT NULL,
  size_bytes INTEGER NOT NULL,
  fetched_at INTEGER NOT NULL,
  PRIMARY KEY (digest, platform)
);
CREATE TABLE IF NOT EXISTS entries (
  digest TEXT NOT NULL,
  platform TEXT NOT NULL,
  manifest TEXT NOT NULL,
  PRIMARY KEY (digest, platform)
);
CREATE TABLE IF NOT EXISTS failures (
  reference TEXT PRIMARY KEY,
  error TEXT NOT NULL,
  fetched_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL
);";

/// A tag's digest, as last resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagEntry {
    pub digest: String,
    pub fetched_at: i64,
    pub expires_at: i64,
}

/// A remembered failure: the lookup is not repeated before `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: String,
    pub fetched_at: i64,
    pub expires_at: i64,
}

/// The open cache. Each call is one short statement, so a shutdown at any moment leaves
/// whole entries only.
pub struct Cache {
    conn: Mutex<Connection>,
    pub path: PathBuf,
}

impl Cache {
    /// Opens the cache at `path`, moving aside a corrupt or foreign file; when even a fresh
    /// file cannot be created, the cache lives in memory for this run.
    pub fn open(path: &Path) -> Cache {
        let conn = match try_open(path) {
            Ok(c) => c,
            Err(e) => {
                let aside = path.with_extension(format!(
                    "sqlite.unreadable-{}",
                    jiff::Timestamp::now().as_second()
                ));
                tracing::warn!(path = %path.display(), error = %e, aside = %aside.display(), "image cache unreadable; moved aside and rebuilt");
                let _ = std::fs::rename(path, &aside);
                for suffix in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                try_open(path).unwrap_or_else(|e| {
                    tracing::warn!(path = %path.display(), error = %e, "cannot create the image cache; keeping it in memory");
                    let c = Connection::open_in_memory().expect("an in-memory database opens");
                    c.execute_batch(SCHEMA).expect("the cache schema applies");
                    c
                })
            }
        };
        Cache {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The digest a tag resolved to, if that answer has not expired at `now`.
    pub fn tag(&self, reference: &str, now: i64) -> Option<TagEntry> {
        let (digest, fetched_at, expires_at) = self.timed(Timed::Tags, reference, now)?;
        Some(TagEntry {
            digest,
            fetched_at,
            expires_at,
        })
    }

    pub fn put_tag(&self, reference: &str, e: &TagEntry) {
        self.put_timed(
            Timed::Tags,
            reference,
            &e.digest,
            e.fetched_at,
            e.expires_at,
        );
    }

    /// The size of a manifest for a platform; `""` stands for a single-platform manifest,
    /// whose size is the same whatever node runs it.
    pub fn size(&self, digest: &str, platform: &str) -> Option<i64> {
        self.conn()
            .query_row(
                "SELECT size_bytes FROM sizes WHERE digest = ?1 AND platform IN (?2, '') ORDER BY platform DESC LIMIT 1",
                params![digest, platform],
                |r| r.get(0),
            )
            .optional()
            .unwrap_or_else(|e| log_error("read a size", e))
    }

    pub fn put_size(&self, digest: &str, platform: &str, size_bytes: i64, now: i64) {
        let r = self.conn().execute(
            "INSERT OR REPLACE INTO sizes (digest, platform, size_bytes, fetched_at) VALUES (?1, ?2, ?3, ?4)",
            params![digest, platform, size_bytes, now],
        );
        if let Err(e) = r {
            log_error::<()>("write a size", e);
        }
    }

    /// The platform entries of a multi-arch index (immutable, like its digest).
    pub fn entries(&self, digest: &str) -> Vec<Entry> {
        let conn = self.conn();
        let read = || -> rusqlite::Result<Vec<Entry>> {
            let mut stmt =
                conn.prepare_cached("SELECT platform, manifest FROM entries WHERE digest = ?1")?;
            let rows = stmt.query_map([digest], |r| {
                Ok(Entry {
                    platform: r.get(0)?,
                    digest: r.get(1)?,
                })
            })?;
            rows.collect()
        };
        read().unwrap_or_else(|e| log_error("read index entries", e))
    }

    pub fn put_entries(&self, digest: &str, entries: &[Entry]) {
        let mut conn = self.conn();
        let mut write = || -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for e in entries {
                tx.execute(
                    "INSERT OR REPLACE INTO entries (digest, platform, manifest) VALUES (?1, ?2, ?3)",
                    params![digest, e.platform, e.digest],
                )?;
            }
            tx.commit()
        };
        if let Err(e) = write() {
            log_error::<()>("write index entries", e);
        }
    }

    /// A failure remembered for `reference` that has not expired at `now`.
    pub fn failure(&self, reference: &str, now: i64) -> Option<Failure> {
        let (error, fetched_at, expires_at) = self.timed(Timed::Failures, reference, now)?;
        Some(Failure {
            error,
            fetched_at,
            expires_at,
        })
    }

    pub fn put_failure(&self, reference: &str, f: &Failure) {
        self.put_timed(
            Timed::Failures,
            reference,
            &f.error,
            f.fetched_at,
            f.expires_at,
        );
    }

    /// Forgets a failure once the reference resolves.
    pub fn clear_failure(&self, reference: &str) {
        let _ = self
            .conn()
            .execute("DELETE FROM failures WHERE reference = ?1", [reference]);
    }
}

/// A cache that fails mid-run is a cache miss, not an error: the lookup goes to the source.
/// The tables of answers that expire: a reference's value, when it was learnt, and until
/// when it holds.
#[derive(Clone, Copy)]
enum Timed {
    Tags,
    Failures,
}

impl Timed {
    /// The table and its value column.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Timed::Tags => ("tags", "digest"),
            Timed::Failures => ("failures", "error"),
        }
    }
}

impl Cache {
    fn timed(&self, t: Timed, reference: &str, now: i64) -> Option<(String, i64, i64)> {
        let (table, value) = t.names();
        self.conn()
            .query_row(
                &format!("SELECT {value}, fetched_at, expires_at FROM {table} WHERE reference = ?1 AND expires_at > ?2"),
                params![reference, now],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .unwrap_or_else(|e| log_error(&format!("read {table}"), e))
    }

    fn put_timed(&self, t: Timed, reference: &str, v: &str, fetched_at: i64, expires_at: i64) {
        let (table, value) = t.names();
        let r = self.conn().execute(
            &format!("INSERT OR REPLACE INTO {table} (reference, {value}, fetched_at, expires_at) VALUES (?1, ?2, ?3, ?4)"),
            params![reference, v, fetched_at, expires_at],
        );
        if let Err(e) = r {
            log_error::<()>(&format!("write {table}"), e);
        }
    }
}

fn log_error<T: Default>(what: &str, e: rusqlite::Error) -> T {
    tracing::warn!(error = %e, "image cache: cannot {what}");
    T::default()
}

fn try_open(path: &Path) -> Result<Connection, String> {
    if let Some(dir) = path.parent() {
        crate::private::dir(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut f = path.as_os_str().to_owned();
        f.push(suffix);
        let f = Path::new(&f);
        crate::private::file(f).map_err(|e| format!("cannot make {} private: {e}", f.display()))?;
    }
    let conn = Connection::open(path).map_err(|e| e.to_string())?;
    let id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if id != APPLICATION_ID && tables > 0 {
        return Err("not a kq image cache (foreign application id)".into());
    }
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if check != "ok" {
        return Err(format!("integrity check failed: {check}"));
    }
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 1000;
         PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {VERSION};
         {SCHEMA}"
    ))
    .map_err(|e| e.to_string())?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopening_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kq/images.sqlite");
        let d = "sha256:aa".to_string();
        {
            let c = Cache::open(&path);
            c.put_tag(
                "docker.io/library/nginx:1",
                &TagEntry {
                    digest: d.clone(),
                    fetched_at: 100,
                    expires_at: 200,
                },
            );
            c.put_size(&d, "", 1234, 100);
            c.put_failure(
                "docker.io/library/gone:1",
                &Failure {
                    error: "not found".into(),
                    fetched_at: 100,
                    expires_at: 150,
                },
            );
        }
        let c = Cache::open(&path);
        assert_eq!(c.tag("docker.io/library/nginx:1", 199).unwrap().digest, d);
        assert_eq!(c.tag("docker.io/library/nginx:1", 200), None);
        // Sizes never expire; a platform-specific answer is preferred to none.
        assert_eq!(c.size(&d, "linux/amd64"), Some(1234));
        c.put_size(&d, "linux/amd64", 99, 100);
        assert_eq!(c.size(&d, "linux/amd64"), Some(99));
        assert!(c.failure("docker.io/library/gone:1", 149).is_some());
        assert!(c.failure("docker.io/library/gone:1", 150).is_none());
    }

    #[test]
    fn a_corrupt_or_foreign_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.sqlite");
        std::fs::write(&path, b"this is not a database, but it is long enough to look like one............................................................").unwrap();
        let c = Cache::open(&path);
        c.put_size("sha256:bb", "", 1, 1);
        assert_eq!(c.size("sha256:bb", ""), Some(1));
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("unreadable")
            })
            .count();
        assert_eq!(aside, 1);

        let foreign = dir.path().join("foreign.sqlite");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('keep me');")
            .unwrap();
        let c = Cache::open(&foreign);
        assert_eq!(c.size("sha256:bb", ""), None);
        assert!(
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(Result::ok)
                .any(|e| e
                    .file_name()
                    .to_string_lossy()
                    .starts_with("foreign.sqlite.unreadable")),
            "the foreign file is kept aside, not written into"
        );
    }
}
