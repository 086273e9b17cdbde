//! Watches the kubeconfig files for changes. Each file is watched through its parent
//! directory (and, for a symlink, its target's directory too), because editors, `kubectl
//! config` and cloud CLIs save by writing a temporary file and renaming it over the old
//! one, which ends a watch on the file itself. A file that does not exist yet is picked up
//! when it is created. Only changes count: opening or reading a file (every `kubectl` run
//! does) is no reason to reload, and [`Contents`] tells whether a change really changed
//! what the files say.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify::event::{EventKind, ModifyKind};
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
                .any(|e| changes_content(&e.kind) && e.paths.iter().any(|p| wanted.contains(p))),
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

/// Whether an event can have changed what a file says: a create, a write, a rename or a
/// remove. Opening, reading and closing a file unwritten (inotify reports all three) and a
/// change of mode or times cannot, and reacting to them made kqd reload on every `kubectl`
/// run and loop for ever with any other program that re-reads the file when it sees one.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        // Backends that cannot say what happened: re-reading costs little.
        EventKind::Any | EventKind::Other => true,
    }
}

/// What the kubeconfig files say, as a digest: each file's resolved path and its bytes (or
/// that it is missing or unreadable). Two equal digests mean a reload would change nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contents(u64);

impl Contents {
    pub fn read(paths: &[PathBuf]) -> Contents {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::hash::DefaultHasher::new();
        for p in paths {
            p.hash(&mut h);
            std::fs::canonicalize(p).ok().hash(&mut h);
            match std::fs::read(p) {
                Ok(bytes) => bytes.hash(&mut h),
                Err(e) => e.kind().hash(&mut h),
            }
        }
        Contents(h.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, RenameMode};

    #[test]
    fn reads_and_mode_changes_are_not_changes() {
        for k in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Read),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Permissions)),
        ] {
            assert!(!changes_content(&k), "{k:?}");
        }
        for k in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(notify::event::RemoveKind::File),
        ] {
            assert!(changes_content(&k), "{k:?}");
        }
    }

    #[test]
    fn contents_change_with_the_bytes_and_not_with_a_rewrite_of_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config");
        let paths = vec![f.clone(), dir.path().join("missing")];
        let missing = Contents::read(&paths);
        std::fs::write(&f, "a").unwrap();
        let a = Contents::read(&paths);
        assert_ne!(missing, a);
        std::fs::write(&f, "a").unwrap();
        assert_eq!(a, Contents::read(&paths), "same bytes, same contents");
        std::fs::write(&f, "b").unwrap();
        assert_ne!(a, Contents::read(&paths));
    }
}
