//! Watches the kubeconfig files for changes. Each file is watched through its parent
//! directory (and, for a symlink, its target's directory too), because editors, `kubectl
//! config` and cloud CLIs save by writing a temporary file and renaming it over the old
//! one, which ends a watch on the file itself. A file that does not exist yet is picked up
//! when it is created.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;

/// Quiet time before a burst of events counts as one change.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// A live watch; dropping it stops watching.
pub struct FileWatch {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    /// Receives one message per (debounced) change of any watched file.
    pub changed: mpsc::UnboundedReceiver<()>,
}

/// The paths that name the files: as given (made absolute), and their symlink targets.
fn targets(paths: &[PathBuf]) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    for p in paths {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
        if let Ok(real) = std::fs::canonicalize(&abs) {
            out.insert(real);
        }
        out.insert(abs);
    }
    out
}

/// Starts watching `paths`. Directories that do not exist are skipped with a warning.
pub fn watch(paths: &[PathBuf]) -> Result<FileWatch, notify::Error> {
    let files = targets(paths);
    let dirs: HashSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    let (tx, changed) = mpsc::unbounded_channel();
    let wanted = files.clone();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |res: DebounceEventResult| {
        let hit = match res {
            Ok(events) => events
                .iter()
                .any(|e| e.paths.iter().any(|p| wanted.contains(p))),
            // Lost events: re-reading costs little, missing a change costs a lot.
            Err(_) => true,
        };
        if hit {
            let _ = tx.send(());
        }
    })?;
    for dir in &dirs {
        if let Err(e) = debouncer.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a kubeconfig directory; changes there need SIGHUP");
        }
    }
    Ok(FileWatch {
        _debouncer: debouncer,
        changed,
    })
}
