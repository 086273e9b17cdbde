//! Retention: old changes, events and ended incidents go, and unused image references.

use super::*;

impl Writer {
    /// Applies the retention periods of `changes`, `events` and `incidents`, and forgets
    /// image references no container uses any more. Expired events take their `objects`
    /// rows with them. An ended incident goes only once its object is gone too: while the
    /// object still shows the occurrence, the row is what keeps a relist from raising it
    /// again.
    pub(super) fn prune(&mut self) -> Result<(), StoreError> {
        let changes = self.opts.changes_retention.as_secs();
        let events = self.opts.events_retention.as_secs();
        let old =
            |e: &str| format!("coalesce({e}last_seen, {e}created_at) < ago(to_seconds({events}))");
        let pruned_changes = self.conn.execute(
            &format!("DELETE FROM main.changes WHERE changed_at < ago(to_seconds({changes}))"),
            [],
        )?;
        self.conn.execute(
            &format!(
                "DELETE FROM main.objects WHERE api_group = '' AND resource = 'events'
                 AND EXISTS (SELECT 1 FROM main.events e
                             WHERE e.context = objects.context AND e.uid = objects.uid AND {})",
                old("e.")
            ),
            [],
        )?;
        let pruned_events = self
            .conn
            .execute(&format!("DELETE FROM main.events WHERE {}", old("")), [])?;
        if pruned_events > 0 {
            self.reload_index();
        }
        let incidents = self.opts.incidents_retention.as_secs();
        let pruned_incidents = self.conn.execute(
            &format!(
                "DELETE FROM main.incidents WHERE resolved_at < ago(to_seconds({incidents}))
                 AND NOT EXISTS (SELECT 1 FROM main.objects o
                                 WHERE o.context = incidents.context AND o.uid = incidents.object_uid)"
            ),
            [],
        )?;
        if pruned_incidents > 0 {
            self.reload_tracker();
        }
        let unused = super::super::images::prune_unused(&self.conn)?;
        if !unused.is_empty() {
            tracing::info!(
                references = unused.len(),
                "dropped image references no container uses"
            );
            for r in &unused {
                self.seen_refs.remove(r);
                self.seen_secret_refs.remove(r);
            }
            self.forward_images(crate::images::Sighting::Unused { refs: unused });
        }
        if pruned_changes + pruned_events + pruned_incidents > 0 {
            tracing::info!(
                changes = pruned_changes,
                events = pruned_events,
                incidents = pruned_incidents,
                "pruned rows past their retention"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{count, fixture, running};
    use super::*;

    #[test]
    fn changes_older_than_their_retention_go_and_recent_ones_stay() {
        let opts = StoreOptions {
            changes_retention: std::time::Duration::from_secs(3600),
            ..StoreOptions::default()
        };
        let mut f = fixture(opts);
        f.writer.write_batch(vec![running("a"), running("b")]);
        assert_eq!(count(&f.other, "SELECT count(*) FROM changes"), 2);
        f.other
            .execute_batch("UPDATE changes SET changed_at = ago(INTERVAL 2 HOUR) WHERE name = 'a'")
            .unwrap();
        f.writer.prune().unwrap();
        assert_eq!(
            count(&f.other, "SELECT count(*) FROM changes WHERE name = 'b'"),
            1
        );
        assert_eq!(count(&f.other, "SELECT count(*) FROM changes"), 1);
    }
}
