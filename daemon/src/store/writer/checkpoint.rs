//! When the writer checkpoints, and whether a checkpoint may vacuum.
//!
//! DuckDB's checkpoint vacuums by default: it rewrites adjacent row groups whose deleted rows
//! let their live rows fit in fewer. Every modify deletes an object's old rows, so under
//! churn every row group of `objects` qualifies, and merging them reads back and compresses
//! again each live row's zstd JSON. A checkpoint that does not vacuum also leaves the rows
//! appended since the last one as a row group of their own, so after an initial sync (a
//! checkpoint per 16 MB of WAL) a vacuum merges those too. Either way a vacuum rewrites most
//! of `objects`, and the writer, which runs the checkpoint, applies nothing meanwhile: 9–11 s
//! for a churn checkpoint at 10 × 10k, against 1.4–2.1 s for the same WAL without it; 4.8 s
//! for the first vacuum after a sync, and 19.4 s after a sync and a minute of 1,000 events/s.
//!
//! So a vacuum is paid only when it is worth its cost, as PostgreSQL's autovacuum does: once
//! the deleted rows not yet vacuumed away reach half the live rows (a third of the table is
//! dead space then), and only once the load is light. Its cost is in proportion to the table,
//! so this bounds the vacuum's cost per deleted row, whatever the table's size. A writer that
//! is never lightly loaded pays a due vacuum anyway, at its next checkpoint, once 15 minutes
//! have passed since the last one: a stall that often at most, and dead rows bounded by that
//! much churn beyond the share. Row groups whose rows are all deleted are dropped by every
//! checkpoint, vacuuming or not, and a sync's fragments cost scans little, so neither is a
//! reason to vacuum on its own.
//!
//! The deleted rows are counted from the file when the writer starts (DuckDB keeps them
//! until a vacuum), so a restart or a crash does not forget them, and a stopping writer
//! vacuums only when one is owed by the same share: a vacuum at every stop made stopping
//! after a 10 × 10k sync take 6 s, and grew the file from 251 to 359 MB, to merge the sync's
//! row groups with nothing deleted.

use std::time::{Duration, Instant};

use duckdb::Connection;

/// Ops a second under which the writer counts as lightly loaded, measured over the last
/// whole [`LOAD_WINDOW`] and the current one. A real fleet's background churn (leases,
/// events, pod status) is well under it; a rollout or the load benchmark is well over.
const LIGHT_LOAD: f64 = 100.0;

/// How long one measurement of the load lasts.
const LOAD_WINDOW: Duration = Duration::from_secs(10);

/// How many vacuum tasks a vacuuming checkpoint may schedule: DuckDB's default. A smaller
/// budget does not bound the stall: one task merges up to three row groups' worth of rows,
/// and at 286k objects a budget of one took as long as the whole vacuum.
const VACUUM_TASKS: u32 = 100;

/// Deleted rows, as a share of the live ones, at which a vacuum is paid under a light load.
const VACUUM_WHEN_DEAD: f64 = 0.5;

/// How long after the last vacuum a due one is paid at the next checkpoint whatever the load.
/// A writer under sustained load stalls for a vacuum at most this often, and its file holds
/// at most this long's deletes beyond the share above.
const VACUUM_ANYWAY_AFTER: Duration = Duration::from_secs(15 * 60);

/// How long after a failed checkpoint the next is tried.
const RETRY: Duration = Duration::from_secs(10);

/// The ops the writer applied, per window of [`LOAD_WINDOW`].
#[derive(Debug)]
pub(super) struct Load {
    /// When the current window began, and the ops applied in it so far.
    since: Instant,
    ops: u64,
    /// The rate of the last whole window, once there was one.
    last: Option<f64>,
}

impl Load {
    pub(super) fn new(now: Instant) -> Load {
        Load {
            since: now,
            ops: 0,
            last: None,
        }
    }

    /// Counts `ops` applied at `now`.
    pub(super) fn record(&mut self, ops: usize, now: Instant) {
        self.roll(now);
        self.ops += ops as u64;
    }

    /// Whether both the last whole window and the current one stayed under [`LIGHT_LOAD`].
    /// The current one counts from its first second, so a storm that has just begun is
    /// heavy at once.
    pub(super) fn light(&mut self, now: Instant) -> bool {
        self.roll(now);
        let elapsed = now
            .saturating_duration_since(self.since)
            .max(Duration::from_secs(1));
        let current = self.ops as f64 / elapsed.as_secs_f64();
        current < LIGHT_LOAD && self.last.is_none_or(|r| r < LIGHT_LOAD)
    }

    /// Closes the current window once it has lasted [`LOAD_WINDOW`]. A window that ran on
    /// while the writer was idle is one long window, whose rate is correspondingly low.
    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= LOAD_WINDOW {
            self.last = Some(self.ops as f64 / elapsed.as_secs_f64());
            self.since = now;
            self.ops = 0;
        }
    }
}

/// What the writer's checkpoints have to remember between turns.
#[derive(Debug)]
pub(super) struct Checkpoints {
    pub(super) load: Load,
    /// `objects` rows deleted and not vacuumed away: those the file held when the writer
    /// started ([`stored_dead_rows`]), and those it deleted since. A failed batch's deletes
    /// count too; they only make the vacuum come a little early.
    pub(super) dead: u64,
    /// When the last vacuum ran (or this process started).
    pub(super) vacuumed_at: Instant,
    /// After a failed checkpoint: no other is tried before this.
    pub(super) retry_at: Option<Instant>,
}

/// What one checkpoint does, decided by [`Checkpoints::due`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Checkpoint {
    /// Writes the WAL into the file and merges row groups that deletes thinned.
    Vacuuming,
    /// Writes the WAL into the file and leaves row groups as they are.
    Plain,
}

impl Checkpoint {
    /// The statements that run it. DuckDB's `max_vacuum_tasks` is a global setting, read by
    /// the checkpoint, so it is set before each one.
    pub(super) fn sql(self) -> String {
        let tasks = match self {
            Checkpoint::Vacuuming => VACUUM_TASKS,
            Checkpoint::Plain => 0,
        };
        format!("SET GLOBAL max_vacuum_tasks = {tasks}; CHECKPOINT;")
    }
}

/// The `objects` rows the file holds deleted, which only a vacuum reclaims: the table's
/// rows as its row groups count them, deleted or not (`duckdb_tables().estimated_size`, which
/// costs nothing, where `pragma_storage_info` took 140–185 ms at 10 × 10k), less the live
/// ones. That it counts deleted rows is DuckDB's behaviour, not its documentation; the
/// writer's restart test fails if it changes.
pub(super) fn stored_dead_rows(conn: &Connection) -> Result<u64, duckdb::Error> {
    conn.query_row(
        "SELECT coalesce((SELECT estimated_size FROM duckdb_tables()
                           WHERE database_name = current_database() AND schema_name = 'main'
                             AND table_name = 'objects'), 0)
              - (SELECT count(*) FROM main.objects)",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
}

impl Checkpoints {
    /// The state of a writer starting at `now` over a file that holds `dead` deleted rows.
    pub(super) fn new(now: Instant, dead: u64) -> Checkpoints {
        Checkpoints {
            load: Load::new(now),
            dead,
            vacuumed_at: now,
            retry_at: None,
        }
    }

    /// Counts `rows` deleted from `objects`.
    pub(super) fn deleted(&mut self, rows: usize) {
        self.dead += rows as u64;
    }

    /// The checkpoint to run now, if any, given the WAL's size and the live `objects` rows:
    /// one past `threshold` bytes of WAL, vacuuming if a vacuum is due; or one that pays a
    /// vacuum due under a light load. DuckDB vacuums only the tables a checkpoint writes, so
    /// that one waits for something in the WAL (under a light load the churn that deleted
    /// the rows usually goes on, more slowly).
    pub(super) fn due(
        &mut self,
        wal_bytes: u64,
        threshold: u64,
        live: u64,
        now: Instant,
    ) -> Option<Checkpoint> {
        if self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        let vacuum = self.owed(live)
            && (self.load.light(now) || now >= self.vacuumed_at + VACUUM_ANYWAY_AFTER);
        if wal_bytes >= threshold {
            return Some(if vacuum {
                Checkpoint::Vacuuming
            } else {
                Checkpoint::Plain
            });
        }
        (vacuum && wal_bytes > 0 && self.load.light(now)).then_some(Checkpoint::Vacuuming)
    }

    /// Whether the deleted rows, against `live` ones, make a vacuum worth its cost.
    fn owed(&self, live: u64) -> bool {
        self.dead > 0 && self.dead as f64 >= live as f64 * VACUUM_WHEN_DEAD
    }

    /// The checkpoint of a stopping writer: a vacuum if one is owed, whatever the load, since
    /// no event waits for it any more; otherwise a plain one, which leaves the rest for the
    /// next run (it counts them from the file).
    pub(super) fn at_stop(&self, live: u64) -> Checkpoint {
        if self.owed(live) {
            Checkpoint::Vacuuming
        } else {
            Checkpoint::Plain
        }
    }

    /// Records that `done` succeeded at `now`.
    pub(super) fn succeeded(&mut self, done: Checkpoint, now: Instant) {
        self.retry_at = None;
        if done == Checkpoint::Vacuuming {
            self.dead = 0;
            self.vacuumed_at = now;
        }
    }

    /// Records that a checkpoint failed at `now`: the next waits.
    pub(super) fn failed(&mut self, now: Instant) {
        self.retry_at = Some(now + RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_is_light_only_while_both_windows_stay_under_the_limit() {
        let t0 = Instant::now();
        let mut load = Load::new(t0);
        assert!(load.light(t0), "no ops yet");
        // 5,000 ops in the first half second: heavy at once, not averaged over the window.
        load.record(5_000, t0 + Duration::from_millis(500));
        assert!(!load.light(t0 + Duration::from_millis(600)));
        // The next window is quiet, but the last whole one was heavy.
        load.record(10, t0 + LOAD_WINDOW);
        assert!(!load.light(t0 + LOAD_WINDOW + Duration::from_secs(5)));
        // Two quiet windows: light.
        assert!(load.light(t0 + 2 * LOAD_WINDOW + Duration::from_secs(1)));
        // After a long idle spell, the long window's rate is low.
        load.record(50_000, t0 + 3 * LOAD_WINDOW);
        assert!(!load.light(t0 + 3 * LOAD_WINDOW + Duration::from_secs(1)));
        assert!(load.light(t0 + 100 * LOAD_WINDOW));
    }

    #[test]
    fn a_vacuum_waits_until_half_the_live_rows_were_deleted_and_the_load_is_light() {
        let t0 = Instant::now();
        let mut c = Checkpoints::new(t0, 0);
        let threshold = 1_000;
        let live = 1_000;
        assert_eq!(c.due(999, threshold, live, t0), None, "under the threshold");
        assert_eq!(
            c.due(1_000, threshold, live, t0),
            Some(Checkpoint::Plain),
            "a sync's appends alone are no reason to vacuum"
        );
        c.succeeded(Checkpoint::Plain, t0);
        c.deleted(499);
        assert_eq!(c.due(10, threshold, live, t0), None);
        assert_eq!(c.due(1_000, threshold, live, t0), Some(Checkpoint::Plain));
        c.deleted(1);
        // Half the live rows deleted, and a light load: the vacuum is paid at once, with
        // whatever the WAL holds, but not for an empty WAL.
        assert_eq!(c.due(0, threshold, live, t0), None);
        assert_eq!(c.due(10, threshold, live, t0), Some(Checkpoint::Vacuuming));
        // Under load it waits: checkpoints stay plain.
        c.load.record(100_000, t0);
        let busy = t0 + Duration::from_secs(1);
        assert_eq!(c.due(10, threshold, live, busy), None);
        assert_eq!(c.due(1_000, threshold, live, busy), Some(Checkpoint::Plain));
        c.succeeded(Checkpoint::Plain, t0);
        assert_eq!(c.dead, 500, "a plain checkpoint paid the vacuum");
        // Quiet long enough that the window holding the burst averages under the limit.
        let quiet = t0 + 1_000 * LOAD_WINDOW;
        assert_eq!(
            c.due(10, threshold, live, quiet),
            Some(Checkpoint::Vacuuming)
        );
        c.succeeded(Checkpoint::Vacuuming, quiet);
        assert_eq!(c.dead, 0);
        assert_eq!(c.due(10, threshold, live, quiet), None, "nothing owed");
        // A failure waits out the retry, then tries again.
        c.failed(quiet);
        assert_eq!(c.due(1_000, threshold, live, quiet + RETRY / 2), None);
        assert_eq!(
            c.due(1_000, threshold, live, quiet + RETRY),
            Some(Checkpoint::Plain)
        );
    }

    #[test]
    fn a_writer_never_lightly_loaded_vacuums_at_a_checkpoint_once_a_due_vacuum_waited_long() {
        let t0 = Instant::now();
        let mut c = Checkpoints::new(t0, 0);
        let (threshold, live) = (1_000, 1_000);
        c.deleted(10_000);
        // Always busy: the writer applies 1,000 ops a second.
        let busy_at = |c: &mut Checkpoints, t: Instant| {
            c.load.record(1_000, t);
            t
        };
        let t = busy_at(&mut c, t0 + VACUUM_ANYWAY_AFTER - Duration::from_secs(1));
        assert_eq!(c.due(1_000, threshold, live, t), Some(Checkpoint::Plain));
        let t = busy_at(&mut c, t0 + VACUUM_ANYWAY_AFTER);
        assert_eq!(
            c.due(10, threshold, live, t),
            None,
            "it waits for the checkpoint the WAL calls for"
        );
        assert_eq!(
            c.due(1_000, threshold, live, t),
            Some(Checkpoint::Vacuuming)
        );
        c.succeeded(Checkpoint::Vacuuming, t);
        // The next one waits as long again.
        c.deleted(10_000);
        let t = busy_at(&mut c, t + VACUUM_ANYWAY_AFTER / 2);
        assert_eq!(c.due(1_000, threshold, live, t), Some(Checkpoint::Plain));
    }

    #[test]
    fn a_stop_vacuums_only_when_one_is_owed_whatever_the_load() {
        let t0 = Instant::now();
        let mut c = Checkpoints::new(t0, 0);
        assert_eq!(c.at_stop(1_000), Checkpoint::Plain, "nothing deleted");
        c.deleted(499);
        assert_eq!(c.at_stop(1_000), Checkpoint::Plain, "not yet half");
        // A busy writer's stop pays an owed vacuum: nothing waits for it any more.
        c.load.record(1_000_000, t0);
        c.deleted(1);
        assert_eq!(c.at_stop(1_000), Checkpoint::Vacuuming);
        // Rows the file held deleted at start count as the writer's own.
        assert_eq!(
            Checkpoints::new(t0, 500).at_stop(1_000),
            Checkpoint::Vacuuming
        );
        assert_eq!(Checkpoints::new(t0, 499).at_stop(1_000), Checkpoint::Plain);
    }
}
