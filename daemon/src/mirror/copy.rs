//! DuckDB's Arrow batches as PostgreSQL binary COPY rows: one typed cell per value, with
//! the NUL characters PostgreSQL cannot store replaced (and counted).

use std::borrow::Cow;
use std::error::Error;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;
use bytes::{BufMut, BytesMut};
use postgres_types::{IsNull, ToSql, Type, to_sql_checked};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// One value for COPY.
#[derive(Debug)]
pub enum Cell<'a> {
    Null,
    Text(Cow<'a, str>),
    /// JSON text; written with JSONB's version byte.
    Json(Cow<'a, str>),
    I32(i32),
    I64(i64),
    F64(f64),
    Bool(bool),
    /// Unix microseconds.
    Timestamp(i64),
}

impl Cell<'_> {
    /// The cell as a key part: equal for equal values of one column.
    pub fn key(&self) -> String {
        match self {
            Cell::Null => "\u{0}".to_string(),
            Cell::Text(s) | Cell::Json(s) => s.to_string(),
            Cell::I32(v) => v.to_string(),
            Cell::I64(v) | Cell::Timestamp(v) => v.to_string(),
            Cell::F64(v) => v.to_string(),
            Cell::Bool(v) => v.to_string(),
        }
    }
}

impl ToSql for Cell<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Cell::Null => return Ok(IsNull::Yes),
            Cell::Text(s) => out.put_slice(s.as_bytes()),
            Cell::Json(s) => {
                if *ty == Type::JSONB {
                    out.put_u8(1);
                }
                out.put_slice(s.as_bytes());
            }
            Cell::I32(v) => out.put_i32(*v),
            Cell::I64(v) => out.put_i64(*v),
            Cell::F64(v) => out.put_f64(*v),
            Cell::Bool(v) => out.put_u8(u8::from(*v)),
            Cell::Timestamp(us) => out.put_i64(us - PG_EPOCH_US),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        // The stage's column types come from the same catalog types as the cells.
        true
    }

    to_sql_checked!();
}

/// PostgreSQL's type for a catalog type, for the COPY writer.
pub fn copy_type(sql_type: &str) -> Type {
    match sql_type {
        "VARCHAR" => Type::TEXT,
        "JSON" => Type::JSONB,
        "INTEGER" => Type::INT4,
        "BIGINT" => Type::INT8,
        "TIMESTAMPTZ" => Type::TIMESTAMPTZ,
        "BOOLEAN" => Type::BOOL,
        "DOUBLE" => Type::FLOAT8,
        other => panic!("no COPY type for the catalog type {other}"),
    }
}

/// Text without NUL characters (PostgreSQL's text cannot hold them): each is dropped.
pub fn text_without_nul<'a>(s: &'a str, replaced: &mut u64) -> Cow<'a, str> {
    if !s.contains('\0') {
        return Cow::Borrowed(s);
    }
    *replaced += s.matches('\0').count() as u64;
    Cow::Owned(s.replace('\0', ""))
}

/// JSON without `\u0000` escapes (JSONB refuses them): each becomes `\ufffd`, the
/// replacement character. An escaped backslash followed by `u0000` is text, and stays.
pub fn json_without_nul<'a>(s: &'a str, replaced: &mut u64) -> Cow<'a, str> {
    if !s.contains("\\u0000") && !s.contains('\0') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut start = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if b[i + 1..].starts_with(b"u0000") => {
                out.push_str(&s[start..i]);
                out.push_str("\\ufffd");
                *replaced += 1;
                i += 6;
                start = i;
            }
            // Any other escape: skip the escaped character, so that `\\u0000` stays.
            b'\\' => i += 2,
            0 => {
                out.push_str(&s[start..i]);
                *replaced += 1;
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&s[start.min(s.len())..]);
    Cow::Owned(out)
}

/// One column of a batch, typed once.
enum Col<'a> {
    Text(&'a StringArray, bool),
    I32(&'a Int32Array),
    I64(&'a Int64Array),
    F64(&'a Float64Array),
    Bool(&'a BooleanArray),
    Timestamp(&'a TimestampMicrosecondArray),
    Null,
}

/// Why a batch cannot be copied.
#[derive(Debug, thiserror::Error)]
#[error("column {column}: DuckDB gave {data_type}, which the mirror cannot copy")]
pub struct Unsupported {
    pub column: String,
    pub data_type: DataType,
}

/// Reads a batch's rows as cells, given each column's catalog type (`JSON` columns become
/// JSONB).
pub struct Rows<'a> {
    cols: Vec<Col<'a>>,
    pub len: usize,
}

impl<'a> Rows<'a> {
    pub fn new(batch: &'a RecordBatch, sql_types: &[&str]) -> Result<Rows<'a>, Unsupported> {
        let cols = batch
            .columns()
            .iter()
            .zip(sql_types)
            .zip(batch.schema().fields())
            .map(|((a, t), f)| col(a, *t == "JSON", f.name()))
            .collect::<Result<_, _>>()?;
        Ok(Rows {
            cols,
            len: batch.num_rows(),
        })
    }

    /// The cells of row `i`.
    pub fn row(&self, i: usize, replaced: &mut u64) -> Vec<Cell<'a>> {
        self.cols
            .iter()
            .map(|c| match c {
                Col::Null => Cell::Null,
                Col::Text(a, _) if a.is_null(i) => Cell::Null,
                Col::Text(a, json) => {
                    if *json {
                        Cell::Json(json_without_nul(a.value(i), replaced))
                    } else {
                        Cell::Text(text_without_nul(a.value(i), replaced))
                    }
                }
                Col::I32(a) if a.is_null(i) => Cell::Null,
                Col::I32(a) => Cell::I32(a.value(i)),
                Col::I64(a) if a.is_null(i) => Cell::Null,
                Col::I64(a) => Cell::I64(a.value(i)),
                Col::F64(a) if a.is_null(i) => Cell::Null,
                Col::F64(a) => Cell::F64(a.value(i)),
                Col::Bool(a) if a.is_null(i) => Cell::Null,
                Col::Bool(a) => Cell::Bool(a.value(i)),
                Col::Timestamp(a) if a.is_null(i) => Cell::Null,
                Col::Timestamp(a) => Cell::Timestamp(a.value(i)),
            })
            .collect()
    }
}

fn col<'a>(a: &'a ArrayRef, json: bool, name: &str) -> Result<Col<'a>, Unsupported> {
    let any = a.as_any();
    let unsupported = || Unsupported {
        column: name.to_string(),
        data_type: a.data_type().clone(),
    };
    Ok(match a.data_type() {
        DataType::Null => Col::Null,
        DataType::Utf8 => Col::Text(any.downcast_ref().ok_or_else(unsupported)?, json),
        DataType::Int32 => Col::I32(any.downcast_ref().ok_or_else(unsupported)?),
        DataType::Int64 => Col::I64(any.downcast_ref().ok_or_else(unsupported)?),
        DataType::Float64 => Col::F64(any.downcast_ref().ok_or_else(unsupported)?),
        DataType::Boolean => Col::Bool(any.downcast_ref().ok_or_else(unsupported)?),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Col::Timestamp(any.downcast_ref().ok_or_else(unsupported)?)
        }
        _ => return Err(unsupported()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_escapes_are_replaced_and_counted_and_an_escaped_backslash_is_left_alone() {
        let mut n = 0;
        assert_eq!(
            json_without_nul(r#"{"a":"x\u0000y","b":"\\u0000"}"#, &mut n),
            r#"{"a":"x\ufffdy","b":"\\u0000"}"#
        );
        assert_eq!(n, 1);
        assert_eq!(
            json_without_nul(r#"{"a":"\u00001"}"#, &mut n),
            r#"{"a":"\ufffd1"}"#
        );
        assert_eq!(n, 2);
        assert!(matches!(
            json_without_nul(r#"{"clean":true}"#, &mut n),
            Cow::Borrowed(_)
        ));
        assert_eq!(text_without_nul("a\0b\0", &mut n), "ab");
        assert_eq!(n, 4);
    }
}
