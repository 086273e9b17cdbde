//! The `contexts` and `resources` rows: kept in the writer's memory, rewritten when they
//! change.

use super::*;

/// From how many `resources` rows a batch rewrites them through the staging table: its
/// statements cost about as much as six or seven rows written one statement each.
const STAGED_FROM: usize = 8;

/// How often, at most, the rows whose only news is their counts are rewritten.
const LATE_AT_MOST: std::time::Duration = std::time::Duration::from_secs(1);

/// Status rows whose only news is their counts and last-change times, rewritten at most
/// every [`LATE_AT_MOST`]. Every batch moves the counts of the contexts and resources it
/// touched, and rewriting a row costs a cached `UPDATE` of 1.3–1.8 ms: under 1,000 pod
/// changes a second across ten contexts, ten `contexts` and ten `resources` rows took 36 of
/// a batch's 105 ms, and in an initial sync a tenth of the writer's time. A count that
/// moves after a quiet second is written with its batch, as before; one that moves again
/// within the second waits for the first batch after it, or, with none coming, for a write
/// of its own when the second is up. So the rows are never more than a second behind the
/// tables. A state, an error or a kubeconfig fact never waits.
#[derive(Debug, Default)]
pub(super) struct Late {
    contexts: HashSet<String>,
    resources: HashSet<ResKey>,
    /// When counts were last written.
    written_at: Option<Instant>,
}

impl Late {
    /// Takes the batch's counted rows and leaves in its dirty sets what to rewrite now:
    /// every row held back once [`LATE_AT_MOST`] has passed since counts were last written.
    pub(super) fn settle(&mut self, b: &mut Batch, now: Instant) {
        self.contexts.extend(b.counted.drain());
        self.resources.extend(b.counted_res.drain());
        // Rows the batch rewrites anyway are current once it commits.
        self.contexts.retain(|c| !b.dirty.contains(c));
        self.resources.retain(|r| !b.dirty_res.contains(r));
        if self.contexts.is_empty() && self.resources.is_empty() {
            return;
        }
        if self.written_at.is_some_and(|at| now < at + LATE_AT_MOST) {
            return;
        }
        b.dirty.extend(self.contexts.drain());
        b.dirty_res.extend(self.resources.drain());
        self.written_at = Some(now);
    }

    /// When the rows held back are to be written, if any are.
    pub(super) fn due(&self) -> Option<Instant> {
        if self.contexts.is_empty() && self.resources.is_empty() {
            return None;
        }
        Some(
            self.written_at
                .map_or_else(Instant::now, |at| at + LATE_AT_MOST),
        )
    }

    /// Lets the next batch write every row held back (the writer is stopping).
    pub(super) fn expire(&mut self) {
        self.written_at = None;
    }
}

impl ResourceRow {
    /// The row's values in the order of `kq_stage.resources` and of the statements that
    /// write `main.resources` one row at a time: the key last.
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
    /// its row). A few rows are one cached `UPDATE` each, or an `INSERT` the first time;
    /// more go through `kq_stage.resources` in one append and three statements whatever
    /// their number: a row's own statement costs about 1.3 ms, and in an initial sync,
    /// where every resource of every context turns `syncing` and then `ready`, batches
    /// rewrite tens of rows.
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
        if held.len() >= STAGED_FROM {
            return self.write_resources_staged(&held);
        }
        for key in held {
            // One list of values serves both statements (and the staged append): the key
            // comes last in each.
            let values = self.resources[key].values(key);
            let updated = self
                .conn
                .prepare_cached(
                    "UPDATE main.resources
                        SET state = ?, error = ?, object_count = ?, last_event_at = ?, synced_at = ?
                      WHERE context = ? AND api_group = ? AND resource = ?",
                )?
                .execute(params_from_iter(&values))?;
            if updated == 0 {
                self.conn
                    .prepare_cached(
                        "INSERT INTO main.resources
                           (state, error, object_count, last_event_at, synced_at, context, api_group, resource)
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    )?
                    .execute(params_from_iter(&values))?;
            }
        }
        Ok(())
    }

    /// The staged form of [`Writer::write_resources`]: the rows are appended to
    /// `kq_stage.resources` (its columns in the order of [`ResourceRow::values`]), which is
    /// emptied again before the transaction ends.
    fn write_resources_staged(&mut self, keys: &[&ResKey]) -> Result<(), StoreError> {
        {
            let mut app = self.conn.appender_to_db("resources", "kq_stage")?;
            for key in keys.iter().copied() {
                app.append_row(duckdb::appender_params_from_iter(
                    self.resources[key].values(key),
                ))?;
            }
            app.flush()?;
        }
        for sql in [
            "UPDATE main.resources AS r
                SET state = s.state, error = s.error, object_count = s.object_count,
                    last_event_at = s.last_event_at, synced_at = s.synced_at
               FROM kq_stage.resources AS s
              WHERE r.context = s.context AND r.api_group = s.api_group AND r.resource = s.resource",
            "INSERT INTO main.resources
                    (context, api_group, resource, state, error, object_count, last_event_at, synced_at)
             SELECT context, api_group, resource, state, error, object_count, last_event_at, synced_at
               FROM kq_stage.resources AS s
              WHERE NOT EXISTS (SELECT 1 FROM main.resources AS r
                                 WHERE r.context = s.context AND r.api_group = s.api_group
                                   AND r.resource = s.resource)",
            "DELETE FROM kq_stage.resources",
        ] {
            self.conn.prepare_cached(sql)?.execute([])?;
        }
        Ok(())
    }

    /// Writes the rows of these contexts, each as one cached statement. While writes are
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
        for name in names {
            let Some(row) = self.contexts.get_mut(name) else {
                continue;
            };
            row.updated_at = now;
            let row = &*row;
            let info = &row.info;
            // As for resources, one list serves both statements, the key (name) last.
            let values = duckdb::params![
                info.cluster,
                info.server,
                info.user,
                info.namespace,
                info.source_file,
                row.state.as_str(),
                hold.as_ref().or(row.error.as_ref()),
                ts(row.last_event_at),
                ts(row.synced_at),
                row.server_version,
                row.object_count,
                ts(Some(row.updated_at)),
                row.cluster_id,
                row.config_error,
                name,
            ];
            let updated = self
                .conn
                .prepare_cached(
                    "UPDATE main.contexts
                        SET cluster = ?, server = ?, \"user\" = ?, namespace = ?, source_file = ?,
                            state = ?, error = ?, last_event_at = ?, synced_at = ?,
                            server_version = ?, object_count = ?, updated_at = ?, cluster_id = ?,
                            config_error = ?
                      WHERE name = ?",
                )?
                .execute(values)?;
            if updated == 0 {
                self.conn
                    .prepare_cached(
                        "INSERT INTO main.contexts (cluster, server, \"user\", namespace, source_file,
                            state, error, last_event_at, synced_at, server_version, object_count,
                            updated_at, cluster_id, config_error, name)
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    )?
                    .execute(values)?;
            }
        }
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
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        let states = |state: ResourcePhase, error: Option<&str>| -> Vec<Op> {
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
        let expect = |state: &str, error: Option<&str>| -> Vec<(String, String, Option<String>)> {
            names
                .iter()
                .map(|r| (r.to_string(), state.to_string(), error.map(str::to_string)))
                .collect()
        };
        assert!(names.len() >= STAGED_FROM);
        // New rows are inserted, then rewritten in place, and the staging table is left empty.
        f.writer.write_batch(states(ResourcePhase::Syncing, None));
        assert_eq!(rows(&f.other), expect("syncing", None));
        f.writer
            .write_batch(states(ResourcePhase::Forbidden, Some("forbidden")));
        assert_eq!(rows(&f.other), expect("forbidden", Some("forbidden")));
        f.writer.write_batch(states(ResourcePhase::Ready, None));
        assert_eq!(rows(&f.other), expect("ready", None));
        assert_eq!(
            count(&f.writer.conn, "SELECT count(*) FROM kq_stage.resources"),
            0
        );
    }

    #[test]
    fn counts_are_written_at_most_once_a_second_and_states_never_wait() {
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
        let a_second_ago = || Some(Instant::now() - LATE_AT_MOST);
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
        // Counts that move after a quiet second are written with their batch.
        f.writer.write_batch(vec![running("b")]);
        assert_eq!(counts(&f.other), (2, vec![pods("syncing", 2)]));
        // Within the second the pod is written and its counts wait.
        f.writer.write_batch(vec![running("c")]);
        assert_eq!(count(&f.other, "SELECT count(*) FROM pods"), 3);
        assert_eq!(counts(&f.other), (2, vec![pods("syncing", 2)]));
        // A state does not wait, and its row carries the count as it is.
        f.writer
            .write_batch(vec![running("d"), state("pods", ResourcePhase::Ready)]);
        assert_eq!(counts(&f.other), (2, vec![pods("ready", 4)]));
        // The first batch after the second is up writes every count that waited.
        f.writer.late.written_at = a_second_ago();
        f.writer.write_batch(vec![running("e")]);
        assert_eq!(counts(&f.other), (5, vec![pods("ready", 5)]));
        // With no batch coming, the writer writes them on its own once they are due.
        f.writer.write_batch(vec![running("f")]);
        assert_eq!(counts(&f.other), (5, vec![pods("ready", 5)]));
        f.writer.write_late_if_due();
        assert_eq!(counts(&f.other), (5, vec![pods("ready", 5)]));
        f.writer.late.written_at = a_second_ago();
        f.writer.write_late_if_due();
        assert_eq!(counts(&f.other), (6, vec![pods("ready", 6)]));
        // A stop writes what waits at once.
        f.writer.write_batch(vec![running("g")]);
        assert_eq!(counts(&f.other).0, 6);
        f.writer.late.expire();
        f.writer.write_late_if_due();
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
