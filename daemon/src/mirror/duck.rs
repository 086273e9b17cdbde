//! The mirror's reads of DuckDB, on a read connection of its own: the outbox, the rows it
//! names, whole tables, new changes, and (key, version) digests of a table part.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;
use duckdb::Connection;

use super::tables::{Mirrored, Shape};
use super::{Key, MirrorError};
use crate::store::outbox::{Owed, Read};

/// A read connection, used from blocking threads.
#[derive(Clone)]
pub struct Duck {
    conn: Arc<Mutex<Connection>>,
}

/// A 64-bit FNV-1a hash: the same on both sides of a comparison, whatever the process.
pub fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.as_bytes().iter().chain([&0xffu8]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Per owed key, a digest of its rows' versions: equal on both sides when PostgreSQL has
/// what DuckDB has.
pub type Versions = HashMap<Key, u64>;

/// The SQL that lists a part's (context, unit key, version parts) on either side; `from`
/// names the table and `filter` restricts it.
pub fn versions_sql(m: &Mirrored, from: &str, filter: &str) -> String {
    let Shape::Keyed { unit, versioned } = m.shape else {
        unreachable!("only keyed tables are compared by key")
    };
    let extra: Vec<&str> = m
        .key
        .iter()
        .copied()
        .filter(|k| *k != "context" && *k != unit)
        .collect();
    let mut cols = vec!["context".to_string(), format!("\"{unit}\"")];
    cols.extend(extra.iter().map(|k| format!("\"{k}\"")));
    if versioned {
        cols.push("resource_version".into());
    }
    format!(
        "SELECT {} FROM {from} WHERE \"{unit}\" IS NOT NULL {filter}",
        cols.join(", ")
    )
}

/// Adds one row's (context, unit, rest…) to a digest map: the rows of one key combine by
/// wrapping addition, so their order does not matter.
pub fn add_version(v: &mut Versions, row: &[Option<&str>]) {
    let ctx = row[0].unwrap_or_default();
    let unit = row[1].unwrap_or_default();
    let parts: Vec<&str> = row[2..].iter().map(|p| p.unwrap_or("\u{1}")).collect();
    let h = fnv(&parts);
    let e = v.entry((ctx.to_string(), unit.to_string())).or_insert(0);
    *e = e.wrapping_add(h).wrapping_add(1);
}

impl Duck {
    pub fn new(conn: Connection) -> Result<Duck, MirrorError> {
        conn.execute_batch("CREATE TEMP TABLE kq_mirror_keys (context VARCHAR, key VARCHAR);")
            .map_err(MirrorError::duck)?;
        Ok(Duck {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection in a blocking thread, inside one read transaction so
    /// that everything it reads is one snapshot.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, duckdb::Error> + Send + 'static,
    ) -> Result<T, MirrorError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            conn.execute_batch("BEGIN TRANSACTION")?;
            let r = f(&conn);
            let _ = conn.execute_batch("COMMIT");
            r
        })
        .await
        .map_err(|e| MirrorError::Internal(e.to_string()))?
        .map_err(MirrorError::duck)
    }

    /// The oldest owed entries, at most `limit`.
    pub async fn outbox(&self, limit: usize) -> Result<Vec<Read>, MirrorError> {
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT tbl, context, key, seq, epoch_us(dirty_at) FROM main.kq_mirror_outbox
                 ORDER BY seq LIMIT ?",
            )?;
            let rows = stmt.query_map([limit as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (t, c, k, seq, at) = row?;
                // The writer drops entries of tables this kqd does not know when it opens
                // the file; none is read here.
                let Some(owed) = Owed::parse(&t, &c, &k) else {
                    continue;
                };
                out.push(Read {
                    owed,
                    seq,
                    dirty_at: at.unwrap_or(0),
                });
            }
            Ok(out)
        })
        .await
    }

    /// How many entries are owed, and since when (Unix microseconds) the oldest.
    pub async fn outbox_depth(&self) -> Result<(i64, Option<i64>), MirrorError> {
        self.read(|c| {
            c.query_row(
                "SELECT count(*), epoch_us(min(dirty_at)) FROM main.kq_mirror_outbox",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .await
    }

    /// The rows of `m` whose unit column holds one of `keys`, in staged column order.
    pub async fn rows(
        &self,
        m: &'static Mirrored,
        keys: Vec<Key>,
    ) -> Result<Vec<RecordBatch>, MirrorError> {
        let Shape::Keyed { unit, .. } = m.shape else {
            unreachable!("rows by key are read from keyed tables")
        };
        self.read(move |c| {
            c.execute_batch("DELETE FROM temp.kq_mirror_keys")?;
            {
                let mut app = c.appender_to_catalog_and_db("kq_mirror_keys", "temp", "main")?;
                for (ctx, key) in &keys {
                    app.append_row([ctx, key])?;
                }
                app.flush()?;
            }
            let sql = format!(
                "SELECT {} FROM main.{} t SEMI JOIN temp.kq_mirror_keys k
                   ON t.context = k.context AND t.\"{unit}\" = k.key",
                select_list(m, "t."),
                m.name()
            );
            let batches = c.prepare(&sql)?.query_arrow([])?.collect();
            Ok(batches)
        })
        .await
    }

    /// A whole table, in staged column order.
    pub async fn whole(&self, m: &'static Mirrored) -> Result<Vec<RecordBatch>, MirrorError> {
        self.read(move |c| {
            let sql = format!("SELECT {} FROM main.{}", select_list(m, ""), m.name());
            Ok(c.prepare(&sql)?.query_arrow([])?.collect())
        })
        .await
    }

    /// Changes numbered after `seq`, oldest first, at most `limit`; with the highest number
    /// and the lowest DuckDB still keeps.
    pub async fn changes_after(
        &self,
        m: &'static Mirrored,
        seq: i64,
        limit: usize,
    ) -> Result<(Vec<RecordBatch>, Option<i64>, Option<i64>), MirrorError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {} FROM main.changes WHERE seq > ? ORDER BY seq LIMIT ?",
                select_list(m, "")
            );
            let batches: Vec<RecordBatch> =
                c.prepare(&sql)?.query_arrow([seq, limit as i64])?.collect();
            let (min, max) =
                c.query_row("SELECT min(seq), max(seq) FROM main.changes", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            Ok((batches, min, max))
        })
        .await
    }

    /// The contexts a table has rows of.
    pub async fn contexts(&self, m: &'static Mirrored) -> Result<Vec<String>, MirrorError> {
        self.read(move |c| {
            let sql = format!("SELECT DISTINCT context FROM main.{}", m.name());
            c.prepare(&sql)?.query_map([], |r| r.get(0))?.collect()
        })
        .await
    }

    /// Each context's cluster_id.
    pub async fn cluster_ids(&self) -> Result<HashMap<String, Option<String>>, MirrorError> {
        self.read(|c| {
            c.prepare("SELECT name, cluster_id FROM main.contexts")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .await
    }

    /// The (key, version) digests of a part.
    pub async fn versions(
        &self,
        m: &'static Mirrored,
        context: String,
    ) -> Result<Versions, MirrorError> {
        self.read(move |c| {
            let sql = versions_sql(m, &format!("main.{}", m.name()), "AND context = ?");
            let mut stmt = c.prepare(&sql)?;
            let n = stmt.column_count();
            let mut rows = stmt.query([&context])?;
            let mut v = Versions::new();
            while let Some(r) = rows.next()? {
                let vals: Vec<Option<String>> =
                    (0..n).map(|i| r.get(i)).collect::<Result<_, _>>()?;
                let refs: Vec<Option<&str>> = vals.iter().map(|s| s.as_deref()).collect();
                add_version(&mut v, &refs);
            }
            Ok(v)
        })
        .await
    }
}

/// The catalog columns of `m` as a select list (the added `cluster_id` comes from the
/// mirror, not from DuckDB).
fn select_list(m: &Mirrored, prefix: &str) -> String {
    m.table
        .columns
        .iter()
        .map(|c| format!("{prefix}\"{}\"", c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What [`Duck::stream`] sends: a batch of rows, or why reading stopped.
pub type Streamed = Result<RecordBatch, MirrorError>;

/// Unit keys by context: what a stream keeps.
pub type Wanted = std::collections::HashMap<String, std::collections::HashSet<String>>;

impl Duck {
    /// Streams the rows of `m` (in `context` only, when given), in storage order (rows of
    /// one object, stored together, come together), keeping those whose (context, unit
    /// key) is in `keep` (every row when `None`). One scan of the table serves every
    /// context. DuckDB does not materialise the result, and the channel holds two batches,
    /// so memory stays flat however large the table.
    pub fn stream(
        &self,
        m: &'static Mirrored,
        context: Option<String>,
        keep: Option<Arc<Wanted>>,
    ) -> tokio::sync::mpsc::Receiver<Streamed> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A connection of its own: the mirror reads other things (the outbox, cluster
            // ids) on the shared one while this stream is open.
            let own = conn.lock().unwrap_or_else(|e| e.into_inner()).try_clone();
            let conn = match own {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.blocking_send(Err(MirrorError::duck(e)));
                    return;
                }
            };
            let run = || -> Result<(), duckdb::Error> {
                let (_, at) = m.unit().expect("keyed tables are streamed");
                let ctx_at = m.position("context").expect("keyed tables have contexts");
                let filter = if context.is_some() {
                    " WHERE context = ?"
                } else {
                    ""
                };
                let sql = format!(
                    "SELECT {} FROM main.{}{filter}",
                    select_list(m, ""),
                    m.name()
                );
                let mut stmt = conn.prepare(&sql)?;
                let params: Vec<&String> = context.iter().collect();
                for batch in stmt.stream_arrow(duckdb::params_from_iter(params))? {
                    let batch = batch?;
                    let batch = match &keep {
                        None => batch,
                        Some(keep) => {
                            let text = |i: usize| {
                                batch
                                    .column(i)
                                    .as_any()
                                    .downcast_ref::<arrow::array::StringArray>()
                                    .cloned()
                            };
                            let (Some(keys), Some(ctxs)) = (text(at), text(ctx_at)) else {
                                continue;
                            };
                            let mask: arrow::array::BooleanArray = keys
                                .iter()
                                .zip(ctxs.iter())
                                .map(|(k, c)| {
                                    Some(match (k, c) {
                                        (Some(k), Some(c)) => {
                                            keep.get(c).is_some_and(|s| s.contains(k))
                                        }
                                        _ => false,
                                    })
                                })
                                .collect();
                            match arrow::compute::filter_record_batch(&batch, &mask) {
                                Ok(b) => b,
                                Err(e) => {
                                    let _ =
                                        tx.blocking_send(Err(MirrorError::Internal(e.to_string())));
                                    return Ok(());
                                }
                            }
                        }
                    };
                    if batch.num_rows() > 0 && tx.blocking_send(Ok(batch)).is_err() {
                        return Ok(());
                    }
                }
                Ok(())
            };
            let _ = conn.execute_batch("BEGIN TRANSACTION");
            if let Err(e) = run() {
                let _ = tx.blocking_send(Err(MirrorError::duck(e)));
            }
            let _ = conn.execute_batch("COMMIT");
        });
        rx
    }
}
