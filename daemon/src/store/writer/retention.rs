//! Retention: old changes, events and ended incidents go, and unused image references.

use super::*;

/// What one pruning removed.
struct Pruned {
    changes: usize,
    events: usize,
    incidents: usize,
    unused_refs: Vec<String>,
}

impl Writer {
    /// Applies the retention periods of `changes`, `events` and `incidents`, and forgets
    /// image references no container uses any more, in one transaction. Expired events
    /// take their `objects` rows with them. An ended incident goes only once its object is
    /// gone too: while the object still shows the occurrence, the row is what keeps a
    /// relist from raising it again. The index and the tracker are reloaded only once the
    /// deletes committed, so a failed pruning leaves them matching the file.
    pub(super) fn prune(&mut self) -> Result<(), StoreError> {
        let pruned = self.in_transaction(|w| w.prune_rows())?;
        if pruned.events > 0 {
            self.reload_index();
        }
        if pruned.incidents > 0 {
            self.reload_tracker();
        }
        let unused = pruned.unused_refs;
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
        if pruned.changes + pruned.events + pruned.incidents > 0 {
            tracing::info!(
                changes = pruned.changes,
                events = pruned.events,
                incidents = pruned.incidents,
                "pruned rows past their retention"
            );
        }
        Ok(())
    }

    /// The deletes of [`Writer::prune`]. The mirror learns of them as parts to compare
    /// (`changes` it follows by number, so it needs no entry).
    fn prune_rows(&mut self) -> Result<Pruned, StoreError> {
        let changes = self.opts.changes_retention.as_secs();
        let events = self.opts.events_retention.as_secs();
        let old =
            |e: &str| format!("coalesce({e}last_seen, {e}created_at) < ago(to_seconds({events}))");
        let pruned_changes = self.conn.execute(
            &format!("DELETE FROM main.changes WHERE changed_at < ago(to_seconds({changes}))"),
            [],
        )?;
        let pruned_objects = self.conn.execute(
            &format!(
                "DELETE FROM main.objects WHERE api_group = '' AND resource = 'events'
                 AND EXISTS (SELECT 1 FROM main.events e
                             WHERE e.context = objects.context AND e.uid = objects.uid AND {})",
                old("e.")
            ),
            [],
        )?;
        self.checkpoints.deleted(pruned_objects);
        let pruned_events = self
            .conn
            .execute(&format!("DELETE FROM main.events WHERE {}", old("")), [])?;
        if pruned_events > 0 {
            self.outbox.part("events", None);
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
            self.outbox.part("incidents", None);
        }
        let unused_refs = super::super::images::prune_unused(&self.conn)?;
        if !unused_refs.is_empty() {
            self.outbox.part("image_refs", None);
            self.outbox.part("images", None);
        }
        Ok(Pruned {
            changes: pruned_changes,
            events: pruned_events,
            incidents: pruned_incidents,
            unused_refs,
        })
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
