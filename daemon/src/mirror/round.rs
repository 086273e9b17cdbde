//! A round of the mirror: what the outbox owes next, read from DuckDB into the writes of
//! one PostgreSQL transaction. Reading a round needs none of the mirror's mutable state,
//! only where the round before it ends, so the next round is read while one commits.

use std::collections::{BTreeMap, HashMap};

use super::duck::{self, Duck};
use super::pg::{Mode, TableWrite};
use super::tables::{self, Mirrored, Shape};
use super::{BY_KEY, CHANGES_BATCH, Key, MirrorError, OUTBOX_BATCH};
use crate::store::outbox::{Owed, Read};

/// Where a read of the outbox starts: what this session has sent, counting a round that
/// is still committing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Every entry numbered up to this was sent.
    pub sent_seq: i64,
    /// The highest change number PostgreSQL has.
    pub changes_seq: i64,
    /// PostgreSQL has no change numbered below this.
    pub changes_floor: i64,
}

/// New `changes` read from DuckDB for PostgreSQL. They go in the transaction of the
/// round's owed rows: a transaction of their own was one PostgreSQL commit more a round.
pub struct NewChanges {
    pub batches: Vec<arrow::record_batch::RecordBatch>,
    /// Changes numbered below this go (retention pruned them in DuckDB).
    pub prune: Option<i64>,
    /// The lowest number DuckDB keeps.
    pub floor: i64,
    /// The highest number sent.
    pub last: i64,
}

impl NewChanges {
    /// What of the changes read (those numbered after what PostgreSQL has) is to be sent,
    /// with the retention prune they carry: those numbered below the lowest DuckDB keeps
    /// (or all PostgreSQL has, when it keeps none). `None` when there is neither.
    pub fn from_read(read: duck::ChangesAfter, at: Cursor) -> Option<NewChanges> {
        let duck::ChangesAfter { batches, min, .. } = read;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let floor = min.unwrap_or(at.changes_seq + 1);
        let prune = (floor > at.changes_floor).then_some(floor);
        if rows == 0 && prune.is_none() {
            return None;
        }
        Some(NewChanges {
            last: last_seq(&batches).unwrap_or(at.changes_seq),
            batches,
            prune,
            floor,
        })
    }

    pub fn write(&self) -> TableWrite {
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

/// What the outbox owes next.
pub enum Next {
    /// Nothing: the outbox owes nothing after the cursor, and there are no new changes.
    Idle,
    /// A round read whole, ready for one transaction.
    Round(Round),
    /// Entries that take transactions of their own (a keyed part to compare, or more than
    /// [`BY_KEY`] objects of one table to stream), sent one step at a time.
    Serial {
        owed: Vec<Read>,
        changes: Option<NewChanges>,
    },
}

/// The rows of a few owed objects per table, the small tables owed whole and the new
/// changes, as one snapshot of DuckDB had them.
pub struct Round {
    /// The entries it settles, acknowledged once PostgreSQL committed it.
    pub reads: Vec<Read>,
    pub writes: Vec<TableWrite>,
    pub cluster_ids: HashMap<String, Option<String>>,
    pub changes: Option<NewChanges>,
}

impl Round {
    /// Where the read after this round starts.
    pub fn cursor_after(&self, at: Cursor) -> Cursor {
        Cursor {
            sent_seq: self.reads.iter().map(|r| r.seq).fold(at.sent_seq, i64::max),
            changes_seq: self.changes.as_ref().map_or(at.changes_seq, |c| c.last),
            changes_floor: self.changes.as_ref().map_or(at.changes_floor, |c| c.floor),
        }
    }
}

/// Reads rounds. It holds copies of what it needs, so it reads while the mirror commits.
#[derive(Clone)]
pub struct Reader {
    pub duck: Duck,
    /// `objects` rows are mirrored.
    pub objects: bool,
    /// This session compared every table, so an entry's `children` flag holds.
    pub compared: bool,
}

/// Owed keys by table.
pub type Plan = BTreeMap<&'static str, (&'static Mirrored, Vec<Key>)>;

impl Reader {
    /// What the outbox owes after `at`, and the new changes, read in one snapshot; then,
    /// for a round that fits one transaction, its rows.
    pub async fn next(&self, at: Cursor) -> Result<Next, MirrorError> {
        let changes_table = tables::get("changes").expect("changes are mirrored");
        let (owed, changes) = self
            .duck
            .round(
                OUTBOX_BATCH,
                at.sent_seq,
                changes_table,
                at.changes_seq,
                CHANGES_BATCH,
            )
            .await?;
        let changes = NewChanges::from_read(changes, at);
        if owed.is_empty() && changes.is_none() {
            return Ok(Next::Idle);
        }
        let mut whole: Vec<&'static Mirrored> = Vec::new();
        for r in &owed {
            if let Owed::Part { table, .. } = &r.owed {
                match tables::get(table) {
                    Some(m) if m.shape == Shape::Whole => {
                        if !whole.iter().any(|w| w.name() == m.name()) {
                            whole.push(m);
                        }
                    }
                    _ => {
                        tracing::trace!(table = %table, "a part owed: sent step by step");
                        return Ok(Next::Serial { owed, changes });
                    }
                }
            }
        }
        let rows: Vec<&Read> = owed
            .iter()
            .filter(|r| matches!(r.owed, Owed::Row { .. }))
            .collect();
        let plan = self.plan(&rows);
        if plan.values().any(|(_, keys)| keys.len() > BY_KEY) {
            return Ok(Next::Serial { owed, changes });
        }
        let few = plan.into_values().collect();
        let (writes, cluster_ids) = self.read(few, &whole, changes.as_ref()).await?;
        Ok(Next::Round(Round {
            reads: owed,
            writes,
            cluster_ids,
            changes,
        }))
    }

    /// The tables the rows of owed objects and incidents reach, each with its keys.
    pub fn plan(&self, rows: &[&Read]) -> Plan {
        let mut by_table = Plan::new();
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
            let children = r.children || !self.compared;
            for t in m
                .targets(self.objects)
                .into_iter()
                .filter(|t| children || !t.is_child())
            {
                by_table
                    .entry(t.name())
                    .or_insert_with(|| (t, Vec::new()))
                    .1
                    .push((context.to_string(), key.clone()));
            }
        }
        by_table
    }

    /// The writes of one transaction: the rows of `few` (keys by table), the tables in
    /// `whole`, and `changes`; with the contexts' cluster ids as the same moment had them.
    pub async fn read(
        &self,
        few: Vec<(&'static Mirrored, Vec<Key>)>,
        whole: &[&'static Mirrored],
        changes: Option<&NewChanges>,
    ) -> Result<(Vec<TableWrite>, HashMap<String, Option<String>>), MirrorError> {
        // The tables are read at once, each on a connection of its own: one after another,
        // under load, they took 165–300 ms a round, longer than the PostgreSQL transaction
        // that follows them.
        let duck = &self.duck;
        let reads = few.iter().map(|(m, keys)| duck.rows(m, keys.clone()));
        let whole_reads = whole.iter().map(|m| duck.whole(m));
        let (read, whole_read, cluster_ids) = futures::future::try_join3(
            futures::future::try_join_all(reads),
            futures::future::try_join_all(whole_reads),
            duck.cluster_ids(),
        )
        .await?;
        let writes = few
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
        Ok((writes, cluster_ids))
    }
}
