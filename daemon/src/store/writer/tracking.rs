//! Incidents from the writer's side: states a batch supersedes are still observed, and the
//! tracker's timers run in transactions of their own.

use super::*;

impl Writer {
    /// A batch keeps only an object's last state, but a crash followed within the batch by a
    /// recovery or a delete must still be seen: the state being replaced is observed now.
    pub(super) fn observe_superseded(
        &mut self,
        ctx: &Arc<str>,
        earlier: Option<Option<ObjectRows>>,
    ) -> Result<(), StoreError> {
        let Some(Some(rows)) = earlier else {
            return Ok(());
        };
        let Some(o) = rows.observed else {
            return Ok(());
        };
        let cluster_id = self.contexts.get(&**ctx).and_then(|c| c.cluster_id.clone());
        self.tracker
            .observe(&self.conn, ctx, cluster_id.as_deref(), &o, now_micros())
    }

    /// Runs the incident tracker's timers in a transaction of their own. Rows the tracker
    /// wrote before a failure were rolled back with it, so they are dropped, not published.
    pub(super) fn tick_incidents(&mut self) {
        let ids = self.cluster_ids();
        match self.in_transaction(|w| w.tracker.tick(&w.conn, &ids, now_micros())) {
            Ok(()) => self.publish(),
            Err(e) => {
                tracing::error!(error = %e, "incident timers failed; rolled back");
                drop(self.tracker.take_written());
                self.reload_tracker();
            }
        }
    }
}
