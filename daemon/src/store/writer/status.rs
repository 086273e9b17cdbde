//! The `contexts` and `resources` rows: kept in the writer's memory, rewritten when they
//! change.

use super::*;

/// How long a status row whose counts moved may wait while the writer is behind.
const LATE_AT_MOST: std::time::Duration = std::time::Duration::from_secs(1);

/// Status rows whose only news is their counts and last-change times, held back while the
/// writer is behind. In an initial sync every batch moves the counts of a few resources and
/// contexts, and rewriting them cost about 12 ms a batch (a cached `UPDATE` a row, ~1.3 ms
/// each): a tenth of the writer's time once batches close at `batch_bytes`. Held back, they
/// are rewritten at most every [`LATE_AT_MOST`] then, and in the first batch that finds no
/// ops waiting, so at rest the rows are as current as the tables. A state, an error or a
/// kubeconfig fact is never held back.
#[derive(Debug, Default)]
pub(super) struct Late {
    contexts: HashSet<String>,
    resources: HashSet<ResKey>,
    /// When the oldest row held back was first held.
    since: Option<Instant>,
}

impl Late {
    /// Takes the batch's counted rows and leaves in its dirty sets what to rewrite now:
    /// every row held back unless the writer is `behind` and the oldest has waited less
    /// than [`LATE_AT_MOST`].
    pub(super) fn settle(&mut self, b: &mut Batch, behind: bool, now: Instant) {
        self.contexts.extend(b.counted.drain());
        self.resources.extend(b.counted_res.drain());
        if self.contexts.is_empty() && self.resources.is_empty() {
            return;
        }
        let since = *self.since.get_or_insert(now);
        if behind && now.saturating_duration_since(since) < LATE_AT_MOST {
            // Rows the batch rewrites anyway are current once it commits.
            self.contexts.retain(|c| !b.dirty.contains(c));
            self.resources.retain(|r| !b.dirty_res.contains(r));
            if self.contexts.is_empty() && self.resources.is_empty() {
                self.since = None;
            }
            return;
        }
        b.dirty.extend(self.contexts.drain());
        b.dirty_res.extend(self.resources.drain());
        self.since = None;
    }
}

impl ResourceRow {
    /// The row's values in the order of [`RESOURCES`]' columns: the key last.
    fn values(&self, (ctx, group, resource): &ResKey) -> [Value; 8] {
        [
            Value::Text(self.state.as_str().to_string()),
            self.error.clone().map_or(Value::Null, Value::Text),
            Value::BigInt(self.object_count),
            ts(self.last_event_at),
            ts(self.synced_at),
            Value::Text(ctx.clone()),
            Value::Text(group.clone()),
            Value::Text(resource.clone()),
        ]
    }
}

impl ContextRow {
    /// The row's values in the order of [`CONTEXTS`]' columns, the key (name) last. `hold`,
    /// the cause of held writes, stands in for the context's own error.
    fn values(&self, name: &str, hold: Option<&String>) -> [Value; 15] {
        let info = &self.info;
        let text = |s: Option<&String>| s.map_or(Value::Null, |s| Value::Text(s.clone()));
        [
            Value::Text(info.cluster.clone()),
            Value::Text(info.server.clone()),
            Value::Text(info.user.clone()),
            text(info.namespace.as_ref()),
            Value::Text(info.source_file.clone()),
            Value::Text(self.state.as_str().to_string()),
            text(hold.or(self.error.as_ref())),
            ts(self.last_event_at),
            ts(self.synced_at),
            text(self.server_version.as_ref()),
            Value::BigInt(self.object_count),
            ts(Some(self.updated_at)),
            text(self.cluster_id.as_ref()),
            text(self.config_error.as_ref()),
            Value::Text(name.to_string()),
        ]
    }
}

/// Facts about a context that come from the kubeconfig.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContextInfo {
    pub name: String,
    pub cluster: String,
    pub server: String,
    pub user: String,
    pub namespace: Option<String>,
    pub source_file: String,
}

/// A change of a context's connection state.
#[derive(Debug, Clone)]
pub struct ContextState {
    pub name: String,
    pub state: crate::store::ContextPhase,
    pub error: Option<String>,
    pub server_version: Option<String>,
    /// The initial list of every watched kind completed.
    pub synced: bool,
}

impl Writer {
    /// Rewrites the `resources` rows of these keys (a key the writer no longer holds loses
    /// its row); see [`StatusTable::write`].
    pub(super) fn write_resources<'k>(
        &mut self,
        keys: impl Iterator<Item = &'k ResKey>,
    ) -> Result<(), StoreError> {
        let mut keys = keys.peekable();
        if keys.peek().is_none() {
            return Ok(());
        }
        self.outbox.part("resources", None);
        let (held, gone): (Vec<&ResKey>, Vec<&ResKey>) =
            keys.partition(|k| self.resources.contains_key(*k));
        for (ctx, group, resource) in gone {
            self.conn
                .prepare_cached(
                    "DELETE FROM main.resources
                      WHERE context = ? AND api_group = ? AND resource = ?",
                )?
                .execute([ctx, group, resource])?;
        }
        let rows: Vec<[Value; 8]> = held
            .into_iter()
            .map(|key| self.resources[key].values(key))
            .collect();
        RESOURCES.write(&self.conn, &rows)
    }

    /// Writes the rows of these contexts; see [`StatusTable::write`]. While writes are
    /// held, the hold's cause stands in for a context's own error: it is why the context's
    /// rows are not current.
    pub(super) fn write_contexts<'n>(
        &mut self,
        names: impl Iterator<Item = &'n String>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut names = names.peekable();
        if names.peek().is_none() {
            return Ok(());
        }
        self.outbox.part("contexts", None);
        let hold = self.hold.as_ref().map(|h| h.cause.to_string());
        let mut rows = Vec::new();
        for name in names {
            let Some(row) = self.contexts.get_mut(name) else {
                continue;
            };
            row.updated_at = now;
            rows.push(row.values(name, hold.as_ref()));
        }
        CONTEXTS.write(&self.conn, &rows)
    }
}

/// From how many rows a status table is rewritten by two statements whatever their number
/// instead of by one cached statement a row. A statement costs about 1.3 ms however small,
/// most of it DuckDB binding and planning it anew, and a batch under a fleet's load
/// touches every context and the resources of its pods: ten contexts were 13 ms a batch.
const TOGETHER_FROM: usize = 3;

/// A status table the writer keeps in memory and rewrites in place: its columns in the
/// order of each row's values, the key's columns last.
struct StatusTable {
    table: &'static str,
    columns: &'static [&'static str],
    /// How many of the last columns make the key.
    key: usize,
}

const CONTEXTS: StatusTable = StatusTable {
    table: "contexts",
    columns: &[
        "cluster",
        "server",
        "user",
        "namespace",
        "source_file",
        "state",
        "error",
        "last_event_at",
        "synced_at",
        "server_version",
        "object_count",
        "updated_at",
        "cluster_id",
        "config_error",
        "name",
    ],
    key: 1,
};

const RESOURCES: StatusTable = StatusTable {
    table: "resources",
    columns: &[
        "state",
        "error",
        "object_count",
        "last_event_at",
        "synced_at",
        "context",
        "api_group",
        "resource",
    ],
    key: 3,
};

impl StatusTable {
    fn set(&self) -> impl Iterator<Item = &'static str> {
        self.columns[..self.columns.len() - self.key]
            .iter()
            .copied()
    }

    fn keys(&self) -> impl Iterator<Item = &'static str> {
        self.columns[self.columns.len() - self.key..]
            .iter()
            .copied()
    }

    fn column_list(&self) -> String {
        let quoted: Vec<String> = self.columns.iter().map(|c| format!("\"{c}\"")).collect();
        quoted.join(", ")
    }

    /// `(?, …), (?, …)`: `rows` rows of parameters.
    fn values_list(&self, rows: usize) -> String {
        let row = format!("({})", vec!["?"; self.columns.len()].join(", "));
        vec![row; rows].join(", ")
    }

    /// Writes `rows`, each holding the table's columns in order: a row already there is
    /// rewritten in place, a new one inserted. A few rows are one cached `UPDATE` each, or
    /// an `INSERT` the first time; more are one `UPDATE … FROM (VALUES …)` and one
    /// `INSERT … SELECT` of the rows not there yet.
    fn write<const N: usize>(
        &self,
        conn: &Connection,
        rows: &[[Value; N]],
    ) -> Result<(), StoreError> {
        debug_assert_eq!(N, self.columns.len());
        if rows.is_empty() {
            return Ok(());
        }
        let t = self.table;
        let set: Vec<String> = self.set().map(|c| format!("\"{c}\" = ?")).collect();
        if rows.len() < TOGETHER_FROM {
            let keyed: Vec<String> = self.keys().map(|c| format!("\"{c}\" = ?")).collect();
            let update = format!(
                "UPDATE main.{t} SET {} WHERE {}",
                set.join(", "),
                keyed.join(" AND ")
            );
            let insert = format!(
                "INSERT INTO main.{t} ({}) VALUES {}",
                self.column_list(),
                self.values_list(1)
            );
            for values in rows {
                let updated = conn
                    .prepare_cached(&update)?
                    .execute(params_from_iter(values))?;
                if updated == 0 {
                    conn.prepare_cached(&insert)?
                        .execute(params_from_iter(values))?;
                }
            }
            return Ok(());
        }
        let v = format!(
            "(VALUES {}) AS v({})",
            self.values_list(rows.len()),
            self.column_list()
        );
        let matched: Vec<String> = self
            .keys()
            .map(|c| format!("t.\"{c}\" = v.\"{c}\""))
            .collect();
        let matched = matched.join(" AND ");
        let set: Vec<String> = self.set().map(|c| format!("\"{c}\" = v.\"{c}\"")).collect();
        // Not cached: the text differs with the number of rows, and DuckDB binds and plans
        // a cached statement anew at every execution anyway.
        conn.execute(
            &format!(
                "UPDATE main.{t} AS t SET {} FROM {v} WHERE {matched}",
                set.join(", ")
            ),
            params_from_iter(rows.iter().flatten()),
        )?;
        conn.execute(
            &format!(
                "INSERT INTO main.{t} ({cols}) SELECT {cols} FROM {v}
                  WHERE NOT EXISTS (SELECT 1 FROM main.{t} AS t WHERE {matched})",
                cols = self.column_list()
            ),
            params_from_iter(rows.iter().flatten()),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{count, ctx, fixture, running};
    use super::*;

    /// A `resources` row as a reader sees it: (resource, state, error, object_count).
    type ResourceSeen = (String, String, Option<String>, i64);

    fn resources(conn: &Connection) -> Vec<ResourceSeen> {
        let mut stmt = conn
            .prepare(
                "SELECT resource, state, error, object_count FROM resources
                  WHERE context = 'test' ORDER BY resource",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn every_resource_a_batch_touched_has_one_current_row() {
        let mut f = fixture(StoreOptions::default());
        let state = |resource: &str, state, error: Option<&str>| Op::ResourceState {
            context: ctx(),
            group: String::new(),
            resource: resource.into(),
            state,
            error: error.map(str::to_string),
        };
        f.writer.write_batch(vec![
            state("pods", crate::store::ResourcePhase::Syncing, None),
            state(
                "services",
                crate::store::ResourcePhase::Forbidden,
                Some("forbidden"),
            ),
            running("a"),
        ]);
        assert_eq!(
            resources(&f.other),
            vec![
                ("pods".into(), "syncing".into(), None, 1),
                (
                    "services".into(),
                    "forbidden".into(),
                    Some("forbidden".into()),
                    0
                ),
            ]
        );
        // Later batches rewrite the rows they touch in place: one row per resource, current.
        f.writer.write_batch(vec![
            running("b"),
            running("c"),
            state("pods", crate::store::ResourcePhase::Ready, None),
        ]);
        f.writer.write_batch(vec![state(
            "services",
            crate::store::ResourcePhase::Ready,
            None,
        )]);
        assert_eq!(
            resources(&f.other),
            vec![
                ("pods".into(), "ready".into(), None, 3),
                ("services".into(), "ready".into(), None, 0),
            ]
        );
    }

    #[test]
    fn a_batch_of_many_resources_leaves_one_current_row_each() {
        use crate::store::ResourcePhase;
        let mut f = fixture(StoreOptions::default());
        let states = |names: &[&str], state: ResourcePhase, error: Option<&str>| -> Vec<Op> {
            names
                .iter()
                .map(|r| Op::ResourceState {
                    context: ctx(),
                    group: "example.com".into(),
                    resource: (*r).into(),
                    state,
                    error: error.map(str::to_string),
                })
                .collect()
        };
        let rows = |conn: &Connection| -> Vec<(String, String, Option<String>)> {
            let mut stmt = conn
                .prepare(
                    "SELECT resource, state, error FROM resources
                      WHERE context = 'test' AND api_group = 'example.com' ORDER BY resource",
                )
                .unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let expect = |names: &[&str], state: &str, error: Option<&str>| {
            names
                .iter()
                .map(|r| (r.to_string(), state.to_string(), error.map(str::to_string)))
                .collect::<Vec<_>>()
        };
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        assert!(names.len() >= TOGETHER_FROM);
        // New rows are inserted, then rewritten in place.
        f.writer
            .write_batch(states(&names[..5], ResourcePhase::Syncing, None));
        assert_eq!(rows(&f.other), expect(&names[..5], "syncing", None));
        // Rows already there and new ones in one batch: each has one current row.
        f.writer
            .write_batch(states(&names, ResourcePhase::Forbidden, Some("forbidden")));
        assert_eq!(
            rows(&f.other),
            expect(&names, "forbidden", Some("forbidden"))
        );
        f.writer
            .write_batch(states(&names, ResourcePhase::Ready, None));
        assert_eq!(rows(&f.other), expect(&names, "ready", None));
    }

    #[test]
    fn a_batch_of_many_contexts_leaves_one_current_row_each() {
        use crate::store::ContextPhase;
        let mut f = fixture(StoreOptions::default());
        let names = ["c1", "c2", "c3", "c4"];
        assert!(names.len() >= TOGETHER_FROM);
        let info = |name: &str, namespace: Option<&str>| {
            Op::ContextInfo(ContextInfo {
                name: name.into(),
                cluster: format!("cluster-{name}"),
                server: format!("https://{name}.example:6443"),
                user: "me".into(),
                namespace: namespace.map(str::to_string),
                source_file: "/home/me/.kube/config".into(),
            })
        };
        let state = |name: &str, phase, error: Option<&str>| {
            Op::ContextState(ContextState {
                name: name.into(),
                state: phase,
                error: error.map(str::to_string),
                server_version: Some("v1.33.0".into()),
                synced: false,
            })
        };
        type Seen = (
            String,
            String,
            Option<String>,
            String,
            Option<String>,
            Option<String>,
            bool,
        );
        let rows = |conn: &Connection| -> Vec<Seen> {
            let mut stmt = conn
                .prepare(
                    "SELECT name, cluster, namespace, state, error, server_version,
                            updated_at IS NOT NULL
                       FROM contexts ORDER BY name",
                )
                .unwrap();
            stmt.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
        };
        let seen = |name: &str, namespace: Option<&str>, state: &str, error: Option<&str>| {
            (
                name.to_string(),
                format!("cluster-{name}"),
                namespace.map(str::to_string),
                state.to_string(),
                error.map(str::to_string),
                Some("v1.33.0".to_string()),
                true,
            )
        };
        // Three new contexts in one batch, one with a namespace and two without.
        f.writer.write_batch(vec![
            info("c1", Some("team-a")),
            info("c2", None),
            info("c3", None),
            state("c1", ContextPhase::Connecting, None),
            state("c2", ContextPhase::Connecting, None),
            state("c3", ContextPhase::Error, Some("unreachable: no route")),
        ]);
        assert_eq!(
            rows(&f.other),
            vec![
                seen("c1", Some("team-a"), "connecting", None),
                seen("c2", None, "connecting", None),
                seen("c3", None, "error", Some("unreachable: no route")),
            ]
        );
        // Three rows rewritten in place beside a new one: still one row each, current.
        f.writer.write_batch(vec![
            info("c4", None),
            state("c4", ContextPhase::Connecting, None),
            state("c1", ContextPhase::Ready, None),
            state("c2", ContextPhase::Ready, None),
            state("c3", ContextPhase::Ready, None),
        ]);
        assert_eq!(
            rows(&f.other),
            vec![
                seen("c1", Some("team-a"), "ready", None),
                seen("c2", None, "ready", None),
                seen("c3", None, "ready", None),
                seen("c4", None, "connecting", None),
            ]
        );
        // Every row carries its own values, not another's.
        let servers = count(
            &f.other,
            "SELECT count(*) FROM contexts WHERE server = 'https://' || name || '.example:6443'",
        );
        assert_eq!(servers, 4);
    }

    #[test]
    fn counts_wait_while_the_writer_is_behind_and_states_never_do() {
        use crate::store::{ContextPhase, ResourcePhase};
        let mut f = fixture(StoreOptions::default());
        let state = |resource: &str, state| Op::ResourceState {
            context: ctx(),
            group: String::new(),
            resource: resource.into(),
            state,
            error: None,
        };
        let counts = |conn: &Connection| -> (i64, Vec<ResourceSeen>) {
            let context = count(
                conn,
                "SELECT object_count FROM contexts WHERE name = 'test'",
            );
            (context, resources(conn))
        };
        let pods = |state: &str, n| ("pods".to_string(), state.to_string(), None, n);
        f.writer.write_batch(vec![
            Op::ContextState(ContextState {
                name: "test".into(),
                state: ContextPhase::Ready,
                error: None,
                server_version: None,
                synced: false,
            }),
            state("pods", ResourcePhase::Syncing),
            running("a"),
        ]);
        assert_eq!(counts(&f.other), (1, vec![pods("syncing", 1)]));

        // Behind: the pod is written, the counts wait.
        f.writer.behind = true;
        f.writer.write_batch(vec![running("b")]);
        assert_eq!(count(&f.other, "SELECT count(*) FROM pods"), 2);
        assert_eq!(counts(&f.other), (1, vec![pods("syncing", 1)]));
        // A state does not wait, and its row carries the count as it is.
        f.writer
            .write_batch(vec![running("c"), state("pods", ResourcePhase::Ready)]);
        assert_eq!(counts(&f.other).1, vec![pods("ready", 3)]);
        // Counts that waited their longest are written though the writer is still behind.
        f.writer.write_batch(vec![running("d")]);
        assert_eq!(counts(&f.other), (1, vec![pods("ready", 3)]));
        f.writer.late.since = Some(Instant::now() - LATE_AT_MOST);
        f.writer.write_batch(vec![running("e")]);
        assert_eq!(counts(&f.other), (5, vec![pods("ready", 5)]));
        // The first batch that finds no ops waiting writes whatever waited.
        f.writer.write_batch(vec![running("f")]);
        assert_eq!(counts(&f.other).0, 5);
        f.writer.behind = false;
        f.writer.write_batch(vec![running("g")]);
        assert_eq!(counts(&f.other), (7, vec![pods("ready", 7)]));
    }

    #[test]
    fn a_context_row_says_its_state_and_the_holds_cause_while_writes_fail() {
        let mut f = fixture(StoreOptions::default());
        let state = |phase, error: Option<&str>| {
            Op::ContextState(ContextState {
                name: "test".into(),
                state: phase,
                error: error.map(str::to_string),
                server_version: Some("v1.33.0".into()),
                synced: true,
            })
        };
        f.writer.write_batch(vec![
            state(
                crate::store::ContextPhase::Error,
                Some("unreachable: no route"),
            ),
            running("a"),
        ]);
        let row = |conn: &Connection| -> (String, Option<String>, i64) {
            conn.query_row(
                "SELECT state, error, object_count FROM contexts WHERE name = 'test'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
        };
        assert_eq!(
            row(&f.other),
            ("error".into(), Some("unreachable: no route".into()), 1)
        );
        f.writer
            .write_batch(vec![state(crate::store::ContextPhase::Ready, None)]);
        assert_eq!(row(&f.other), ("ready".into(), None, 1));
        // While a hold lasts, the status rows name its cause in place of the context's own.
        f.writer.hold = Some(Hold::after(
            None,
            WriteFailure::DiskFull {
                path: "/data/kq.duckdb.wal".into(),
            },
        ));
        f.writer.write_status().unwrap();
        assert_eq!(
            row(&f.other).1.as_deref(),
            Some("disk full: could not write /data/kq.duckdb.wal")
        );
        assert_eq!(count(&f.other, "SELECT count(*) FROM contexts"), 1);
    }
}
