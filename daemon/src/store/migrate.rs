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
        migrated = found > 0;
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
