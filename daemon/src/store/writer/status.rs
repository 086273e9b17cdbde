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
    /// its row). One delete and one append serve the whole set: while contexts sync, every
    /// batch touches dozens of resources, and a statement per row cost more than the batch's
    /// own rows.
    pub(super) fn write_resources<'k>(
        &mut self,
        keys: impl Iterator<Item = &'k ResKey> + Clone,
    ) -> Result<(), StoreError> {
        if keys.clone().next().is_none() {
            return Ok(());
        }
        self.outbox.part("resources", None);
        {
            let mut app = self.conn.appender_to_db("resource_keys", "kq_stage")?;
            for (ctx, group, resource) in keys.clone() {
                app.append_row(duckdb::params![ctx, group, resource])?;
            }
            app.flush()?;
        }
        self.conn.execute_batch(
            "DELETE FROM main.resources USING kq_stage.resource_keys k
              WHERE main.resources.context = k.context AND main.resources.api_group = k.api_group
                AND main.resources.resource = k.resource;
             DELETE FROM kq_stage.resource_keys;",
        )?;
        let schema = self.schemas["resources"].clone();
        let rows = keys
            .filter_map(|key| self.resources.get(key).map(|row| (key, row)))
            .map(|((ctx, group, resource), row)| {
                by_name(&schema, "resources", |column| {
                    Some(match column {
                        "context" => Value::Text(ctx.clone()),
                        "api_group" => Value::Text(group.clone()),
                        "resource" => Value::Text(resource.clone()),
                        "state" => Value::Text(row.state.as_str().to_string()),
                        "error" => row.error.clone().map_or(Value::Null, Value::Text),
                        "object_count" => Value::BigInt(row.object_count),
                        "last_event_at" => ts(row.last_event_at),
                        "synced_at" => ts(row.synced_at),
                        _ => return None,
                    })
                })
            })
            .collect::<Result<Vec<Row>, _>>()?;
        self.append("resources", rows.iter().map(Vec::as_slice))
    }

    /// Rewrites the rows of these contexts, all in one delete and one append. While writes
    /// are held, the hold's cause stands in for a context's own error: it is why the
    /// context's rows are not current.
    pub(super) fn write_contexts<'n>(
        &mut self,
        names: impl Iterator<Item = &'n String> + Clone,
        now: i64,
    ) -> Result<(), StoreError> {
        if names.clone().next().is_none() {
            return Ok(());
        }
        self.outbox.part("contexts", None);
        {
            let mut app = self.conn.appender_to_db("context_keys", "kq_stage")?;
            for name in names.clone() {
                app.append_row([name])?;
            }
            app.flush()?;
        }
        self.conn.execute_batch(
            "DELETE FROM main.contexts USING kq_stage.context_keys k WHERE main.contexts.name = k.name;
             DELETE FROM kq_stage.context_keys;",
        )?;
        let error = self.hold.as_ref().map(|h| h.cause.to_string());
        let schema = self.schemas["contexts"].clone();
        let mut rows = Vec::new();
        for name in names {
            let Some(row) = self.contexts.get_mut(name) else {
                continue;
            };
            row.updated_at = now;
            let row = &*row;
            let info = &row.info;
            rows.push(by_name(&schema, "contexts", |column| {
                Some(match column {
                    "name" => Value::Text(name.clone()),
                    "cluster" => Value::Text(info.cluster.clone()),
                    "server" => Value::Text(info.server.clone()),
                    "user" => Value::Text(info.user.clone()),
                    "namespace" => info.namespace.clone().map_or(Value::Null, Value::Text),
                    "source_file" => Value::Text(info.source_file.clone()),
                    "state" => Value::Text(row.state.as_str().to_string()),
                    "error" => error
                        .clone()
                        .or_else(|| row.error.clone())
                        .map_or(Value::Null, Value::Text),
                    "last_event_at" => ts(row.last_event_at),
                    "synced_at" => ts(row.synced_at),
                    "server_version" => row.server_version.clone().map_or(Value::Null, Value::Text),
                    "object_count" => Value::BigInt(row.object_count),
                    "updated_at" => ts(Some(row.updated_at)),
                    "cluster_id" => row.cluster_id.clone().map_or(Value::Null, Value::Text),
                    "config_error" => row.config_error.clone().map_or(Value::Null, Value::Text),
                    _ => return None,
                })
            })?);
        }
        self.append("contexts", rows.iter().map(Vec::as_slice))
    }
}

/// A row in the table's own column order, each value named by its column, so that the
/// order in which migrations added the columns never matters.
fn by_name(
    schema: &SchemaRef,
    table: &str,
    value: impl Fn(&str) -> Option<Value>,
) -> Result<Row, StoreError> {
    schema
        .fields()
        .iter()
        .map(|f| {
            value(f.name()).ok_or_else(|| {
                StoreError::Batch(format!("the writer has no value for {table}.{}", f.name()))
            })
        })
        .collect()
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
