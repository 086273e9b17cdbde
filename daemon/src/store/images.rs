//! Writes image sizes: one `images` row per image, one `image_refs` row per reference that
//! names it, and no `images` row that no reference names any more.

use duckdb::types::{TimeUnit, Value};
use duckdb::{Connection, params_from_iter};

use super::StoreError;
use crate::images::ImageFound;

/// Replaces an image's row and points its references at it.
pub fn write(conn: &Connection, f: &ImageFound) -> Result<(), StoreError> {
    let text = |v: Option<&str>| v.map_or(Value::Null, |s| Value::Text(s.to_string()));
    let ts = |secs: Option<i64>| {
        secs.map_or(Value::Null, |s| {
            Value::Timestamp(TimeUnit::Microsecond, s * 1_000_000)
        })
    };
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

/// Removes images no reference names (a tag that now resolves to another digest).
pub fn drop_orphans(conn: &Connection) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM main.images WHERE image NOT IN (SELECT image FROM main.image_refs)",
        [],
    )?;
    Ok(())
}
