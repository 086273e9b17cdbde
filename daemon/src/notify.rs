//! systemd integration: READY once the socket listens, STOPPING at shutdown, and watchdog
//! keepalives that are only sent while the store writer still answers. Outside systemd
//! (no `NOTIFY_SOCKET`) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::Op;

/// Tells systemd kqd is ready to serve.
pub fn ready() {
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot notify systemd that kqd is ready");
    }
}

/// Tells systemd kqd is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// Sends a keepalive at half the watchdog interval, each time after a barrier went through
/// the writer: a stalled writer stops the keepalives and systemd restarts kqd.
pub fn spawn_watchdog(tx: mpsc::Sender<Op>, stop: CancellationToken) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    tracing::info!(
        interval_ms = every.as_millis() as u64,
        "systemd watchdog enabled"
    );
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            let (done, answered) = oneshot::channel();
            if tx.send(Op::Barrier(done)).await.is_err() {
                return;
            }
            match tokio::time::timeout(every, answered).await {
                Ok(Ok(())) => {
                    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                }
                _ => tracing::warn!(
                    "the store writer did not answer in time; withholding the watchdog keepalive"
                ),
            }
        }
    });
}
