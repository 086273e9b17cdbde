//! What a failed batch does: the writer holds, tells readers why, probes, and relists once
//! writes succeed again.

use super::*;

/// While writes fail, how many ops a batch reads at most: past that the channel fills and
/// the watchers' events wait (in the channel and in the API servers' watch streams) until
/// writes succeed again, instead of being read and lost.
pub(super) const HELD_OPS: usize = 1024;

impl Writer {
    /// While writes fail: gathers at most [`HELD_OPS`] ops until `deadline`, without
    /// reading further, then tries them as one batch. Returns whether the channel closed.
    pub(super) fn write_held(
        &mut self,
        first: Op,
        rx: &mut mpsc::Receiver<Op>,
        deadline: Instant,
    ) -> bool {
        let mut batch = vec![first];
        while batch.len() < HELD_OPS {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.write_batch(batch);
                    return true;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        // Wait out the rest of the hold without reading, so that senders wait too; a
        // shutdown (every sender gone) ends the wait early.
        while Instant::now() < deadline && !rx.is_closed() {
            std::thread::sleep(std::time::Duration::from_millis(50).min(deadline - Instant::now()));
        }
        self.write_batch(batch);
        false
    }

    /// A batch failed and was rolled back. What the writer keeps in memory is rebuilt from
    /// the file; the cause is told to readers and, when the file takes it, to `contexts`;
    /// and the writer holds off before it tries again. Contexts relist only once writes
    /// succeed again: relisting into a disk that is still full would only load every API
    /// server and fail again.
    pub(super) fn failed(&mut self, e: &StoreError, ops: usize) {
        self.reload_index();
        self.reload_tracker();
        self.forget_images();
        self.hold_on(e, ops);
        // Best effort: a nearly full disk may still take the few rows that say why.
        if let Err(e) = self.write_status() {
            tracing::debug!(error = %e, "cannot record the write failure in contexts either");
        }
    }

    /// Starts or extends the hold for the failure `e`, and tells readers its cause.
    pub(super) fn hold_on(&mut self, e: &StoreError, ops: usize) {
        let cause = WriteFailure::classify(e, &self.path);
        let previous = self.hold.take();
        // The first failure, or a new cause, is an error; the same cause again is news only
        // in that it lasts.
        let repeated = previous.as_ref().is_some_and(|h| h.cause == cause);
        let hold = Hold::after(previous, cause);
        let retry_in_ms = hold.wait.as_millis() as u64;
        if repeated {
            tracing::warn!(ops, failures = hold.failures, cause = %hold.cause, retry_in_ms, "writes still fail");
        } else {
            tracing::error!(ops, error = %e, cause = %hold.cause, retry_in_ms, "a batch failed and was rolled back; holding writes until they succeed, then every context relists");
        }
        self.health.set_write_error(Some(hold.cause.to_string()));
        self.hold = Some(hold);
    }

    /// Writes succeeded: when they had been failing, the hold ends and every context
    /// relists, once, to restore what the failed batches lost.
    pub(super) fn recovered(&mut self) {
        let Some(hold) = self.hold.take() else { return };
        tracing::info!(failures = hold.failures, cause = %hold.cause, "writes succeed again; every context relists to restore what the failed writes lost");
        self.health.set_write_error(None);
        if let Err(e) = self.write_status() {
            tracing::warn!(error = %e, "cannot clear the write failure from contexts");
        }
        self.resync.send_modify(|g| *g += 1);
    }

    /// With nothing to write during a hold: a write of the status rows (still naming the
    /// cause) tells whether the database takes writes again.
    pub(super) fn probe(&mut self) {
        match self.write_status() {
            Ok(()) => self.recovered(),
            Err(e) => self.hold_on(&e, 0),
        }
    }

    /// Rewrites every `contexts` row in a transaction of its own; while a hold lasts, each
    /// names its cause as the error.
    pub(super) fn write_status(&mut self) -> Result<(), StoreError> {
        let names: Vec<String> = self.contexts.keys().cloned().collect();
        let now = now_micros();
        self.in_transaction(|w| w.write_contexts(names.iter(), now))
    }
}
