//! `object_key`: the 64-bit key of an object's rows, computed the same way by kqd's writer
//! (in Rust) and by the migration that fills it for rows stored before it existed (in SQL).
//!
//! The writer replaces and deletes rows by key in every batch. Joining on two text columns,
//! (context, uid), makes DuckDB read and hash both for every stored row of the table, which
//! at 285k `objects` rows is about 25 ms a delete; on one `UBIGINT` column it is about 3 ms.

use md5::{Digest, Md5};

/// The key of the object `uid` in `context`: the low 64 bits of the MD5 of
/// `<bytes in context>:<context><uid>` (the length makes the split unambiguous), as DuckDB's
/// `md5_number_lower` reads them. Two of a table's objects sharing a key is a 2^-64 chance
/// per pair; the writer would then replace both objects' rows together.
pub fn object_key(context: &str, uid: &str) -> u64 {
    let mut h = Md5::new();
    h.update(context.len().to_string().as_bytes());
    h.update(b":");
    h.update(context.as_bytes());
    h.update(uid.as_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[8..16].try_into().expect("an MD5 digest has 16 bytes"))
}

/// [`object_key`] as a DuckDB expression over a context column and a uid column.
pub fn object_key_sql(context: &str, uid: &str) -> String {
    format!(
        "md5_number_lower(strlen({context})::VARCHAR || ':' || {context} || coalesce({uid}, ''))"
    )
}
