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
    pub(super) fn write_resource(&mut self, key: &ResKey) -> Result<(), StoreError> {
        let (ctx, group, resource) = key;
        self.outbox.part("resources", None);
        self.conn.execute(
            "DELETE FROM main.resources WHERE context = ? AND api_group = ? AND resource = ?",
            [ctx, group, resource],
        )?;
        let Some(row) = self.resources.get(key) else {
            return Ok(());
        };
        let values: Vec<Value> = vec![
            Value::Text(ctx.clone()),
            Value::Text(group.clone()),
            Value::Text(resource.clone()),
            Value::Text(row.state.as_str().to_string()),
            row.error.clone().map_or(Value::Null, Value::Text),
            Value::BigInt(row.object_count),
            ts(row.last_event_at),
            ts(row.synced_at),
        ];
        self.conn.execute(
            "INSERT INTO main.resources VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            params_from_iter(values.iter()),
        )?;
        Ok(())
    }

    /// Writes a context's row. While writes are held, the hold's cause stands in for the
    /// context's own error: it is why the context's rows are not current.
    pub(super) fn write_context(&mut self, name: &str, now: i64) -> Result<(), StoreError> {
        let error = self.hold.as_ref().map(|h| h.cause.to_string());
        let Some(row) = self.contexts.get_mut(name) else {
            return Ok(());
        };
        row.updated_at = now;
        self.outbox.part("contexts", None);
        let info = &row.info;
        self.conn
            .execute("DELETE FROM contexts WHERE name = ?", [name])?;
        let values: Vec<Value> = vec![
            Value::Text(name.to_string()),
            Value::Text(info.cluster.clone()),
            Value::Text(info.server.clone()),
            Value::Text(info.user.clone()),
            info.namespace.clone().map_or(Value::Null, Value::Text),
            Value::Text(info.source_file.clone()),
            Value::Text(row.state.as_str().to_string()),
            error
                .or_else(|| row.error.clone())
                .map_or(Value::Null, Value::Text),
            ts(row.last_event_at),
            ts(row.synced_at),
            row.server_version.clone().map_or(Value::Null, Value::Text),
            Value::BigInt(row.object_count),
            ts(Some(row.updated_at)),
            row.cluster_id.clone().map_or(Value::Null, Value::Text),
            row.config_error.clone().map_or(Value::Null, Value::Text),
        ];
        self.conn.execute(
            "INSERT INTO contexts (name, cluster, server, \"user\", namespace, source_file, state, error, last_event_at, synced_at, server_version, object_count, updated_at, cluster_id, config_error)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            params_from_iter(values.iter()),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{count, fixture, running};
    use super::*;

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
