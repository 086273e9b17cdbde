//! Object rows and the index: appends, deletes by key, sweeps after a relist, and the
//! removal of a resource or a context.

use super::*;

/// The resource an upserted object belongs to: a typed kind's, or the one its `objects` row
/// names.
pub(super) fn resource_of(kind: Kind, context: &str, rows: &ObjectRows) -> ResKey {
    if kind == Kind::Objects {
        let p = positions(kind);
        let text = |i: Option<usize>| {
            i.and_then(|i| text_at(&rows.row, i))
                .unwrap_or_default()
                .to_string()
        };
        return (context.to_string(), text(p.api_group), text(p.resource));
    }
    (
        context.to_string(),
        kind.group().to_string(),
        kind.table().to_string(),
    )
}

/// Where a row of one table holds what the writer reads back from it, found once by
/// column name in kq-schema's catalog, whose order the rows functions write in.
#[derive(Debug)]
pub(super) struct Positions {
    pub(super) namespace: Option<usize>,
    pub(super) name: usize,
    pub(super) resource_version: usize,
    /// `objects` only: the resource the row's object belongs to.
    pub(super) api_group: Option<usize>,
    pub(super) resource: Option<usize>,
}

pub(super) fn positions(kind: Kind) -> &'static Positions {
    // Indexed by `Kind as usize`: the writer asks for every object it writes.
    static ALL: std::sync::OnceLock<Vec<Positions>> = std::sync::OnceLock::new();
    let all = ALL.get_or_init(|| {
        Kind::ALL
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                assert_eq!(k as usize, i, "Kind::ALL is in declaration order");
                let table = kq_schema::table(k.table()).expect("every kind has a catalog table");
                let at = |name: &str| table.columns.iter().position(|c| c.name == name);
                let must = |name: &str| {
                    at(name).unwrap_or_else(|| panic!("{} has no column {name}", table.name))
                };
                Positions {
                    namespace: at("namespace"),
                    name: must("name"),
                    resource_version: must("resource_version"),
                    api_group: at("api_group"),
                    resource: at("resource"),
                }
            })
            .collect()
    });
    &all[kind as usize]
}

pub(super) fn text_at(row: &Row, i: usize) -> Option<&str> {
    match row.get(i) {
        Some(Value::Text(t)) => Some(t.as_str()),
        _ => None,
    }
}

/// A stored object whose rows a batch deletes: replaced by a modify, or gone.
pub(super) struct Stale {
    /// Its `object_key`, by which its rows are found.
    pub(super) key: u64,
    /// The object itself is gone (its delete is recorded in `changes`).
    pub(super) gone: bool,
    /// Its child rows go too: it is gone, or its children changed.
    pub(super) children: bool,
}

/// A set of `object_key`s as the operand of a statement's `object_key IN (…)`.
///
/// A few keys go in as constants, which DuckDB checks in its scan: one comparison per
/// stored row and key, cheapest for one key. More go in as one text parameter, unnested
/// into the build side of a hashed semi join: one probe per stored row however many keys,
/// and a statement text that stays the same, so it is parsed once. Deleting 1 / 10 / 60 /
/// 200 / 1,000 random keys from 286k `objects` and 95k `pods` rows (a throwaway example
/// against the bundled DuckDB, p50): constants 2.3 / 5.2 / 7.8 / 16.4 / 42 ms, the joined
/// list 3.7 / 4.7 / 5.5 / 7.3 / 8.0 ms.
pub(super) enum KeySet {
    Constants(String),
    Joined(String),
}

impl KeySet {
    /// Up to this many keys of a delete go in as constants: below five, checking them in
    /// the scan is cheaper than building the join (2.3–5.0 ms against 3.3–5.9 ms).
    const MAX_CONSTANTS_DELETE: usize = 4;
    /// A read of the `object` column takes one key as a constant, no more: with two or
    /// more constants DuckDB no longer narrows the scan to the vectors that hold them, and
    /// decompresses the whole column (2–4 keys: 89–109 ms, joined 7–15 ms).
    const MAX_CONSTANTS_READ: usize = 1;

    /// `None` for no keys; constants up to `max_constants` keys.
    pub(super) fn of(keys: impl Iterator<Item = u64>, max_constants: usize) -> Option<KeySet> {
        let keys: Vec<String> = keys.map(|k| k.to_string()).collect();
        match keys.len() {
            0 => None,
            n if n <= max_constants => Some(KeySet::Constants(keys.join(", "))),
            _ => Some(KeySet::Joined(keys.join(","))),
        }
    }

    /// What goes inside `object_key IN (…)`.
    fn operand(&self) -> &str {
        match self {
            KeySet::Constants(list) => list,
            KeySet::Joined(_) => "SELECT unnest(string_split(?, ','))::UBIGINT",
        }
    }

    /// Runs `sql`, whose one `{keys}` is replaced by the operand, and returns the rows it
    /// changed. The joined form's text never changes, so its statement is cached; the
    /// constants' text changes every time, and would only push others out of the cache.
    fn execute(&self, conn: &Connection, sql: &str) -> Result<usize, StoreError> {
        self.run(conn, sql, true)
    }

    /// [`KeySet::execute`] for a statement whose own text changes every time (it holds a
    /// number), which is never cached.
    fn execute_once(&self, conn: &Connection, sql: &str) -> Result<usize, StoreError> {
        self.run(conn, sql, false)
    }

    fn run(&self, conn: &Connection, sql: &str, cache: bool) -> Result<usize, StoreError> {
        let sql = sql.replace("{keys}", self.operand());
        Ok(match self {
            KeySet::Constants(_) => conn.execute(&sql, [])?,
            KeySet::Joined(list) if cache => conn.prepare_cached(&sql)?.execute([list])?,
            KeySet::Joined(list) => conn.execute(&sql, [list])?,
        })
    }

    /// Runs the query `sql` (see [`KeySet::execute`]) and maps its rows.
    fn query<T>(
        &self,
        conn: &Connection,
        sql: &str,
        f: impl FnMut(&duckdb::Row<'_>) -> duckdb::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let sql = sql.replace("{keys}", self.operand());
        let rows = match self {
            KeySet::Constants(_) => {
                let mut stmt = conn.prepare(&sql)?;
                stmt.query_map([], f)?.collect::<Result<_, _>>()?
            }
            KeySet::Joined(list) => {
                let mut stmt = conn.prepare_cached(&sql)?;
                stmt.query_map([list], f)?.collect::<Result<_, _>>()?
            }
        };
        Ok(rows)
    }
}

/// The statement recording as deleted, in `changes`, the rows of `kind`'s table that
/// `from` selects; `from` follows `FROM main.<table> m` (a join, a `WHERE`). Their `seq`
/// numbers follow `after`.
fn record_deletes(kind: Kind, from: &str, after: i64) -> String {
    let table = kind.table();
    let what = if kind == Kind::Objects {
        "m.resource".to_string()
    } else {
        format!("'{table}'")
    };
    let ns = if kind.namespaced() {
        "m.namespace"
    } else {
        "NULL"
    };
    format!(
        "INSERT INTO main.changes
         SELECT now(), m.context, {what}, {ns}, m.name, m.uid, 'delete', m.resource_version,
                {after} + row_number() OVER (), NULL, NULL
         FROM main.{table} m {from}"
    )
}

/// The `changes` row number `seq`, recording that `rows` was added or modified.
pub(super) fn change_row(
    now: i64,
    kind: Kind,
    context: &str,
    rows: &ObjectRows,
    op: &str,
    seq: i64,
) -> Row {
    let p = positions(kind);
    let (ns, name, rv) = (p.namespace, p.name, p.resource_version);
    let what = if kind == Kind::Objects {
        p.resource
            .and_then(|i| text_at(&rows.row, i))
            .unwrap_or_default()
    } else {
        kind.table()
    };
    let text = |v: Option<&str>| v.map_or(Value::Null, |t| Value::Text(t.to_string()));
    vec![
        Value::Timestamp(TimeUnit::Microsecond, now),
        Value::Text(context.to_string()),
        Value::Text(what.to_string()),
        text(ns.and_then(|i| text_at(&rows.row, i))),
        text(text_at(&rows.row, name)),
        Value::Text(rows.uid.clone()),
        Value::Text(op.to_string()),
        text(text_at(&rows.row, rv)),
        Value::BigInt(seq),
        // The diff and spec_changed of a modify are filled in once the old state is read.
        Value::Null,
        Value::Null,
    ]
}

/// Where a `changes` row holds its diff (and, next to it, spec_changed), by name in the
/// catalog.
fn diff_at() -> usize {
    static AT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *AT.get_or_init(|| {
        let changes = kq_schema::table("changes").expect("the catalog has changes");
        let at = |n: &str| changes.columns.iter().position(|c| c.name == n);
        let diff = at("diff").expect("changes has diff");
        assert_eq!(
            at("spec_changed"),
            Some(diff + 1),
            "spec_changed follows diff"
        );
        diff
    })
}

/// What the diff rules call an object's kind: its table, or for an `objects` row the
/// resource it belongs to.
fn diff_kind(kind: Kind, rows: &ObjectRows) -> &str {
    if kind == Kind::Objects {
        positions(kind)
            .resource
            .and_then(|i| text_at(&rows.row, i))
            .unwrap_or_default()
    } else {
        kind.table()
    }
}

/// The Secret keys of (context, uid) whose values changed in this batch, taken out of
/// `hidden`. Almost every batch has none, and then nothing is allocated for the lookup.
fn take_hidden(
    hidden: &mut HashMap<(String, String), Vec<serde_json::Value>>,
    ctx: &str,
    uid: &str,
) -> Vec<serde_json::Value> {
    if hidden.is_empty() {
        return Vec::new();
    }
    hidden
        .remove(&(ctx.to_string(), uid.to_string()))
        .unwrap_or_default()
}

/// Puts a diff into its `changes` row.
fn set_diff(change: &mut Row, d: &crate::diff::Diff) {
    let at = diff_at();
    change[at] = Value::Text(d.json());
    change[at + 1] = Value::Boolean(d.spec_changed);
}

/// An object's JSON as its rows carry it: the last column of its `objects` row.
fn object_json(kind: Kind, rows: &ObjectRows) -> Option<&str> {
    let row = if kind == Kind::Objects {
        &rows.row
    } else {
        rows.object.as_ref()?
    };
    match row.last() {
        Some(Value::Text(t)) => Some(t.as_str()),
        _ => None,
    }
}

impl Writer {
    /// Writes the pending rows of one kind (before a sweep or removal that depends on them).
    pub(super) fn flush_kind(
        &mut self,
        pending: &mut BTreeMap<Kind, HashMap<Key, Option<ObjectRows>>>,
        kind: Kind,
    ) -> Result<(), StoreError> {
        match pending.remove(&kind) {
            Some(objects) => self.flush(&mut BTreeMap::from([(kind, objects)])),
            None => Ok(()),
        }
    }

    /// The index's id of the resource an upserted object belongs to.
    pub(super) fn resource_id(&mut self, kind: Kind, rows: &ObjectRows) -> u32 {
        if kind == Kind::Objects {
            let p = positions(kind);
            let at = |i: Option<usize>| i.and_then(|i| text_at(&rows.row, i)).unwrap_or_default();
            return self.index.resource_id(at(p.api_group), at(p.resource));
        }
        self.index.resource_id(kind.group(), kind.table())
    }

    /// Writes pending upserts and deletes. The index says which objects are new (appended),
    /// changed (old rows deleted by key, new ones appended), unchanged (skipped) or gone
    /// (deleted and recorded), so the database is searched only for rows that must go.
    pub(super) fn flush(
        &mut self,
        pending: &mut BTreeMap<Kind, HashMap<Key, Option<ObjectRows>>>,
    ) -> Result<(), StoreError> {
        let now = now_micros();
        let mut taken: Vec<(Kind, HashMap<Key, Option<ObjectRows>>)> =
            std::mem::take(pending).into_iter().collect();
        // The `objects` and `changes` rows of every kind go in one append each, after the
        // loop: a batch of the initial sync holds several kinds, and each append costs a
        // flush into DuckDB whatever its size.
        let mut object_rows: Vec<&[Value]> = Vec::new();
        let mut object_keys: Vec<u64> = Vec::new();
        let mut change_rows: Vec<Row> = Vec::new();
        for (kind, objects) in taken.iter_mut() {
            let kind = *kind;
            let table = kind.table();
            // Every upsert is observed, unchanged ones too: after a restart the relist is
            // what rebuilds the tracker's timers.
            let mut observed = Vec::new();
            let mut gone = Vec::new();
            // A Secret's keys whose values changed, by (context, uid): its digests are
            // swapped here for every upsert, unchanged ones too, so that the first list after
            // a start knows every Secret's values.
            let mut hidden: HashMap<(String, String), Vec<serde_json::Value>> = HashMap::new();
            for ((ctx, uid), rows) in objects.iter_mut() {
                match rows {
                    Some(r) => {
                        observed.extend(r.observed.take().map(|o| (ctx.clone(), o)));
                        if let Some(new) = r.secret.take() {
                            let changed = self
                                .index
                                .swap_secret(ctx, uid, (*new).clone())
                                .map(|old| new.changes_from(&old))
                                .unwrap_or_default();
                            if !changed.is_empty() {
                                hidden.insert((ctx.to_string(), uid.clone()), changed);
                            }
                        }
                    }
                    None if kind.has_incidents() => gone.push((ctx.clone(), uid.clone())),
                    None => {}
                }
            }
            let objects: &HashMap<Key, Option<ObjectRows>> = objects;
            let mut fresh: Vec<&ObjectRows> = Vec::new();
            // Their `object_key`s, in the same order.
            let mut fresh_keys: Vec<u64> = Vec::new();
            // The child rows to append: those of new objects, and of modifies that changed them.
            let mut child_rows: Vec<&[Value]> = Vec::new();
            let mut child_keys: Vec<u64> = Vec::new();
            let mut changes: Vec<Row> = Vec::new();
            // Modified objects, by the index of their `changes` row, for their diffs.
            let mut modified: Vec<(usize, &str, &str, &ObjectRows)> = Vec::new();
            // Rows to delete: whether the object itself is gone, and whether its child rows go.
            let mut stale: Vec<Stale> = Vec::new();
            let rv = positions(kind).resource_version;
            for ((ctx, uid), rows) in objects {
                match rows {
                    Some(r) => {
                        let res = self.resource_id(kind, r);
                        // A shape the watcher took is kept for every upsert, relisted ones too,
                        // so that even the first change after a start needs no read.
                        let seen = self
                            .index
                            .upsert(ctx, uid, text_at(&r.row, rv), res, r.shape);
                        if seen == Seen::Same {
                            continue;
                        }
                        // A modify that left the child rows as they were (a pod's status
                        // message, its conditions) neither deletes nor appends them.
                        let children = kind.child().is_some()
                            && self.index.swap_children(ctx, uid, r.children_digest)
                                != r.children_digest;
                        let key = kq_schema::object_key(ctx, uid);
                        let op = match seen {
                            Seen::New => "add",
                            _ => {
                                stale.push(Stale {
                                    key,
                                    gone: false,
                                    children,
                                });
                                "modify"
                            }
                        };
                        self.changes_seq += 1;
                        let mut change = change_row(now, kind, ctx, r, op, self.changes_seq);
                        // Adds compute no shape on the writer, so the initial sync pays
                        // nothing for diffs here: an object without a watcher's shape (all
                        // but pods) reads its stored state at its first modify, and later ones
                        // only when what the diff compares moved.
                        if self.opts.diffs && op == "modify" {
                            let shape = r
                                .shape
                                .or_else(|| {
                                    object_json(kind, r)
                                        .and_then(|j| crate::diff::shape(diff_kind(kind, r), j))
                                })
                                .unwrap_or(0);
                            let before = self.index.swap_shape(ctx, uid, shape);
                            if shape != 0 {
                                if before == shape {
                                    let d = crate::diff::Diff::default().with_hidden(take_hidden(
                                        &mut hidden,
                                        ctx,
                                        uid,
                                    ));
                                    set_diff(&mut change, &d);
                                } else {
                                    modified.push((changes.len(), ctx, uid, r));
                                }
                            }
                        }
                        changes.push(change);
                        self.outbox.row(table, ctx, uid, children);
                        if children {
                            child_rows.extend(r.children.iter().map(Vec::as_slice));
                            child_keys.extend(r.children.iter().map(|_| key));
                        }
                        fresh.push(r);
                        fresh_keys.push(key);
                    }
                    None => {
                        if self.index.remove(ctx, uid) {
                            self.outbox.row(table, ctx, uid, true);
                            stale.push(Stale {
                                key: kq_schema::object_key(ctx, uid),
                                gone: true,
                                children: true,
                            });
                        }
                    }
                }
            }
            let started = Instant::now();
            if !fresh.is_empty() || !stale.is_empty() {
                self.outbox.objects_written(table);
            }
            if !stale.is_empty() {
                let wanted: Vec<(&str, &str)> = modified.iter().map(|m| (m.1, m.2)).collect();
                let old = self.delete_stale(kind, &stale, &wanted)?;
                for (i, ctx, uid, r) in modified {
                    let key = (ctx.to_string(), uid.to_string());
                    let (Some(before), Some(after)) = (old.get(&key), object_json(kind, r)) else {
                        continue;
                    };
                    if let Some(d) = crate::diff::diff(diff_kind(kind, r), before, after) {
                        let d = d.with_hidden(take_hidden(&mut hidden, ctx, uid));
                        set_diff(&mut changes[i], &d);
                    }
                }
            }
            if let Some((child, _)) = kind.child() {
                self.append(child, child_rows.iter().copied(), Some(child_keys))?;
            }
            if kind == Kind::Objects {
                object_rows.extend(fresh.iter().map(|r| r.row.as_slice()));
                object_keys.extend(&fresh_keys);
            } else {
                for (r, key) in fresh.iter().zip(&fresh_keys) {
                    if let Some(o) = &r.object {
                        object_rows.push(o);
                        object_keys.push(*key);
                    }
                }
                self.append(
                    table,
                    fresh.iter().map(|r| r.row.as_slice()),
                    Some(fresh_keys),
                )?;
            }
            change_rows.append(&mut changes);
            for (ctx, uid) in gone {
                self.tracker.gone(&self.conn, &ctx, &uid, now)?;
            }
            for (ctx, o) in observed {
                let cluster_id = self.contexts.get(&*ctx).and_then(|c| c.cluster_id.clone());
                self.tracker
                    .observe(&self.conn, &ctx, cluster_id.as_deref(), &o, now)?;
            }
            tracing::trace!(
                table,
                written = fresh.len(),
                removed = stale.len(),
                skipped = objects.len() - fresh.len() - stale.iter().filter(|s| s.gone).count(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "wrote rows"
            );
        }
        self.append("objects", object_rows.iter().copied(), Some(object_keys))?;
        self.append("changes", change_rows.iter().map(Vec::as_slice), None)?;
        Ok(())
    }

    /// Deletes the stored rows of changed and deleted objects (with their containers and
    /// `objects` rows), recording the deletes in `changes`.
    /// First reads the stored JSON of the `wanted` objects (the states modifies replace, for
    /// their diffs), by (context, uid).
    pub(super) fn delete_stale(
        &mut self,
        kind: Kind,
        stale: &[Stale],
        wanted: &[(&str, &str)],
    ) -> Result<HashMap<(String, String), String>, StoreError> {
        let old = if wanted.is_empty() {
            HashMap::new()
        } else {
            self.stored_json(wanted.iter().copied())?
        };
        let table = kind.table();
        // Rows are found by key: one integer column to scan, where (context, uid) would be
        // two strings to read and hash for every stored row. A batch of modifies deletes
        // nothing for good, so it records no deletes (another scan of the table).
        let keys = |f: fn(&Stale) -> bool| {
            KeySet::of(
                stale.iter().filter(|s| f(s)).map(|s| s.key),
                KeySet::MAX_CONSTANTS_DELETE,
            )
        };
        if let Some(gone) = keys(|s| s.gone) {
            let sql = record_deletes(kind, "WHERE m.object_key IN ({keys})", self.changes_seq);
            // The statement numbers the records after the last change, so its text is new.
            self.changes_seq += gone.execute_once(&self.conn, &sql)? as i64;
        }
        let all = keys(|_| true).expect("delete_stale is called with stale objects");
        all.execute(
            &self.conn,
            &format!("DELETE FROM main.{table} WHERE object_key IN ({{keys}})"),
        )?;
        if let Some((child, _)) = kind.child()
            && let Some(children) = keys(|s| s.children)
        {
            children.execute(
                &self.conn,
                &format!("DELETE FROM main.{child} WHERE object_key IN ({{keys}})"),
            )?;
        }
        if kind != Kind::Objects {
            all.execute(
                &self.conn,
                "DELETE FROM main.objects WHERE object_key IN ({keys})",
            )?;
        }
        // Each stale object had one `objects` row.
        self.checkpoints.deleted(stale.len());
        Ok(old)
    }

    /// The stored JSON of these objects, by (context, uid), in one statement whatever their
    /// contexts, found by key (see [`KeySet`]). The `object` column is compressed a vector
    /// of 2,048 rows at a time, and reaching a row decompresses its vector up to it: with a
    /// few keys DuckDB filters the scan by them and decompresses only the vectors that hold
    /// one; with more (about 50, where it stops pushing a join's keys into the scan) it
    /// reads the whole column. Reading 1 / 5 / 10 / 60 / 200 objects of 286k in a throwaway
    /// example (p50): 4.0 / 18.5 / 45 / 118 / 123 ms joined, 3.9 / 103 / 111 / 119 / 137 ms
    /// as constants.
    fn stored_json<'a>(
        &self,
        wanted: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<HashMap<(String, String), String>, StoreError> {
        let wanted: HashSet<(&str, &str)> = wanted.collect();
        let Some(keys) = KeySet::of(
            wanted
                .iter()
                .map(|(ctx, uid)| kq_schema::object_key(ctx, uid)),
            KeySet::MAX_CONSTANTS_READ,
        ) else {
            return Ok(HashMap::new());
        };
        let rows = keys.query(
            &self.conn,
            "SELECT context, uid, object::VARCHAR FROM main.objects WHERE object_key IN ({keys})",
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )?;
        // Keys are 64-bit hashes: a row whose (context, uid) merely shares one is not one of
        // these.
        Ok(rows
            .into_iter()
            .filter(|(ctx, uid, _)| wanted.contains(&(ctx.as_str(), uid.as_str())))
            .map(|(ctx, uid, json)| ((ctx, uid), json))
            .collect())
    }

    /// Records as deleted, in `changes`, the rows of `kind`'s table that `from` selects (see
    /// [`record_deletes`]), numbering them after the last change.
    fn record_deletes(
        &mut self,
        kind: Kind,
        from: &str,
        params: impl duckdb::Params,
    ) -> Result<(), StoreError> {
        let sql = record_deletes(kind, from, self.changes_seq);
        self.changes_seq += self.conn.execute(&sql, params)? as i64;
        Ok(())
    }

    /// Appends rows to an inventory table as one Arrow batch.
    /// `keys`: the rows' `object_key`s, for a table that has the column.
    pub(super) fn append<'a>(
        &self,
        table: &'static str,
        rows: impl Iterator<Item = &'a [Value]> + Clone,
        keys: Option<Vec<u64>>,
    ) -> Result<(), StoreError> {
        if rows.clone().next().is_none() {
            return Ok(());
        }
        let schema = &self.schemas[table];
        let batch = super::super::batch::record_batch(schema, rows, keys)?;
        let mut app = self.conn.appender_to_db(table, "main")?;
        app.append_record_batch(batch)?;
        app.flush()?;
        Ok(())
    }

    /// After a relist: removes (and records as deleted) the rows of this context and kind
    /// whose uid was not listed. Typed kinds also sweep their `objects` rows; `objects` itself
    /// is swept per resource (`scope`: API group and resource).
    pub(super) fn sweep(
        &mut self,
        kind: Kind,
        ctx: &Arc<str>,
        keep: &[String],
        scope: Option<&(String, String)>,
    ) -> Result<(), StoreError> {
        // The index knows whether anything is gone; a relist that finds every object still
        // there (the usual case) costs no query.
        let res = match scope {
            Some((g, r)) => self.index.resource_id(g, r),
            None => self.index.resource_id(kind.group(), kind.table()),
        };
        if self.index.sweep(ctx, res, keep) == 0 {
            return Ok(());
        }
        let context: &str = ctx;
        {
            let mut keys = self.conn.appender_to_db("keys", "kq_stage")?;
            for uid in keep {
                keys.append_row(duckdb::params![context, uid.as_str()])?;
            }
            keys.flush()?;
        }
        let table = kind.table();
        let gone = "context = ? AND uid NOT IN (SELECT uid FROM kq_stage.keys)";
        let (scoped, mut params) = match (kind, scope) {
            (Kind::Objects, Some((g, r))) => (
                " AND api_group = ? AND resource = ?",
                vec![context, g.as_str(), r.as_str()],
            ),
            _ => ("", vec![context]),
        };
        self.record_deletes(
            kind,
            &format!("WHERE {gone}{scoped}"),
            params_from_iter(params.iter()),
        )?;
        self.outbox.part(table, Some(context));
        let removed = self.conn.execute(
            &format!("DELETE FROM main.{table} WHERE {gone}{scoped}"),
            params_from_iter(params.iter()),
        )?;
        if let Some((child, fk)) = kind.child() {
            self.conn.execute(&format!("DELETE FROM main.{child} WHERE context = ? AND {fk} NOT IN (SELECT uid FROM kq_stage.keys)"), [context])?;
        }
        let gvk = kind.gvk();
        // A typed object has one row in its table and one in `objects`.
        self.checkpoints.deleted(removed);
        if kind != Kind::Objects {
            params = vec![context, gvk.group.as_str(), gvk.resource.as_str()];
            self.conn.execute(
                &format!(
                    "DELETE FROM main.objects WHERE {gone} AND api_group = ? AND resource = ?"
                ),
                params_from_iter(params.iter()),
            )?;
        }
        let resource = scope.map_or(table, |(_, r)| r.as_str());
        self.conn.execute_batch("DELETE FROM kq_stage.keys")?;
        if kind.has_incidents() {
            let index = &self.index;
            self.tracker.sweep(
                &self.conn,
                ctx,
                |uid| index.contains(ctx, uid),
                now_micros(),
            )?;
        }
        if removed > 0 {
            tracing::info!(
                context,
                table,
                resource,
                removed,
                "relist removed rows of objects deleted while not watching"
            );
        }
        Ok(())
    }

    /// A resource is no longer served (its CRD was deleted): its objects go.
    pub(super) fn remove_resource(
        &mut self,
        context: &str,
        group: &str,
        resource: &str,
    ) -> Result<(), StoreError> {
        let params = duckdb::params![context, group, resource];
        self.record_deletes(
            Kind::Objects,
            "WHERE context = $1 AND api_group = $2 AND resource = $3",
            params,
        )?;
        self.outbox.part("objects", Some(context));
        self.outbox.part("resources", None);
        let removed = self.conn.execute(
            "DELETE FROM main.objects WHERE context = $1 AND api_group = $2 AND resource = $3",
            params,
        )?;
        self.checkpoints.deleted(removed);
        self.conn.execute(
            "DELETE FROM main.resources WHERE context = ? AND api_group = ? AND resource = ?",
            [context, group, resource],
        )?;
        self.resources
            .remove(&(context.to_string(), group.to_string(), resource.to_string()));
        let res = self.index.resource_id(group, resource);
        self.index.remove_resource(&Arc::from(context), res);
        tracing::info!(
            context,
            group,
            resource,
            removed,
            "resource no longer served; removed its objects"
        );
        Ok(())
    }

    pub(super) fn remove_context(&mut self, name: &str) -> Result<(), StoreError> {
        for k in Kind::ALL {
            self.outbox.part(k.table(), Some(name));
            let removed = self.conn.execute(
                &format!("DELETE FROM main.{} WHERE context = ?", k.table()),
                [name],
            )?;
            if *k == Kind::Objects {
                self.checkpoints.deleted(removed);
            }
            if let Some((child, _)) = k.child() {
                self.conn.execute(
                    &format!("DELETE FROM main.{child} WHERE context = ?"),
                    [name],
                )?;
            }
        }
        self.conn
            .execute("DELETE FROM contexts WHERE name = ?", [name])?;
        self.conn
            .execute("DELETE FROM main.resources WHERE context = ?", [name])?;
        self.contexts.remove(name);
        self.resources.retain(|(c, _, _), _| c != name);
        self.index.remove_context(name);
        self.tracker
            .remove_context(&self.conn, name, now_micros())?;
        self.outbox.part("incidents", Some(name));
        self.outbox.part("contexts", None);
        self.outbox.part("resources", None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{count, fixture, running};
    use super::*;

    #[test]
    fn a_sweep_deletes_what_the_relist_did_not_see_and_records_each_delete() {
        let mut f = fixture(StoreOptions::default());
        f.writer
            .write_batch(vec![running("kept"), running("gone"), running("also-gone")]);
        f.writer.write_batch(vec![Op::Sweep {
            kind: Kind::Pods,
            context: Arc::from("test"),
            keep: vec!["uid-kept".into()],
            scope: None,
        }]);
        assert_eq!(count(&f.other, "SELECT count(*) FROM pods"), 1);
        assert_eq!(
            count(
                &f.other,
                "SELECT count(*) FROM containers WHERE pod <> 'kept'"
            ),
            0,
            "the pods' containers went with them"
        );
        assert_eq!(
            count(
                &f.other,
                "SELECT count(*) FROM changes WHERE operation = 'delete' AND kind = 'pods' AND namespace = 'default' AND name IN ('gone', 'also-gone')"
            ),
            2
        );
        assert_eq!(f.writer.index.total("test"), 1);
    }

    /// The pod `web` at resourceVersion `rv`, with one container restarted `restarts` times.
    fn web(rv: &str, message: &str, restarts: i32) -> Op {
        let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "uid-web", "resourceVersion": rv},
            "spec": {"containers": [{"name": "main", "image": "nginx:1"}, {"name": "side", "image": "envoy:1"}]},
            "status": {"phase": "Running", "message": message, "containerStatuses": [
                {"name": "main", "image": "nginx:1", "imageID": "", "ready": true, "restartCount": restarts},
                {"name": "side", "image": "envoy:1", "imageID": "", "ready": true, "restartCount": 0}]},
        }))
        .unwrap();
        let ctx: Arc<str> = Arc::from("test");
        Op::Upsert {
            kind: Kind::Pods,
            rows: crate::rows::pod(&ctx, &p),
            context: ctx,
        }
    }

    #[test]
    fn a_modify_rewrites_a_pods_containers_only_when_they_changed() {
        let mut f = fixture(StoreOptions::default());
        let restarts = |f: &super::super::tests::Fixture| {
            count(
                &f.other,
                "SELECT sum(restart_count) FROM containers WHERE pod = 'web'",
            )
        };
        let containers = "SELECT count(*) FROM containers WHERE pod = 'web'";
        f.writer.write_batch(vec![web("1", "starting", 0)]);
        assert_eq!(count(&f.other, containers), 2);
        // Only the status message moved: the containers stay, once each.
        f.writer.write_batch(vec![web("2", "serving", 0)]);
        assert_eq!(count(&f.other, containers), 2);
        assert_eq!(
            count(
                &f.other,
                "SELECT count(*) FROM pods WHERE name = 'web' AND resource_version = '2'"
            ),
            1
        );
        // A restart changes a container's row: both are rewritten, still once each.
        f.writer.write_batch(vec![web("3", "serving", 4)]);
        assert_eq!(count(&f.other, containers), 2);
        assert_eq!(restarts(&f), 4);
        // Back to the first state, after a modify that skipped them: rewritten again.
        f.writer.write_batch(vec![web("4", "serving", 4)]);
        f.writer.write_batch(vec![web("5", "serving", 0)]);
        assert_eq!(count(&f.other, containers), 2);
        assert_eq!(restarts(&f), 0);
        // Deleted: the containers go with the pod.
        f.writer.write_batch(vec![Op::Delete {
            kind: Kind::Pods,
            context: Arc::from("test"),
            uid: "uid-web".into(),
        }]);
        assert_eq!(count(&f.other, containers), 0);
    }

    /// The pod `name` at resourceVersion `rv`, running `image` restarted `restarts` times,
    /// with its `objects` row and its shape as a watcher sends them.
    fn pod_at(name: &str, rv: &str, image: &str, restarts: i32) -> Op {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "resourceVersion": rv},
            "spec": {"containers": [{"name": "main", "image": image}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "main", "image": image, "imageID": "", "ready": true, "restartCount": restarts}]},
        });
        let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json.clone()).unwrap();
        let ctx: Arc<str> = Arc::from("test");
        let mut rows = crate::rows::pod(&ctx, &p);
        let json = json.to_string();
        rows.shape = crate::diff::text_shape("pods", &json);
        rows.object = Some(crate::rows::object_row(
            &ctx,
            &Kind::Pods.gvk(),
            &p.metadata,
            json,
        ));
        Op::Upsert {
            kind: Kind::Pods,
            rows,
            context: ctx,
        }
    }

    #[test]
    fn a_batch_finds_its_stored_rows_by_key_whether_it_names_a_few_objects_or_many() {
        // One key goes into every statement as a constant; a few into the deletes as
        // constants and into the reads as one list; more into every statement as one list.
        for n in [
            KeySet::MAX_CONSTANTS_READ,
            KeySet::MAX_CONSTANTS_DELETE,
            KeySet::MAX_CONSTANTS_DELETE + 8,
        ] {
            let mut f = fixture(StoreOptions::default());
            let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
            let all = |rv: &str, image: &str, restarts: i32| -> Vec<Op> {
                names
                    .iter()
                    .map(|p| pod_at(p, rv, image, restarts))
                    .collect()
            };
            let mut first = all("1", "nginx:1", 0);
            first.push(pod_at("bystander", "1", "nginx:1", 0));
            f.writer.write_batch(first);
            // A new image: each modify's diff compares with the stored state it replaces.
            f.writer.write_batch(all("2", "nginx:2", 1));
            let n = n as i64;
            let at = |sql: &str| count(&f.other, sql);
            assert_eq!(at("SELECT count(*) FROM pods"), n + 1, "{n} keys");
            assert_eq!(
                at("SELECT count(*) FROM pods WHERE resource_version = '2'"),
                n
            );
            assert_eq!(at("SELECT count(*) FROM containers"), n + 1);
            assert_eq!(
                at("SELECT count(*) FROM containers WHERE image = 'nginx:2' AND restart_count = 1"),
                n
            );
            assert_eq!(at("SELECT count(*) FROM objects"), n + 1);
            assert_eq!(
                at("SELECT count(*) FROM objects WHERE object.metadata.resourceVersion = '\"2\"'"),
                n
            );
            assert_eq!(
                at(
                    "SELECT count(*) FROM changes WHERE operation = 'modify' AND spec_changed AND diff::VARCHAR LIKE '%nginx:2%'"
                ),
                n,
                "every modify's diff, from the state it replaced"
            );
            f.writer.write_batch(
                names
                    .iter()
                    .map(|p| Op::Delete {
                        kind: Kind::Pods,
                        context: Arc::from("test"),
                        uid: format!("uid-{p}"),
                    })
                    .collect(),
            );
            for table in ["pods", "containers", "objects"] {
                assert_eq!(
                    at(&format!("SELECT count(*) FROM {table}")),
                    1,
                    "{table} after the deletes, {n} keys"
                );
            }
            assert_eq!(at("SELECT count(*) FROM pods WHERE name = 'bystander'"), 1);
            assert_eq!(
                at(
                    "SELECT count(*) FROM changes WHERE operation = 'delete' AND resource_version = '2'"
                ),
                n,
                "each delete recorded once, with the state it removed"
            );
            assert_eq!(f.writer.index.total("test"), 1);
        }
    }

    #[test]
    fn one_cluster_under_two_contexts_keeps_two_sets_of_rows_found_by_their_own_keys() {
        let mut f = fixture(StoreOptions::default());
        // The same pod, uid and all, as two contexts naming one cluster see it.
        let seen_by = |context: &str, op: Op| match op {
            Op::Upsert { kind, mut rows, .. } => {
                let context: Arc<str> = Arc::from(context);
                rows.row[0] = Value::Text(context.to_string());
                for child in &mut rows.children {
                    child[0] = Value::Text(context.to_string());
                }
                if let Some(o) = &mut rows.object {
                    o[0] = Value::Text(context.to_string());
                }
                Op::Upsert {
                    kind,
                    context,
                    rows,
                }
            }
            other => other,
        };
        f.writer.write_batch(vec![
            seen_by("a", running("web")),
            seen_by("b", running("web")),
        ]);
        let stored = |f: &super::super::tests::Fixture, table: &str| {
            count(
                &f.other,
                &format!("SELECT count(*) FROM {table} WHERE context = 'a'"),
            ) * 10
                + count(
                    &f.other,
                    &format!("SELECT count(*) FROM {table} WHERE context = 'b'"),
                )
        };
        assert_eq!((stored(&f, "pods"), stored(&f, "containers")), (11, 11));
        // Each row carries its own context's key, as the writer computes it.
        let keys: Vec<(String, u64)> = f
            .other
            .prepare("SELECT context, object_key FROM pods ORDER BY context")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            keys,
            [
                ("a".to_string(), kq_schema::object_key("a", "uid-web")),
                ("b".to_string(), kq_schema::object_key("b", "uid-web")),
            ]
        );
        // A change and then a delete under one context leave the other's rows alone.
        let Op::Upsert { mut rows, .. } = seen_by("a", running("web")) else {
            unreachable!()
        };
        rows.row[positions(Kind::Pods).resource_version] = Value::Text("2".into());
        f.writer.write_batch(vec![Op::Upsert {
            kind: Kind::Pods,
            context: Arc::from("a"),
            rows,
        }]);
        assert_eq!((stored(&f, "pods"), stored(&f, "containers")), (11, 11));
        f.writer.write_batch(vec![Op::Delete {
            kind: Kind::Pods,
            context: Arc::from("a"),
            uid: "uid-web".into(),
        }]);
        assert_eq!((stored(&f, "pods"), stored(&f, "containers")), (1, 1));
    }

    #[test]
    fn row_positions_come_from_the_catalog_and_match_what_the_rows_functions_write() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "positioned", "namespace": "default", "uid": "u", "resourceVersion": "1"},
        }))
        .unwrap();
        let ctx: Arc<str> = Arc::from("test");
        let rows = crate::rows::pod(&ctx, &pod);
        let p = positions(Kind::Pods);
        assert_eq!(text_at(&rows.row, p.name), Some("positioned"));
        assert_eq!(text_at(&rows.row, p.resource_version), Some("1"));
        assert_eq!(
            p.namespace.and_then(|i| text_at(&rows.row, i)),
            Some("default")
        );
        let meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("positioned".into()),
            ..Default::default()
        };
        let object = crate::rows::object_row(&ctx, &Kind::Pods.gvk(), &meta, "{}".into());
        let o = positions(Kind::Objects);
        let at = |i: Option<usize>| i.and_then(|i| text_at(&object, i));
        assert_eq!((at(o.api_group), at(o.resource)), (Some(""), Some("pods")));
        assert!(positions(Kind::Nodes).namespace.is_none());
    }
}
