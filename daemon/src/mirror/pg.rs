//! The PostgreSQL side: connecting, the mirror's schema (additive migrations under an
//! advisory lock), the instance's claim, and the transactions that apply rows.
//!
//! Every statement but COPY goes through the simple query protocol with literals, all
//! staging lives in temporary tables dropped at commit, and the instance is claimed by a
//! lease in a row rather than a session lock, so nothing outlives a transaction: through
//! PgBouncer in transaction mode the next transaction may run on another server
//! connection, and the one this one ran on serves other clients next.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::copy::{Cell, Rows, copy_type};
use super::duck::{Versions, add_version, versions_sql};
use super::tables::{self, Mirrored, Shape, ident, literal};
use super::{Key, MirrorConfig, MirrorError};

/// The version of the mirror's PostgreSQL schema this kqd writes. A database whose
/// schema is newer is refused: an older kqd must not write tables it does not know.
pub const MIRROR_SCHEMA_VERSION: i64 = 1;

/// How long an instance's claim lasts unless its holder renews it: every transaction
/// that applies rows renews it, and an idle mirror every third of it. A kqd that stops
/// gives it up; one that dies leaves it to lapse, unless it is started again on its data
/// directory, which takes it back at once.
const LEASE: Duration = Duration::from_secs(30);

/// One table's part of a transaction.
pub struct TableWrite {
    pub table: &'static Mirrored,
    pub mode: Mode,
    pub batches: Vec<RecordBatch>,
}

/// What the rows of a table write replace.
pub enum Mode {
    /// The rows of these keys: the instance's rows of each key that DuckDB no longer has go.
    Keys(Vec<Key>),
    /// The whole table: the instance's rows DuckDB no longer has go.
    Whole,
    /// New `changes`, and the lowest number DuckDB still keeps (rows below it go).
    Append { floor: Option<i64> },
}

/// An open session: the connection and what it needs to write.
pub struct Pg {
    pub client: Client,
    connection: tokio::task::JoinHandle<()>,
    schema: String,
    instance: String,
    /// See [`MirrorConfig::holder`].
    holder: String,
    /// When the claim was last taken or renewed.
    renewed: Instant,
    read_role: Option<String>,
    /// The server compresses TOASTed values with lz4 (PostgreSQL 14+ built with it),
    /// several times cheaper than the default pglz for the JSON of every object.
    lz4: bool,
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// What one applied transaction did.
#[derive(Debug, Default)]
pub struct Applied {
    pub rows: u64,
    pub nul_replaced: u64,
}

impl Pg {
    /// Connects, brings the schema up to date, and claims the instance.
    pub async fn connect(cfg: &MirrorConfig) -> Result<Pg, MirrorError> {
        let mut pg = Pg::open(cfg).await?;
        pg.migrate().await?;
        pg.claim().await?;
        pg.lz4 = simple_rows(
            &pg.client,
            "SELECT 1 FROM pg_settings
              WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)",
        )
        .await?
        .len()
            == 1;
        Ok(pg)
    }

    /// Connects, and nothing more.
    async fn open(cfg: &MirrorConfig) -> Result<Pg, MirrorError> {
        let pg_config = super::url::parse(&cfg.url)?;
        let tls = super::url::tls(&cfg.url)?;
        let (client, connection) = match tls {
            Some(tls) => {
                let (c, conn) = pg_config.connect(tls).await.map_err(MirrorError::pg)?;
                (c, tokio::spawn(async move { drop(conn.await) }))
            }
            None => {
                let (c, conn) = pg_config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(MirrorError::pg)?;
                (c, tokio::spawn(async move { drop(conn.await) }))
            }
        };
        Ok(Pg {
            client,
            connection,
            schema: cfg.schema.clone(),
            instance: cfg.instance.clone(),
            holder: cfg.holder.clone(),
            renewed: Instant::now(),
            read_role: cfg.read_role.clone(),
            lz4: false,
        })
    }

    /// What `kqd --check-config` says of the database: the server and the role, or every
    /// privilege the mirror lacks, by name.
    pub async fn check(cfg: &MirrorConfig) -> Result<String, Vec<String>> {
        let pg = Pg::open(cfg).await.map_err(|e| vec![e.to_string()])?;
        let schema = literal(&cfg.schema);
        let sql = format!(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'),
                    current_user, current_database(),
                    (SELECT count(*) FROM pg_namespace WHERE nspname = {schema}) > 0,
                    has_database_privilege(current_database(), 'CREATE'),
                    has_database_privilege(current_database(), 'TEMPORARY'),
                    CASE WHEN (SELECT count(*) FROM pg_namespace WHERE nspname = {schema}) > 0
                         THEN has_schema_privilege({schema}, 'CREATE') AND has_schema_privilege({schema}, 'USAGE') END"
        );
        let rows = simple_rows(&pg.client, &sql)
            .await
            .map_err(|e| vec![e.to_string()])?;
        let r = rows.into_iter().next().unwrap_or_default();
        let at = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        let yes = |i: usize| at(i) == "t";
        let (version_num, version, user, db) = (at(0), at(1), at(2), at(3));
        let mut missing = Vec::new();
        if version_num.parse::<i64>().unwrap_or(0) < 140_000 {
            missing.push(format!(
                "PostgreSQL {version} is older than 14, the oldest the mirror supports"
            ));
        }
        if yes(4) {
            if !yes(7) {
                missing.push(format!(
                    "role {user} lacks CREATE and USAGE on schema {} (the mirror creates its tables there)",
                    cfg.schema
                ));
            }
        } else if !yes(5) {
            missing.push(format!(
                "role {user} lacks CREATE on database {db} (the mirror creates schema {} there)",
                cfg.schema
            ));
        }
        if !yes(6) {
            missing.push(format!(
                "role {user} lacks TEMPORARY on database {db} (the mirror stages rows in temporary tables)"
            ));
        }
        if missing.is_empty() {
            Ok(format!(
                "PostgreSQL {version}, database {db} as role {user}: every privilege the mirror needs"
            ))
        } else {
            Err(missing)
        }
    }

    fn s(&self) -> String {
        ident(&self.schema)
    }

    /// Creates what is missing, in one transaction under an advisory lock, so that two
    /// kqd starting together do not race; refuses a schema newer than this kqd's.
    async fn migrate(&mut self) -> Result<(), MirrorError> {
        let s = self.s();
        let tx = self.client.transaction().await.map_err(MirrorError::pg)?;
        tx.batch_execute(&format!(
            "SET LOCAL client_min_messages = warning;
             SELECT pg_advisory_xact_lock(hashtext('kq-mirror-schema'));
             CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.mirror_meta (key text PRIMARY KEY, value text NOT NULL);"
        ))
        .await
        .map_err(MirrorError::pg)?;
        let found = simple_rows(
            &tx,
            &format!("SELECT value FROM {s}.mirror_meta WHERE key = 'schema_version'"),
        )
        .await?;
        if let Some(v) = found.first().and_then(|r| r[0].as_deref()) {
            let v: i64 = v.parse().unwrap_or(i64::MAX);
            if v > MIRROR_SCHEMA_VERSION {
                return Err(MirrorError::Refused(format!(
                    "the mirror schema {} in the database has version {v}, newer than this kqd writes ({MIRROR_SCHEMA_VERSION}); upgrade kqd",
                    self.schema
                )));
            }
        }
        let mut ddl = String::new();
        for m in tables::all() {
            ddl.push_str(&tables::ddl(m, &self.schema));
        }
        if let Some(role) = &self.read_role {
            // Idempotent, and covering what a later kqd adds to the schema.
            let r = ident(role);
            ddl.push_str(&format!(
                "GRANT USAGE ON SCHEMA {s} TO {r};
                 GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r};
                 ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT ON TABLES TO {r};\n"
            ));
        }
        // The same DDL as last time changes nothing: skip it, so that a reconnect takes no
        // table locks.
        // Every kqd since the claim's lease adds its columns; `ADD COLUMN IF NOT EXISTS`
        // brings a schema made before them up to date.
        let instances = format!(
            "CREATE TABLE IF NOT EXISTS {s}.mirror_instances (
               instance text PRIMARY KEY,
               changes_seq bigint NOT NULL DEFAULT 0,
               host text, kqd_version text,
               applied_at timestamptz);
             ALTER TABLE {s}.mirror_instances ADD COLUMN IF NOT EXISTS holder text;
             ALTER TABLE {s}.mirror_instances ADD COLUMN IF NOT EXISTS held_until timestamptz;
             COMMENT ON TABLE {s}.mirror_instances IS 'One row per kqd instance mirroring into this schema: how far its changes are, when it last wrote, and which kqd holds it until when.';\n"
        );
        let digest = format!("{:016x}", super::duck::fnv(&[&instances, &ddl]));
        let stored = simple_rows(
            &tx,
            &format!("SELECT value FROM {s}.mirror_meta WHERE key = 'ddl_digest'"),
        )
        .await?;
        if stored.first().and_then(|r| r[0].as_deref()) == Some(digest.as_str()) {
            return tx.commit().await.map_err(MirrorError::pg);
        }
        let mut head = instances;
        head.push_str(&format!(
            "INSERT INTO {s}.mirror_meta VALUES ('schema_version', '{MIRROR_SCHEMA_VERSION}'), ('ddl_digest', '{digest}')
               ON CONFLICT (key) DO UPDATE SET value = excluded.value;\n"
        ));
        head.push_str(&ddl);
        tx.batch_execute(&head).await.map_err(MirrorError::pg)?;
        tx.commit().await.map_err(MirrorError::pg)
    }

    /// One kqd per instance id: a second one would delete the first one's rows as stale.
    /// The claim is a lease in the instance's `mirror_instances` row, taken when it is free,
    /// lapsed, or this kqd's already; a session advisory lock would stay with a pooled
    /// server connection, for whichever client it serves next.
    async fn claim(&mut self) -> Result<(), MirrorError> {
        let (s, i, h) = (self.s(), literal(&self.instance), literal(&self.holder));
        let host = literal(&hostname());
        let tx = self.client.transaction().await.map_err(MirrorError::pg)?;
        tx.batch_execute(&format!(
            "INSERT INTO {s}.mirror_instances (instance) VALUES ({i}) ON CONFLICT (instance) DO NOTHING"
        ))
        .await
        .map_err(MirrorError::pg)?;
        let taken = simple_rows(
            &tx,
            &format!(
                "UPDATE {s}.mirror_instances SET holder = {h}, held_until = now() + {lease}, host = {host}
                  WHERE instance = {i} AND (holder IS NULL OR holder = {h} OR held_until < now())
                  RETURNING 1",
                lease = lease_sql()
            ),
        )
        .await?;
        if taken.is_empty() {
            let by = simple_rows(
                &tx,
                &format!(
                    "SELECT coalesce(host, 'an unknown host'), to_char(held_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                       FROM {s}.mirror_instances WHERE instance = {i}"
                ),
            )
            .await?;
            let at = |n: usize| by.first().and_then(|r| r[n].clone()).unwrap_or_default();
            return Err(taken_by(&self.instance, &self.schema, &at(0), &at(1)));
        }
        tx.commit().await.map_err(MirrorError::pg)?;
        self.renewed = Instant::now();
        Ok(())
    }

    /// The statement that renews the claim, returning a row only if this kqd still holds it.
    fn renew_sql(&self) -> String {
        format!(
            "UPDATE {}.mirror_instances SET held_until = now() + {}
              WHERE instance = {} AND holder = {} RETURNING 1",
            self.s(),
            lease_sql(),
            literal(&self.instance),
            literal(&self.holder)
        )
    }

    /// Renews the claim when a third of the lease has gone by without a transaction that
    /// applied rows (which renew it themselves).
    pub async fn keep_claim(&mut self) -> Result<(), MirrorError> {
        if self.renewed.elapsed() < LEASE / 3 {
            return Ok(());
        }
        if simple_rows(&self.client, &self.renew_sql())
            .await?
            .is_empty()
        {
            return Err(lost(&self.instance, &self.schema));
        }
        self.renewed = Instant::now();
        Ok(())
    }

    /// Gives the claim up, so that a kqd elsewhere configured as this instance may take it
    /// without waiting for the lease to lapse. Best effort: a claim not given up lapses.
    pub async fn release(&self) {
        let sql = format!(
            "UPDATE {}.mirror_instances SET holder = NULL, held_until = NULL
              WHERE instance = {} AND holder = {}",
            self.s(),
            literal(&self.instance),
            literal(&self.holder)
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.batch_execute(&sql)).await;
    }

    /// The highest change number PostgreSQL has from this instance.
    pub async fn changes_seq(&self) -> Result<i64, MirrorError> {
        let rows = simple_rows(
            &self.client,
            &format!(
                "SELECT changes_seq FROM {}.mirror_instances WHERE instance = {}",
                self.s(),
                literal(&self.instance)
            ),
        )
        .await?;
        Ok(rows
            .first()
            .and_then(|r| r[0].as_deref())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// The contexts a table has rows of from this instance.
    pub async fn contexts(&self, m: &Mirrored) -> Result<Vec<String>, MirrorError> {
        let rows = simple_rows(
            &self.client,
            &format!(
                "SELECT DISTINCT context FROM {}.{} WHERE instance = {}",
                self.s(),
                ident(m.name()),
                literal(&self.instance)
            ),
        )
        .await?;
        Ok(rows.into_iter().filter_map(|mut r| r[0].take()).collect())
    }

    /// The (key, version) digests of a part, as [`super::duck::Duck::versions`] has them.
    pub async fn versions(&self, m: &Mirrored, context: &str) -> Result<Versions, MirrorError> {
        let from = format!("{}.{}", self.s(), ident(m.name()));
        let filter = format!(
            "AND instance = {} AND context = {}",
            literal(&self.instance),
            literal(context)
        );
        let mut v = Versions::new();
        for row in simple_rows(&self.client, &versions_sql(m, &from, &filter)).await? {
            let refs: Vec<Option<&str>> = row.iter().map(|s| s.as_deref()).collect();
            add_version(&mut v, &refs);
        }
        Ok(v)
    }

    /// Removes every changes row of this instance (DuckDB's numbering started again, from a
    /// fresh database file).
    pub async fn reset_changes(&mut self) -> Result<(), MirrorError> {
        let s = self.s();
        let i = literal(&self.instance);
        self.client
            .batch_execute(&format!(
                "BEGIN;
                 DELETE FROM {s}.changes WHERE instance = {i};
                 UPDATE {s}.mirror_instances SET changes_seq = 0 WHERE instance = {i};
                 COMMIT;"
            ))
            .await
            .map_err(MirrorError::pg)
    }

    /// Applies table writes in one transaction, with the instance's progress row (and its
    /// changes number, `changes_seq`, when given).
    pub async fn apply(
        &mut self,
        writes: &[TableWrite],
        cluster_ids: &HashMap<String, Option<String>>,
        changes_seq: Option<i64>,
    ) -> Result<Applied, MirrorError> {
        let s = self.s();
        let i = literal(&self.instance);
        let mut applied = Applied::default();
        let renew = self.renew_sql();
        let tx = self.client.transaction().await.map_err(MirrorError::pg)?;
        // First, so that a kqd that lost its claim writes nothing, and two kqd claiming one
        // instance wait for each other here (the row's lock) instead of writing together.
        if simple_rows(&tx, &renew).await?.is_empty() {
            return Err(lost(&self.instance, &self.schema));
        }
        if self.lz4 {
            // SET LOCAL, not a session setting: through PgBouncer in transaction mode the
            // next transaction may run on another server connection.
            tx.batch_execute("SET LOCAL default_toast_compression = lz4")
                .await
                .map_err(MirrorError::pg)?;
        }
        for (n, w) in writes.iter().enumerate() {
            let m = w.table;
            let t = format!("{s}.{}", ident(m.name()));
            let stage = format!("kq_s{n}");
            let staged = m.staged_columns();
            let col_list = staged
                .iter()
                .map(|(c, _)| ident(c))
                .collect::<Vec<_>>()
                .join(", ");
            tx.batch_execute(&format!(
                "CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {col_list} FROM {t} WITH NO DATA;"
            ))
            .await
            .map_err(MirrorError::pg)?;
            // The rows.
            let copy_started = std::time::Instant::now();
            {
                let types: Vec<_> = staged.iter().map(|(_, ty)| copy_type(ty)).collect();
                let sink = tx
                    .copy_in(&format!(
                        "COPY {stage} ({col_list}) FROM STDIN (FORMAT binary)"
                    ))
                    .await
                    .map_err(MirrorError::pg)?;
                let writer = BinaryCopyInWriter::new(sink, &types);
                pin_mut!(writer);
                let catalog_types: Vec<&str> = m.table.columns.iter().map(|c| c.sql_type).collect();
                let ctx_at = m.position("context");
                let key_at: Vec<usize> = m.key.iter().filter_map(|k| m.position(k)).collect();
                // ON CONFLICT may not touch a row twice in one statement, so a key is
                // staged once (the first row of it wins) and the insert needs no sort.
                let mut staged_keys: HashSet<Vec<String>> = HashSet::new();
                for b in &w.batches {
                    let rows = Rows::new(b, &catalog_types)
                        .map_err(|e| MirrorError::Internal(format!("{}: {e}", m.name())))?;
                    for r in 0..rows.len {
                        let mut cells = rows.row(r, &mut applied.nul_replaced);
                        let key: Vec<String> = key_at.iter().map(|&i| cells[i].key()).collect();
                        if !staged_keys.insert(key) {
                            continue;
                        }
                        if m.adds_cluster_id {
                            let id = ctx_at
                                .and_then(|at| match &cells[at] {
                                    Cell::Text(c) => cluster_ids.get(c.as_ref()).cloned(),
                                    _ => None,
                                })
                                .flatten();
                            cells.insert(0, id.map_or(Cell::Null, |id| Cell::Text(id.into())));
                        }
                        let refs: Vec<&(dyn postgres_types::ToSql + Sync)> =
                            cells.iter().map(|c| c as _).collect();
                        writer
                            .as_mut()
                            .write(&refs)
                            .await
                            .map_err(MirrorError::pg)?;
                    }
                }
                applied.rows += writer.finish().await.map_err(MirrorError::pg)?;
            }
            let keys: Vec<String> = m.key.iter().map(|k| ident(k)).collect();
            // Rows of the instance whose key the stage lacks. NOT IN over the stage is a
            // hashed subplan whatever the planner guesses of the stage's size; NOT EXISTS
            // became a nested loop (1.2 s instead of 7 ms for 5,000 rows).
            let key_present = keys
                .iter()
                .map(|k| format!("{k} IS NOT NULL"))
                .collect::<Vec<_>>()
                .join(" AND ");
            let t_keys: Vec<String> = keys.iter().map(|k| format!("t.{k}")).collect();
            let unstaged = format!(
                "({}) NOT IN (SELECT {} FROM {stage} WHERE {key_present})",
                t_keys.join(", "),
                keys.join(", ")
            );
            let mut sql = String::new();
            match &w.mode {
                Mode::Keys(owed) => {
                    let Shape::Keyed { unit, .. } = m.shape else {
                        unreachable!("keys are owed for keyed tables")
                    };
                    // One statement per context, its keys an array: PostgreSQL looks each up
                    // in the (instance, context, unit) index. Joined with a list of values,
                    // it scanned every row of the instance instead (46 ms for 1,000 keys
                    // over 100k objects, against 6 ms, to delete nothing while pods only
                    // change).
                    if !owed.is_empty() {
                        let delete = tx
                            .prepare(&format!(
                                "DELETE FROM {t} t WHERE t.instance = {i} AND t.context = $1
                               AND t.{} = ANY($2) AND {unstaged}",
                                ident(unit)
                            ))
                            .await
                            .map_err(MirrorError::pg)?;
                        let mut by_context: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
                        for (c, k) in owed {
                            by_context.entry(c).or_default().push(k);
                        }
                        for (c, keys) in by_context {
                            tx.execute(&delete, &[&c, &keys])
                                .await
                                .map_err(MirrorError::pg)?;
                        }
                    }
                }
                Mode::Whole => sql.push_str(&format!(
                    "DELETE FROM {t} t WHERE t.instance = {i} AND {unstaged};\n"
                )),
                Mode::Append { floor } => {
                    if let Some(f) = floor {
                        sql.push_str(&format!(
                            "DELETE FROM {t} WHERE instance = {i} AND seq < {f};\n"
                        ));
                    }
                }
            }
            let not_key: Vec<String> = staged
                .iter()
                .map(|(c, _)| *c)
                .filter(|c| !m.key.contains(c))
                .map(ident)
                .collect();
            let key_list = keys.join(", ");
            let on_conflict = if not_key.is_empty() || matches!(w.mode, Mode::Append { .. }) {
                "DO NOTHING".to_string()
            } else {
                let set: Vec<String> = not_key
                    .iter()
                    .map(|c| format!("{c} = excluded.{c}"))
                    .chain(["mirrored_at = excluded.mirrored_at".to_string()])
                    .collect();
                // A versioned row is what its resourceVersion says: comparing that and the
                // small columns skips a replayed row without reading back (and
                // decompressing) the stored JSON, which a changed row would rewrite anyway.
                let compared: Vec<String> = staged
                    .iter()
                    .filter(|(c, _)| !m.key.contains(c))
                    .filter(|(_, ty)| !(m.versioned() && *ty == "JSON"))
                    .map(|(c, _)| ident(c))
                    .collect();
                let old: Vec<String> = compared.iter().map(|c| format!("t.{c}")).collect();
                let new: Vec<String> = compared.iter().map(|c| format!("excluded.{c}")).collect();
                format!(
                    "DO UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})",
                    set.join(", "),
                    old.join(", "),
                    new.join(", ")
                )
            };
            sql.push_str(&format!(
                "INSERT INTO {t} AS t (instance, {col_list}, mirrored_at)
                 SELECT {i}, {col_list}, now() FROM {stage} WHERE {key_present}
                 ON CONFLICT (instance, {key_list}) {on_conflict};\n"
            ));
            let sql_started = std::time::Instant::now();
            tx.batch_execute(&sql).await.map_err(MirrorError::pg)?;
            tracing::debug!(
                table = m.name(),
                copy_ms = (sql_started - copy_started).as_millis() as u64,
                sql_ms = sql_started.elapsed().as_millis() as u64,
                "applied a table"
            );
        }
        let seq = changes_seq.map_or("0".to_string(), |s| s.to_string());
        let host = literal(&hostname());
        let version = literal(env!("CARGO_PKG_VERSION"));
        tx.batch_execute(&format!(
            "INSERT INTO {s}.mirror_instances AS m (instance, changes_seq, host, kqd_version, applied_at)
             VALUES ({i}, {seq}, {host}, {version}, now())
             ON CONFLICT (instance) DO UPDATE SET
               changes_seq = GREATEST(m.changes_seq, excluded.changes_seq),
               host = excluded.host, kqd_version = excluded.kqd_version, applied_at = now();"
        ))
        .await
        .map_err(MirrorError::pg)?;
        tx.commit().await.map_err(MirrorError::pg)?;
        self.renewed = Instant::now();
        Ok(applied)
    }
}

/// The refusal of a claim `host` holds until `until`.
fn taken_by(instance: &str, schema: &str, host: &str, until: &str) -> MirrorError {
    MirrorError::Refused(format!(
        "another kqd is mirroring as instance {instance:?} into {schema} (on {host}, its claim runs until {until} unless renewed); give this one its own mirror_instance"
    ))
}

/// The refusal of a claim this kqd held and lost.
fn lost(instance: &str, schema: &str) -> MirrorError {
    MirrorError::Refused(format!(
        "another kqd is mirroring as instance {instance:?} into {schema}: it took the instance after this kqd's claim lapsed; give this one its own mirror_instance"
    ))
}

/// [`LEASE`] as an SQL interval.
fn lease_sql() -> String {
    format!("interval '{} seconds'", LEASE.as_secs())
}

/// The machine's name, for `mirror_instances.host`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Runs a simple query and returns its rows as text.
pub async fn simple_rows(
    client: &impl tokio_postgres::GenericClient,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, MirrorError> {
    let messages = client.simple_query(sql).await.map_err(MirrorError::pg)?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}
