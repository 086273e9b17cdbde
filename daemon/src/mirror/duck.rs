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

    /// What a round sends, read in one snapshot: the oldest owed entries numbered after
    /// `after` (at most `limit`), and the changes numbered after `seq` (at most
    /// `changes_limit`, as [`Duck::changes_after`] reads them). One snapshot, so that the
    /// changes a batch recorded travel with the entries it owed, in one PostgreSQL
    /// transaction: PostgreSQL never shows a change without the row it led to.
    pub async fn round(
        &self,
        limit: usize,
        after: i64,
        changes: &'static Mirrored,
        seq: i64,
        changes_limit: usize,
    ) -> Result<(Vec<Read>, ChangesAfter), MirrorError> {
        self.read(move |c| {
            Ok((
                outbox(c, limit, after)?,
                changes_after(c, changes, seq, changes_limit)?,
            ))
        })
        .await
    }

    /// The (context, key) of every object or incident the outbox owes whose rows reach
    /// `m` (its own entries, and its parents' for a child or `objects`). For a table with
    /// children, only entries that owe the children too: the others are sent without
    /// them, so a comparison must not leave them to the outbox (PostgreSQL may lack the
    /// children altogether, as a new database does).
    pub async fn owed_keys(
        &self,
        m: &'static Mirrored,
        objects: bool,
    ) -> Result<std::collections::HashSet<Key>, MirrorError> {
        let tables: Vec<String> = super::tables::all()
            .iter()
            .filter(|t| t.targets(objects).iter().any(|x| x.name() == m.name()))
            .map(|t| format!("'{}'", t.name()))
            .collect();
        let has_children = m.targets(objects).iter().any(|t| t.is_child());
        self.read(move |c| {
            let sql = format!(
                "SELECT context, key FROM main.kq_mirror_outbox
                  WHERE key <> '{all}' AND tbl IN ({}){}",
                tables.join(", "),
                if has_children {
                    " AND coalesce(children, true)"
                } else {
                    ""
                },
                all = crate::store::outbox::ALL
            );
            c.prepare(&sql)?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
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

    /// The rows of `m` whose (context, unit) is one of `keys`, in staged column order:
    /// [`Duck::stream`], collected.
    pub async fn rows(
        &self,
        m: &'static Mirrored,
        keys: Vec<Key>,
    ) -> Result<Vec<RecordBatch>, MirrorError> {
        let mut wanted = Wanted::new();
        for (c, k) in keys {
            wanted.entry(c).or_default().insert(k);
        }
        let mut rx = self.stream(m, None, Some(Arc::new(wanted)));
        let mut batches = Vec::new();
        while let Some(b) = rx.recv().await {
            batches.push(b?);
        }
        Ok(batches)
    }

    /// A whole table, in staged column order.
    pub async fn whole(&self, m: &'static Mirrored) -> Result<Vec<RecordBatch>, MirrorError> {
        self.read(move |c| {
            let sql = format!("SELECT {} FROM main.{}", select_list(m, ""), m.name());
            Ok(c.prepare(&sql)?.query_arrow([])?.collect())
        })
        .await
    }

    /// Changes numbered after `seq`, oldest first, at most `limit`; with the lowest number
    /// DuckDB still keeps and the highest.
    pub async fn changes_after(
        &self,
        m: &'static Mirrored,
        seq: i64,
        limit: usize,
    ) -> Result<ChangesAfter, MirrorError> {
        self.read(move |c| changes_after(c, m, seq, limit)).await
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

/// The oldest owed entries numbered after `after`, at most `limit`.
fn outbox(c: &Connection, limit: usize, after: i64) -> Result<Vec<Read>, duckdb::Error> {
    let mut stmt = c.prepare(
        "SELECT tbl, context, key, seq, epoch_us(dirty_at), coalesce(children, true)
           FROM main.kq_mirror_outbox
          WHERE seq > ? ORDER BY seq LIMIT ?",
    )?;
    let rows = stmt.query_map([after, limit as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, bool>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (t, c, k, seq, at, children) = row?;
        // The writer drops entries of tables this kqd does not know when it opens
        // the file; none is read here.
        let Some(owed) = Owed::parse(&t, &c, &k) else {
            continue;
        };
        out.push(Read {
            owed,
            seq,
            dirty_at: at.unwrap_or(0),
            children,
        });
    }
    Ok(out)
}

/// Changes read for PostgreSQL, with the lowest and highest numbers DuckDB keeps.
pub struct ChangesAfter {
    pub batches: Vec<RecordBatch>,
    /// The lowest number DuckDB keeps (`None`: it keeps no change).
    pub min: Option<i64>,
    /// The highest number DuckDB keeps.
    pub max: Option<i64>,
}

/// Changes numbered after `seq`, oldest first, at most `limit`.
fn changes_after(
    c: &Connection,
    m: &'static Mirrored,
    seq: i64,
    limit: usize,
) -> Result<ChangesAfter, duckdb::Error> {
    let sql = format!(
        "SELECT {} FROM main.changes WHERE seq > ? ORDER BY seq LIMIT ?",
        select_list(m, "")
    );
    let batches: Vec<RecordBatch> = c.prepare(&sql)?.query_arrow([seq, limit as i64])?.collect();
    let (min, max) = c.query_row(
        "SELECT min(seq) AS lowest, max(seq) AS highest FROM main.changes",
        [],
        |r| Ok((r.get("lowest")?, r.get("highest")?)),
    )?;
    Ok(ChangesAfter { batches, min, max })
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
    /// key) is in `keep` (every row when `None`), as [`scan`] reads them. One read serves
    /// every context. DuckDB does not materialise the result, and the channel holds two
    /// batches, so memory stays flat however large the table.
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
            let _ = conn.execute_batch("BEGIN TRANSACTION");
            let sent = scan(&conn, m, context.as_deref(), keep.as_deref(), |b| {
                tx.blocking_send(Ok(b)).is_ok()
            });
            if let Err(e) = sent {
                let _ = tx.blocking_send(Err(e));
            }
            let _ = conn.execute_batch("COMMIT");
        });
        rx
    }
}

/// Rows farther apart than this are read by separate range scans: a scan of the rows
/// between two wanted ones costs less than a query of its own below it.
const MIN_GAP: i64 = 2048;
/// A scattered set of rows is read in at most about this many range scans.
const MAX_RANGES: i64 = 32;

/// Reads the rows of `m` (in `context` only, when given) whose (context, unit key) is in
/// `keep` (every row when `None`), in storage order, handing each non-empty batch to
/// `sink` until it returns false. A kept set is read in two passes in one snapshot: the
/// row ids of its rows, from their key column only (see [`row_ids`]), then only the
/// row-id ranges that hold them, where DuckDB skips every vector outside the
/// range. A changed object's rows are appended at the end of its table, so what the
/// outbox owes is mostly a short tail, and reading it costs what changed, not the table.
fn scan(
    conn: &Connection,
    m: &'static Mirrored,
    context: Option<&str>,
    keep: Option<&Wanted>,
    mut sink: impl FnMut(RecordBatch) -> bool,
) -> Result<(), MirrorError> {
    let (unit, at) = m.unit().expect("keyed tables are streamed");
    let ctx_at = m.position("context").expect("keyed tables have contexts");
    let started = std::time::Instant::now();
    let ranges = match keep {
        None => vec![None],
        Some(keep) => ranges(&row_ids(conn, m, unit, context, keep).map_err(MirrorError::duck)?)
            .into_iter()
            .map(Some)
            .collect(),
    };
    let located = started.elapsed();
    let n_ranges = ranges.len();
    let mut rows = 0;
    let mut filter = Vec::new();
    if context.is_some() {
        filter.push("context = ?");
    }
    let params: Vec<duckdb::types::Value> = context
        .iter()
        .map(|c| duckdb::types::Value::Text(c.to_string()))
        .collect();
    for range in ranges {
        let mut filter = filter.clone();
        let mut params = params.clone();
        if let Some((lo, hi)) = range {
            filter.push("rowid BETWEEN ? AND ?");
            params.extend([lo, hi].map(duckdb::types::Value::BigInt));
        }
        let sql = format!(
            "SELECT {} FROM main.{}{}{}",
            select_list(m, ""),
            m.name(),
            if filter.is_empty() { "" } else { " WHERE " },
            filter.join(" AND ")
        );
        let mut stmt = conn.prepare(&sql).map_err(MirrorError::duck)?;
        let batches = stmt
            .stream_arrow(duckdb::params_from_iter(params))
            .map_err(MirrorError::duck)?;
        for batch in batches {
            let batch = batch.map_err(MirrorError::duck)?;
            let batch = match keep {
                None => batch,
                Some(keep) => kept(&batch, keep, at, ctx_at)?,
            };
            rows += batch.num_rows();
            if batch.num_rows() > 0 && !sink(batch) {
                return Ok(());
            }
        }
    }
    // Finding the rows is most of a round's reads under load: a join of the whole table's
    // `object_key` with the owed keys, 17–67 ms a table at 10 × 10k while the two cores
    // are full (about 8 ms on an idle machine; the text columns took about three times as
    // long).
    tracing::trace!(
        table = m.name(),
        rows,
        ranges = n_ranges,
        locate_ms = located.as_millis() as u64,
        read_ms = (started.elapsed() - located).as_millis() as u64,
        "read rows for the mirror"
    );
    Ok(())
}

/// The rows of `batch` whose (context, unit) is in `keep`.
fn kept(
    batch: &RecordBatch,
    keep: &Wanted,
    at: usize,
    ctx_at: usize,
) -> Result<RecordBatch, MirrorError> {
    let text = |i: usize| {
        batch
            .column(i)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .ok_or_else(|| MirrorError::Internal(format!("column {i} is not text")))
    };
    let (keys, ctxs) = (text(at)?, text(ctx_at)?);
    let mask: arrow::array::BooleanArray = keys
        .iter()
        .zip(ctxs.iter())
        .map(|(k, c)| {
            Some(match (k, c) {
                (Some(k), Some(c)) => keep.get(c).is_some_and(|s| s.contains(k)),
                _ => false,
            })
        })
        .collect();
    arrow::compute::filter_record_batch(batch, &mask)
        .map_err(|e| MirrorError::Internal(e.to_string()))
}

/// The row ids, ascending, of the rows of `m` whose (context, `unit`) is in `keep`: found
/// by their `object_key` where DuckDB's table has one (an integer join: about 8 ms for 300
/// keys over 285k rows on an idle machine, against 27 ms on the two text columns), by the
/// two text columns otherwise (incidents). A key shared
/// by another object (a 2^-64 chance) only adds rows to read: [`kept`] checks (context,
/// unit) on what is read.
fn row_ids(
    conn: &Connection,
    m: &'static Mirrored,
    unit: &str,
    context: Option<&str>,
    keep: &Wanted,
) -> Result<Vec<i64>, duckdb::Error> {
    let wanted = keep
        .iter()
        .filter(|(ctx, _)| context.is_none_or(|c| c == ctx.as_str()))
        .flat_map(|(ctx, keys)| keys.iter().map(move |k| (ctx.as_str(), k.as_str())));
    let keyed = kq_schema::table(m.name())
        .is_some_and(|t| t.columns.iter().any(|c| c.name == "object_key"));
    let sql = if keyed {
        conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS kq_mirror_object_keys (key UBIGINT);
             DELETE FROM temp.kq_mirror_object_keys;",
        )?;
        let mut app = conn.appender_to_catalog_and_db("kq_mirror_object_keys", "temp", "main")?;
        for (ctx, key) in wanted {
            app.append_row([kq_schema::object_key(ctx, key)])?;
        }
        app.flush()?;
        format!(
            "SELECT t.rowid FROM main.{} t SEMI JOIN temp.kq_mirror_object_keys k
               ON t.object_key = k.key ORDER BY 1",
            m.name()
        )
    } else {
        conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS kq_mirror_keys (context VARCHAR, key VARCHAR);
             DELETE FROM temp.kq_mirror_keys;",
        )?;
        let mut app = conn.appender_to_catalog_and_db("kq_mirror_keys", "temp", "main")?;
        for (ctx, key) in wanted {
            app.append_row([ctx, key])?;
        }
        app.flush()?;
        format!(
            "SELECT t.rowid FROM main.{} t SEMI JOIN temp.kq_mirror_keys k
               ON t.context = k.context AND t.\"{unit}\" = k.key ORDER BY 1",
            m.name()
        )
    };
    conn.prepare(&sql)?.query_map([], |r| r.get(0))?.collect()
}

/// Inclusive row-id ranges covering `ids` (ascending). Neighbours closer than the gap
/// share a range; the gap grows with the span, so that however scattered the ids, there
/// are at most about [`MAX_RANGES`] of them.
fn ranges(ids: &[i64]) -> Vec<(i64, i64)> {
    let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
        return Vec::new();
    };
    let gap = MIN_GAP.max((last - first) / MAX_RANGES);
    let mut out: Vec<(i64, i64)> = Vec::new();
    for &id in ids {
        match out.last_mut() {
            Some((_, hi)) if id - *hi <= gap => *hi = id,
            _ => out.push((id, id)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::tables;

    #[test]
    fn near_rows_share_a_range_and_scattered_ones_stay_few() {
        assert_eq!(ranges(&[]), vec![]);
        // A tail of recent changes is one range; a row far before it is its own.
        assert_eq!(
            ranges(&[10, 280_000, 280_005, 281_000]),
            vec![(10, 10), (280_000, 281_000)]
        );
        // Neighbours within a vector of each other go together.
        assert_eq!(
            ranges(&[0, 2048, 4096, 9000]),
            vec![(0, 4096), (9000, 9000)]
        );
        // However scattered, about MAX_RANGES ranges, and every id is in one.
        let ids: Vec<i64> = (0..5000).map(|i| i * 10_007).collect();
        let r = ranges(&ids);
        assert!(r.len() as i64 <= MAX_RANGES + 1, "{}", r.len());
        assert!(
            ids.iter()
                .all(|id| r.iter().any(|(lo, hi)| lo <= id && id <= hi))
        );
    }

    /// A migrated store's read connection with `n` objects in one context.
    fn objects(n: usize) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kq.duckdb");
        let conn = Connection::open(&path).unwrap();
        crate::store::migrate::apply(&conn, &path).unwrap();
        {
            let mut app = conn.appender("objects").unwrap();
            let m = tables::get("objects").unwrap();
            for i in 0..n {
                // Every column DuckDB has, `object_key` too (last: the mirror's positions
                // are the catalog's).
                let width = kq_schema::table("objects").unwrap().columns.len();
                let mut row = vec![duckdb::types::Value::Null; width];
                let set = |row: &mut Vec<duckdb::types::Value>, c: &str, v: String| {
                    row[m.position(c).unwrap()] = duckdb::types::Value::Text(v)
                };
                set(&mut row, "context", "c".into());
                set(&mut row, "uid", format!("u{i}"));
                set(&mut row, "resource_version", format!("{i}"));
                set(&mut row, "object", format!("{{\"n\":{i}}}"));
                *row.last_mut().unwrap() =
                    duckdb::types::Value::UBigInt(kq_schema::object_key("c", &format!("u{i}")));
                app.append_row(duckdb::appender_params_from_iter(row))
                    .unwrap();
            }
        }
        (dir, conn)
    }

    #[test]
    fn a_scan_of_kept_keys_returns_exactly_their_rows_in_storage_order() {
        let (_dir, conn) = objects(20_000);
        let m = tables::get("objects").unwrap();
        let mut keep = Wanted::new();
        let want: Vec<usize> = vec![3, 17, 9_000, 19_998, 19_999];
        keep.insert(
            "c".into(),
            want.iter()
                .map(|i| format!("u{i}"))
                .chain(["gone".into()])
                .collect(),
        );
        keep.insert("other".into(), ["u5".to_string()].into());
        let mut got = Vec::new();
        scan(&conn, m, None, Some(&keep), |b| {
            let uids = b
                .column(m.position("uid").unwrap())
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap()
                .clone();
            got.extend(uids.iter().map(|u| u.unwrap().to_string()));
            true
        })
        .unwrap();
        let expected: Vec<String> = want.iter().map(|i| format!("u{i}")).collect();
        assert_eq!(got, expected);
        // Without a kept set, every row.
        let mut n = 0;
        scan(&conn, m, Some("c"), None, |b| {
            n += b.num_rows();
            true
        })
        .unwrap();
        assert_eq!(n, 20_000);
    }
}
