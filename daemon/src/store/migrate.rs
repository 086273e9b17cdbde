//! Applies kq-schema's migrations to the database and refuses files from a newer kq.

use std::path::Path;

use duckdb::Connection;
use kq_schema::{MIGRATIONS, SCHEMA_VERSION};

use super::StoreError;

/// Brings the database to [`SCHEMA_VERSION`], one transaction per migration. Returns
/// whether an existing inventory was migrated (its rows may lack the new columns).
pub fn apply(conn: &Connection, path: &Path) -> Result<bool, StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS kq_meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    )?;
    let found: u32 = conn
        .query_row(
            "SELECT value FROM kq_meta WHERE key = 'schema_version'",
            [],
            |r| r.get::<_, String>(0),
        )
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let mut migrated = false;
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        migrated |= found > 0 && m.outdates_rows;
        let sql = format!(
            "BEGIN TRANSACTION;\n{}\nINSERT OR REPLACE INTO kq_meta VALUES ('schema_version', '{}');\nCOMMIT;",
            (m.sql)(),
            m.version
        );
        conn.execute_batch(&sql).map_err(|source| {
            let _ = conn.execute_batch("ROLLBACK");
            StoreError::Migrate {
                path: path.to_path_buf(),
                version: m.version,
                source,
            }
        })?;
        tracing::info!(version = m.version, description = m.description, path = %path.display(), "applied schema migration");
    }
    Ok(migrated)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file migrated up to `version` (as an older kq left it).
    fn at_version(version: u32) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kq.duckdb");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE kq_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
            .unwrap();
        for m in MIGRATIONS.iter().filter(|m| m.version <= version) {
            conn.execute_batch(&(m.sql)()).unwrap();
        }
        conn.execute(
            "INSERT INTO kq_meta VALUES ('schema_version', ?)",
            [version.to_string()],
        )
        .unwrap();
        (dir, conn)
    }

    #[test]
    fn only_a_migration_that_outdates_stored_rows_makes_the_next_list_rewrite_them() {
        // v13 only redefines the `status` view.
        let (dir, conn) = at_version(12);
        assert!(!apply(&conn, &dir.path().join("kq.duckdb")).unwrap());
        let version: String = conn
            .query_row(
                "SELECT value FROM kq_meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION.to_string());
        // v11 adds containers.image_ref, which stored rows lack.
        let (dir, conn) = at_version(10);
        assert!(apply(&conn, &dir.path().join("kq.duckdb")).unwrap());
        // A new file has nothing to rewrite.
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("kq.duckdb")).unwrap();
        assert!(!apply(&conn, &dir.path().join("kq.duckdb")).unwrap());
    }
}
