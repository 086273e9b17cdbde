//! Keeps what kqd writes private to the user: the inventory holds every cluster's secret
//! and configmap key names, event messages, images and registries, so its directories are
//! 0700 and its files 0600 whatever umask kqd was started with.

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::Path;

/// Makes every file and directory this process creates from now on private to its user:
/// DuckDB's WAL and spill files and SQLite's journals are created by the libraries, so a
/// mode set by kqd on each file would miss some. Exec credential plugins inherit it too,
/// which keeps their token caches private as well.
pub fn restrict_umask() {
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    if old.as_raw_mode() & 0o077 != 0o077 {
        tracing::debug!(
            umask = format!("{:03o}", old.as_raw_mode()),
            "umask tightened to 077"
        );
    }
}

/// Creates `dir` (and its missing parents) as 0700, or narrows an existing directory that
/// others can read or enter to 0700, saying so.
pub fn dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    narrow(dir, 0o700)
}

/// Narrows `file`, when it exists and others can read it, to 0600, saying so.
pub fn file(file: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(file) {
        Ok(_) => narrow(file, 0o600),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn narrow(path: &Path, mode: u32) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    let had = meta.mode() & 0o777;
    // Only what is ours: a directory of someone else's is not for kqd to change.
    if had & 0o077 == 0 || meta.uid() != rustix::process::geteuid().as_raw() {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    tracing::warn!(
        path = %path.display(),
        was = format!("{had:03o}"),
        now = format!("{mode:03o}"),
        "others could read kqd's data here; narrowed its permissions"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn wide_directories_and_files_are_narrowed_and_new_ones_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("a/b");
        dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);

        let wide = tmp.path().join("wide");
        std::fs::create_dir(&wide).unwrap();
        std::fs::set_permissions(&wide, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir(&wide).unwrap();
        assert_eq!(mode(&wide), 0o700);

        let f = wide.join("kq.duckdb");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        file(&wide.join("missing")).unwrap();
    }
}
