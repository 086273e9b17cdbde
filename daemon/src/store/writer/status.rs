//! The `contexts` and `resources` rows: kept in the writer's memory, rewritten when they
//! change.

use super::*;

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
    /// its row). Each row is one cached `UPDATE`, or an `INSERT` the first time: these rows
    /// are rewritten in every batch, and planning a statement, or a delete and an insert,
    /// per row cost more than the batch's own objects while contexts synced.
    pub(super) fn write_resources<'k>(
        &mut self,
        keys: impl Iterator<Item = &'k ResKey>,
    ) -> Result<(), StoreError> {
        let mut keys = keys.peekable();
        if keys.peek().is_none() {
            return Ok(());
        }
        self.outbox.part("resources", None);
        for key @ (ctx, group, resource) in keys {
            let Some(row) = self.resources.get(key) else {
                self.conn
                    .prepare_cached(
                        "DELETE FROM main.resources
                          WHERE context = ? AND api_group = ? AND resource = ?",
                    )?
                    .execute([ctx, group, resource])?;
                continue;
            };
            // One list of values serves both statements: the key comes last in each.
            let values = duckdb::params![
                row.state.as_str(),
                row.error,
                row.object_count,
                ts(row.last_event_at),
                ts(row.synced_at),
                ctx,
                group,
                resource,
            ];
            let updated = self
                .conn
                .prepare_cached(
                    "UPDATE main.resources
                        SET state = ?, error = ?, object_count = ?, last_event_at = ?, synced_at = ?
                      WHERE context = ? AND api_group = ? AND resource = ?",
                )?
                .execute(values)?;
            if updated == 0 {
                self.conn
                    .prepare_cached(
                        "INSERT INTO main.resources
                           (state, error, object_count, last_event_at, synced_at, context, api_group, resource)
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    )?
                    .execute(values)?;
            }
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

    /// The `resources` rows as a reader sees them: (resource, state, error, object_count).
    fn resources(conn: &Connection) -> Vec<(String, String, Option<String>, i64)> {
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
