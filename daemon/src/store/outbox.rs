//! What the PostgreSQL mirror still owes: the outbox's entries, as the writer records them
//! and the mirror reads and acknowledges them.
//!
//! The outbox holds state, not events: one entry per object, incident or table part that
//! changed since PostgreSQL last had it, however often it changed, so an outage costs at
//! most one entry per object. The writer records an entry in the same DuckDB transaction
//! as the change; the mirror reads the entry's rows from DuckDB as they are then, and
//! acknowledges the entry only after PostgreSQL committed them.

use std::sync::Arc;

/// `key` (and `context`) of a part entry: every row of the table in the context, or in
/// every context. No uid or incident id is `*`.
pub const ALL: &str = "*";

/// One entry: `table` is a catalog table name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owed {
    /// An object's rows (its table's, its children's, its `objects` row), or an incident's
    /// row (`table` is `incidents`, `key` its id).
    Row {
        table: &'static str,
        context: Arc<str>,
        key: String,
    },
    /// Every row of a table in a context (`None`: in every context, and the whole of a
    /// table without contexts, such as `images`). The mirror compares the part with
    /// PostgreSQL and sends what differs, which is how bulk decisions (a sweep, a removed
    /// context, retention) reach it.
    Part {
        table: &'static str,
        context: Option<Arc<str>>,
    },
}

impl Owed {
    /// The entry as stored: (table, context, key).
    pub fn columns(&self) -> (&'static str, &str, &str) {
        match self {
            Owed::Row {
                table,
                context,
                key,
            } => (table, context, key),
            Owed::Part { table, context } => (table, context.as_deref().unwrap_or(ALL), ALL),
        }
    }

    /// The entry's 128-bit key hash (column `h`). The writer finds an entry's earlier row,
    /// and the rows an acknowledgement clears, by this one number: joining on the three
    /// text columns read all of them for every row of the outbox, which holds an entry per
    /// object while PostgreSQL catches up, in every batch.
    pub fn hash(&self) -> i128 {
        let (table, context, key) = self.columns();
        key_hash(table, context, key)
    }

    /// Reads a stored entry back; `None` for a table this kqd does not know (an entry left
    /// by another version), which the mirror drops.
    pub fn parse(table: &str, context: &str, key: &str) -> Option<Owed> {
        let table = kq_schema::table(table)?.name;
        Some(match (context, key) {
            (ALL, ALL) => Owed::Part {
                table,
                context: None,
            },
            (c, ALL) => Owed::Part {
                table,
                context: Some(Arc::from(c)),
            },
            (c, k) => Owed::Row {
                table,
                context: Arc::from(c),
                key: k.to_string(),
            },
        })
    }
}

/// The hash of an entry as stored: (table, context, key), as [`Owed::columns`] gives them.
pub fn key_hash(table: &str, context: &str, key: &str) -> i128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    // The separator cannot occur in a table name, a context name or a key.
    for part in [table, context, key] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    h.digest128() as i128
}

/// An entry the mirror read, with the sequence number it had then: acknowledging it removes
/// it only if it did not change again since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub owed: Owed,
    pub seq: i64,
    /// When the entry was recorded (Unix microseconds), for the mirror's lag.
    pub dirty_at: i64,
    /// The object's child rows changed too, since PostgreSQL last had them: without it,
    /// the mirror neither reads nor sends them.
    pub children: bool,
}

/// Where the mirror stands, for the `mirror` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MirrorState {
    #[default]
    Connecting,
    /// Comparing every table with PostgreSQL and sending what differs.
    Verifying,
    Streaming,
    Error,
    /// Refused for good until something changes: another kqd mirrors as this instance, or
    /// the database's mirror schema is newer than this kqd.
    Refused,
}

impl std::fmt::Display for MirrorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MirrorState::Connecting => "connecting",
            MirrorState::Verifying => "verifying",
            MirrorState::Streaming => "streaming",
            MirrorState::Error => "error",
            MirrorState::Refused => "refused",
        })
    }
}

/// The `mirror` row. Times are Unix microseconds.
#[derive(Debug, Clone, Default)]
pub struct MirrorStatus {
    pub state: MirrorState,
    pub target: String,
    pub schema: String,
    pub instance: String,
    pub connected: bool,
    pub lag_seconds: f64,
    pub outbox: i64,
    pub rows_mirrored: i64,
    pub rows_per_s: f64,
    pub last_commit_at: Option<i64>,
    pub verified_at: Option<i64>,
    pub mismatched: i64,
    pub nul_replaced: i64,
    pub set_aside: i64,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
}
