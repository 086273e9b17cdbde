//! Writes image sizes: one `images` row per image, one `image_refs` row per reference that
//! names it, and no row for an image or a reference that nothing uses any more.

use duckdb::types::{TimeUnit, Value};
use duckdb::{Connection, params_from_iter};

use super::StoreError;
use crate::images::{ImageFound, RegistryStatus};

fn text(v: Option<&str>) -> Value {
    v.map_or(Value::Null, |s| Value::Text(s.to_string()))
}

/// Unix seconds as a timestamp.
fn ts(secs: Option<i64>) -> Value {
    secs.map_or(Value::Null, |s| {
        Value::Timestamp(TimeUnit::Microsecond, s * 1_000_000)
    })
}

/// Replaces an image's row and points its references at it.
pub fn write(conn: &Connection, f: &ImageFound) -> Result<(), StoreError> {
    let values = [
        Value::Text(f.image.clone()),
        Value::Text(f.name.clone()),
        Value::Text(f.registry.clone()),
        Value::Text(f.repository.clone()),
        text(f.digest.as_deref()),
        f.size_bytes.map_or(Value::Null, Value::BigInt),
        text(f.source),
        text(f.platform.as_deref()),
        ts(Some(f.fetched_at)),
        ts(f.expires_at),
        text(f.error.as_deref()),
    ];
    conn.execute("DELETE FROM main.images WHERE image = ?", [&f.image])?;
    conn.execute(
        "INSERT INTO main.images (image, name, registry, repository, digest, size_bytes, source, platform, fetched_at, expires_at, error)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params_from_iter(values.iter()),
    )?;
    for r in &f.refs {
        conn.execute("DELETE FROM main.image_refs WHERE ref = ?", [r])?;
        conn.execute(
            "INSERT INTO main.image_refs (ref, image) VALUES (?, ?)",
            [r, &f.image],
        )?;
    }
    Ok(())
}

/// Replaces the `registries` table with what image sizing knows of each registry.
pub fn write_registries(conn: &Connection, all: &[RegistryStatus]) -> Result<(), StoreError> {
    conn.execute("DELETE FROM main.registries", [])?;
    let mut insert = conn.prepare(
        "INSERT INTO main.registries (registry, requests, manifest_gets, last_status, last_request_at, last_error, last_error_at, held_until, pulls_remaining)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?;
    for r in all {
        let values = [
            Value::Text(r.registry.clone()),
            Value::BigInt(r.requests as i64),
            Value::BigInt(r.manifest_gets as i64),
            r.last_status.map_or(Value::Null, |s| Value::Int(s.into())),
            ts(r.last_request_at),
            text(r.last_error.as_deref()),
            ts(r.last_error_at),
            ts(r.held_until),
            r.pulls_remaining.map_or(Value::Null, Value::BigInt),
        ];
        insert.execute(params_from_iter(values.iter()))?;
    }
    Ok(())
}

/// Removes images no reference names (a tag that now resolves to another digest).
pub fn drop_orphans(conn: &Connection) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM main.images WHERE image NOT IN (SELECT image FROM main.image_refs)",
        [],
    )?;
    Ok(())
}

/// Removes the references no container uses any more, and the images only they named.
/// Returns those references, so that image sizing stops refreshing them.
pub fn prune_unused(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let unused = conn
        .prepare(
            "DELETE FROM main.image_refs WHERE ref NOT IN
               (SELECT image_ref FROM main.containers WHERE image_ref IS NOT NULL)
             RETURNING ref",
        )?
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    if !unused.is_empty() {
        drop_orphans(conn)?;
    }
    Ok(unused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(image: &str, refs: &[&str]) -> ImageFound {
        ImageFound {
            image: image.into(),
            name: refs[0].into(),
            registry: "docker.io".into(),
            repository: "library/app".into(),
            digest: None,
            size_bytes: Some(1000),
            source: Some("registry"),
            platform: Some("linux/amd64".into()),
            fetched_at: 1_700_000_000,
            expires_at: Some(1_700_086_400),
            error: None,
            refs: refs.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn strings(conn: &Connection, sql: &str) -> Vec<String> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn images_no_container_uses_any_more_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kq.duckdb");
        let conn = Connection::open(&path).unwrap();
        super::super::migrate::apply(&conn, &path).unwrap();
        conn.execute_batch(
            "INSERT INTO containers (context, namespace, pod, name, kind, image, image_ref)
             VALUES ('c', 'ns', 'p', 'main', 'container', 'app:1', 'docker.io/library/app:1')",
        )
        .unwrap();
        write(&conn, &found("app@sha256:1", &["docker.io/library/app:1"])).unwrap();
        write(&conn, &found("app@sha256:2", &["docker.io/library/app:2"])).unwrap();
        // A second name for the image still in use keeps it, and goes itself.
        write(
            &conn,
            &found("app@sha256:1", &["docker.io/library/app@sha256:1"]),
        )
        .unwrap();
        let mut unused = prune_unused(&conn).unwrap();
        unused.sort();
        assert_eq!(
            unused,
            ["docker.io/library/app:2", "docker.io/library/app@sha256:1"]
        );
        assert_eq!(strings(&conn, "SELECT image FROM images"), ["app@sha256:1"]);
        assert_eq!(
            strings(&conn, "SELECT ref FROM image_refs"),
            ["docker.io/library/app:1"]
        );
        assert!(prune_unused(&conn).unwrap().is_empty());
    }
}
