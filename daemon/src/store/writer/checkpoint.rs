//! When the writer checkpoints, and whether a checkpoint may vacuum.
//!
//! DuckDB's checkpoint vacuums by default: it rewrites adjacent row groups whose deleted rows
//! let their live rows fit in fewer. Every modify deletes an object's old rows, so under
//! churn every row group of `objects` qualifies, and merging them reads back and compresses
//! again each live row's zstd JSON. At 10 × 10k that made a churn checkpoint take 9–11 s
//! instead of the 1.4–2.1 s the same WAL takes without it, and the writer, which runs the
//! checkpoint, applied nothing meanwhile. So the writer checkpoints without vacuuming while
//! it is busy, and lets the vacuum run once the load is light: the deleted rows' space
//! comes back then, at a moment when a stall of seconds delays few events. A checkpoint
//! that does not vacuum also leaves the rows appended since the last one as a row group of
//! their own, so after an initial sync (a checkpoint per 16 MB of WAL) the first vacuum
//! merges them too, rewriting most of `objects`: 4.8–19.4 s at 10 × 10k, the more the longer
//! the writer went without one (a sync and a minute of 1,000 events/s: 19.4 s). Any quiet
//! spell of two load windows sets it off, so events that come just after wait that long.

use std::time::{Duration, Instant};

/// Ops a second under which the writer counts as lightly loaded, measured over the last
/// whole [`LOAD_WINDOW`] and the current one. A real fleet's background churn (leases,
/// events, pod status) is well under it; a rollout or the load benchmark is well over.
const LIGHT_LOAD: f64 = 100.0;

/// How long one measurement of the load lasts.
const LOAD_WINDOW: Duration = Duration::from_secs(10);

/// How many vacuum tasks a vacuuming checkpoint may schedule: DuckDB's default.
const VACUUM_TASKS: u32 = 100;

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
    /// A checkpoint skipped its vacuum since the last one that vacuumed.
    pub(super) vacuum_owed: bool,
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

impl Checkpoints {
    pub(super) fn new(now: Instant) -> Checkpoints {
        Checkpoints {
            load: Load::new(now),
            vacuum_owed: false,
            retry_at: None,
        }
    }

    /// The checkpoint to run now, if any: one past `threshold` bytes of WAL, vacuuming only
    /// under a light load; or, once the load is light again, one that pays a vacuum that was
    /// skipped. DuckDB vacuums only the tables a checkpoint writes, so that one waits for
    /// something in the WAL (under a light load the churn that thinned the row groups
    /// usually goes on, more slowly).
    pub(super) fn due(
        &mut self,
        wal_bytes: u64,
        threshold: u64,
        now: Instant,
    ) -> Option<Checkpoint> {
        if self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        let light = self.load.light(now);
        if wal_bytes >= threshold {
            return Some(if light {
                Checkpoint::Vacuuming
            } else {
                Checkpoint::Plain
            });
        }
        (light && self.vacuum_owed && wal_bytes > 0).then_some(Checkpoint::Vacuuming)
    }

    /// Records that `done` succeeded.
    pub(super) fn succeeded(&mut self, done: Checkpoint) {
        self.retry_at = None;
        self.vacuum_owed = done == Checkpoint::Plain;
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
    fn a_busy_writer_defers_the_vacuum_until_the_load_is_light() {
        let t0 = Instant::now();
        let mut c = Checkpoints::new(t0);
        let threshold = 1_000;
        assert_eq!(c.due(999, threshold, t0), None, "under the threshold");
        c.load.record(100_000, t0);
        let busy = t0 + Duration::from_secs(1);
        assert_eq!(c.due(1_000, threshold, busy), Some(Checkpoint::Plain));
        c.succeeded(Checkpoint::Plain);
        assert!(c.vacuum_owed);
        // Still busy: nothing more until the WAL grows past the threshold again.
        assert_eq!(c.due(10, threshold, busy), None);
        // Quiet long enough that the window holding the burst averages under the limit: the
        // skipped vacuum is paid, with whatever the WAL holds.
        let quiet = t0 + 1_000 * LOAD_WINDOW;
        assert_eq!(
            c.due(0, threshold, quiet),
            None,
            "an empty WAL vacuums nothing"
        );
        assert_eq!(c.due(10, threshold, quiet), Some(Checkpoint::Vacuuming));
        c.succeeded(Checkpoint::Vacuuming);
        assert!(!c.vacuum_owed);
        assert_eq!(c.due(10, threshold, quiet), None, "nothing owed");
        assert_eq!(
            c.due(1_000, threshold, quiet),
            Some(Checkpoint::Vacuuming),
            "a light load vacuums at the threshold"
        );
        // A failure waits out the retry, then tries again.
        c.failed(quiet);
        assert_eq!(c.due(1_000, threshold, quiet + RETRY / 2), None);
        assert_eq!(
            c.due(1_000, threshold, quiet + RETRY),
            Some(Checkpoint::Vacuuming)
        );
    }
}
