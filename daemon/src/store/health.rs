//! The store's own health: why writes fail (a full disk above all), and how the writer
//! backs off while they do, and what kqd had to do to its database file at start.
//!
//! A full disk cannot record that it is full, so what is wrong lives in memory
//! ([`Health`]) and reaches readers as DuckDB session variables: every read connection
//! gets `kq_write_error` and `kq_notice` set before it runs a query (only when they changed
//! since that connection last saw them), and the `status` view reads them with
//! `getvariable`, which is NULL for any other client of the file.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use duckdb::Connection;

use super::StoreError;

/// Why a batch could not be written, worded for `contexts.error` and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteFailure {
    /// The file system holding `path` has no space left.
    DiskFull { path: String },
    /// Anything else DuckDB refused; the message is DuckDB's.
    Other { message: String },
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteFailure::DiskFull { path } => write!(f, "disk full: could not write {path}"),
            WriteFailure::Other { message } => {
                write!(f, "a write to the inventory failed: {message}")
            }
        }
    }
}

impl WriteFailure {
    /// Reads the cause out of the error of a failed batch. DuckDB words a full disk as
    /// `… write to file "PATH" …: No space left on device` (or `… disk is full …`), and the
    /// file it names is the one kqd could not write; `db` stands in when it names none.
    pub fn classify(e: &StoreError, db: &Path) -> WriteFailure {
        let message = e.to_string();
        let lower = message.to_ascii_lowercase();
        if lower.contains("no space left on device")
            || lower.contains("disk is full")
            || lower.contains("disk full")
            || lower.contains("out of disk space")
        {
            let path = quoted_path(&message).unwrap_or_else(|| db.display().to_string());
            return WriteFailure::DiskFull { path };
        }
        WriteFailure::Other { message }
    }
}

/// The first double-quoted absolute path in `message`.
fn quoted_path(message: &str) -> Option<String> {
    message
        .split('"')
        .skip(1)
        .step_by(2)
        .find(|s| s.starts_with('/'))
        .map(str::to_string)
}

/// How long the writer waits before it tries again while writes keep failing: 1 s doubling
/// to [`Hold::MAX`]. The cap stays well inside the systemd watchdog's 30 s keepalive
/// period, which waits for a barrier through the writer.
#[derive(Debug, Clone)]
pub struct Hold {
    pub cause: WriteFailure,
    pub wait: Duration,
    /// Failed attempts since writes last succeeded.
    pub failures: u32,
}

impl Hold {
    pub const MIN: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(8);

    /// The hold after one more failure: the cause is the latest, the wait doubles.
    pub fn after(previous: Option<Hold>, cause: WriteFailure) -> Hold {
        match previous {
            None => Hold {
                cause,
                wait: Self::MIN,
                failures: 1,
            },
            Some(h) => Hold {
                cause,
                wait: (h.wait * 2).min(Self::MAX),
                failures: h.failures + 1,
            },
        }
    }
}

/// What is wrong with the store right now, shared by the writer and the readers.
#[derive(Debug, Default)]
pub struct Health {
    generation: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone)]
struct State {
    write_error: Option<String>,
    notice: Option<String>,
}

impl Health {
    /// Sets (or clears) why writes fail.
    pub fn set_write_error(&self, e: Option<String>) {
        self.update(|s| s.write_error = e);
    }

    /// Sets a notice about kqd's own state, shown as a `kqd` row of `status` until kqd
    /// restarts.
    pub fn set_notice(&self, n: Option<String>) {
        self.update(|s| s.notice = n);
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Brings `conn`'s session variables up to date; `seen` is the generation it last had.
    pub fn apply_to(&self, conn: &Connection, seen: &mut u64) -> Result<(), duckdb::Error> {
        let now = self.generation.load(Ordering::Acquire);
        if now == *seen {
            return Ok(());
        }
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let set = |name: &str, v: &Option<String>| match v {
            Some(v) => format!("SET VARIABLE {name} = '{}';", v.replace('\'', "''")),
            None => format!("RESET VARIABLE {name};"),
        };
        conn.execute_batch(&format!(
            "{}{}",
            set("kq_write_error", &s.write_error),
            set("kq_notice", &s.notice)
        ))?;
        *seen = now;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_named_with_the_file_duckdb_could_not_write() {
        let e = StoreError::Batch(
            "IO Error: Could not write file \"/data/kq.duckdb.wal\": No space left on device"
                .into(),
        );
        let f = WriteFailure::classify(&e, Path::new("/data/kq.duckdb"));
        assert_eq!(
            f.to_string(),
            "disk full: could not write /data/kq.duckdb.wal"
        );
        let other = WriteFailure::classify(
            &StoreError::Batch("Constraint Error: boom".into()),
            Path::new("/data/kq.duckdb"),
        );
        assert!(matches!(other, WriteFailure::Other { .. }), "{other:?}");
    }

    #[test]
    fn the_wait_doubles_to_its_cap() {
        let cause = WriteFailure::Other {
            message: "x".into(),
        };
        let mut h = Hold::after(None, cause.clone());
        let mut waits = vec![h.wait];
        for _ in 0..5 {
            h = Hold::after(Some(h), cause.clone());
            waits.push(h.wait);
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 8, 8]);
        assert_eq!(h.failures, 6);
    }

    #[test]
    fn readers_see_the_state_through_session_variables() {
        let conn = Connection::open_in_memory().unwrap();
        let health = Health::default();
        let mut seen = 0;
        let read = |c: &Connection| -> (Option<String>, Option<String>) {
            c.query_row(
                "SELECT getvariable('kq_write_error')::VARCHAR, getvariable('kq_notice')::VARCHAR",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
        };
        health.apply_to(&conn, &mut seen).unwrap();
        assert_eq!(read(&conn), (None, None));
        health.set_write_error(Some("disk full: could not write '/x'".into()));
        health.apply_to(&conn, &mut seen).unwrap();
        assert_eq!(
            read(&conn).0.as_deref(),
            Some("disk full: could not write '/x'")
        );
        health.set_write_error(None);
        health.set_notice(Some("moved aside".into()));
        health.apply_to(&conn, &mut seen).unwrap();
        assert_eq!(read(&conn), (None, Some("moved aside".into())));
    }
}
