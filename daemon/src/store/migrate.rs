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
    fn the_writers_object_key_is_duckdbs_and_a_migrated_file_gets_it_for_stored_rows() {
        // Rows stored before v20 have no key; the migration computes the one the writer does.
        let (dir, conn) = at_version(19);
        let pairs = [
            ("prod", "0f6c1e2a-8d39-4b1c-9c55-1f2f0a7d3e11"),
            ("kind-kind", "u1"),
            ("gke_proj_europe-west1_ünïcode", "u2"),
            ("a:b", "c"),
            ("a", "b:c"),
            ("", ""),
        ];
        for (ctx, uid) in pairs {
            conn.execute(
                "INSERT INTO pods (context, name, uid) VALUES (?, 'p', ?)",
                [ctx, uid],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO containers (context, pod, pod_uid, name) VALUES (?, 'p', ?, 'main')",
                [ctx, uid],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO objects (context, name, uid) VALUES ('prod', 'no-uid', NULL)",
            [],
        )
        .unwrap();
        assert!(!apply(&conn, &dir.path().join("kq.duckdb")).unwrap());
        let keys = |sql: &str| -> Vec<(String, String, u64)> {
            conn.prepare(sql)
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        for (ctx, uid, key) in keys("SELECT context, uid, object_key FROM pods")
            .into_iter()
            .chain(keys("SELECT context, pod_uid, object_key FROM containers"))
            .chain(keys(
                "SELECT context, coalesce(uid, ''), object_key FROM objects",
            ))
        {
            assert_eq!(key, kq_schema::object_key(&ctx, &uid), "{ctx:?} {uid:?}");
        }
        // The length prefix keeps ("a:b", "c") and ("a", "b:c") apart.
        assert_ne!(
            kq_schema::object_key("a:b", "c"),
            kq_schema::object_key("a", "b:c")
        );
    }

    #[test]
    fn a_secrets_last_applied_manifest_stored_before_v21_is_hidden_and_nothing_else_changes() {
        let (dir, conn) = at_version(20);
        let applied = r#"{"apiVersion":"v1","data":{"password":"czNjcjN0"},"kind":"Secret"}"#;
        let annotations = serde_json::json!({
            "kubectl.kubernetes.io/last-applied-configuration": applied,
            "team": "shop",
        })
        .to_string();
        let object = |kind: &str| {
            serde_json::json!({"kind": kind, "metadata": {"name": "db", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": applied, "team": "shop"}}})
            .to_string()
        };
        conn.execute(
            "INSERT INTO secrets (context, namespace, name, uid, annotations) VALUES ('prod', 'shop', 'db', 'u1', ?)",
            [&annotations],
        )
        .unwrap();
        // u3 is a Secret watched only as an object.
        for (uid, group, kind) in [
            ("u1", "", "Secret"),
            ("u2", "", "ConfigMap"),
            ("u3", "", "Secret"),
        ] {
            conn.execute(
                "INSERT INTO objects (context, name, uid, api_group, kind, object) VALUES ('prod', 'db', ?, ?, ?, ?)",
                [uid, group, kind, &object(kind)],
            )
            .unwrap();
        }
        assert!(!apply(&conn, &dir.path().join("kq.duckdb")).unwrap());
        let text = |sql: &str| -> String { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        let hidden = serde_json::json!({
            "kubectl.kubernetes.io/last-applied-configuration": "(hidden)",
            "team": "shop",
        });
        let stored: serde_json::Value =
            serde_json::from_str(&text("SELECT annotations::VARCHAR FROM secrets")).unwrap();
        assert_eq!(stored, hidden);
        let secret: serde_json::Value = serde_json::from_str(&text(
            "SELECT object::VARCHAR FROM objects WHERE uid = 'u1'",
        ))
        .unwrap();
        assert_eq!(secret["metadata"]["annotations"], hidden);
        assert_eq!(
            secret["metadata"]["name"], "db",
            "the rest of the object stays"
        );
        // Only Secrets: a ConfigMap's manifest holds nothing secret.
        assert_eq!(
            text("SELECT object::VARCHAR FROM objects WHERE uid = 'u2'"),
            object("ConfigMap")
        );
        // Their resourceVersions did not change, so the mirror is told through its outbox.
        let owed: Vec<(String, String, String, i64)> = conn
            .prepare("SELECT tbl, context, key, seq FROM kq_mirror_outbox ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let p = |t: &str, u: &str, n| (t.to_string(), "prod".to_string(), u.to_string(), n);
        assert_eq!(owed, [p("secrets", "u1", 1), p("objects", "u3", 2)]);
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
