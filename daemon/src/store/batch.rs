//! Turns staged rows into one Arrow record batch per table, so the Appender takes whole
//! columns instead of one value at a time.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder, UInt64Array,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit as ArrowTimeUnit};
use arrow::record_batch::RecordBatch;
use duckdb::types::{TimeUnit, Value};

use super::StoreError;

/// Builds a batch with `schema` (the table's) from rows in column order. With `keys`, the
/// rows hold every column but the last, `object_key`, which the writer computes: one key
/// per row.
pub fn record_batch<'a>(
    schema: &SchemaRef,
    rows: impl Iterator<Item = &'a [Value]> + Clone,
    keys: Option<Vec<u64>>,
) -> Result<RecordBatch, StoreError> {
    let fields = schema.fields();
    let from_rows = fields.len() - usize::from(keys.is_some());
    let mut columns: Vec<ArrayRef> = fields[..from_rows]
        .iter()
        .enumerate()
        .map(|(i, f)| column(f.data_type(), rows.clone().map(move |r| &r[i])))
        .collect::<Result<_, _>>()?;
    if let Some(keys) = keys {
        columns.push(Arc::new(UInt64Array::from(keys)));
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| StoreError::Batch(e.to_string()))
}

fn mismatch(t: &DataType, v: &Value) -> StoreError {
    StoreError::Batch(format!("a {v:?} cannot go into a {t} column"))
}

fn column<'a>(
    t: &DataType,
    values: impl Iterator<Item = &'a Value> + Clone,
) -> Result<ArrayRef, StoreError> {
    Ok(match t {
        DataType::Utf8 => {
            // Sized up front. A batch's `objects.object` column holds megabytes of JSON;
            // grown by doubling, it would reserve up to twice its bytes and, while it is
            // copied to a larger buffer, hold both (the 10 × 10k sync's RSS peaks came
            // from such short spikes).
            let (n, bytes) = values.clone().fold((0, 0), |(n, bytes), v| match v {
                Value::Text(s) => (n + 1, bytes + s.len()),
                _ => (n + 1, bytes),
            });
            let mut b = StringBuilder::with_capacity(n, bytes);
            for v in values {
                match v {
                    Value::Text(s) => b.append_value(s),
                    Value::Null => b.append_null(),
                    other => return Err(mismatch(t, other)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Int64 => {
            let mut b = Int64Builder::new();
            for v in values {
                match v {
                    Value::BigInt(n) => b.append_value(*n),
                    Value::Int(n) => b.append_value(*n as i64),
                    Value::Null => b.append_null(),
                    other => return Err(mismatch(t, other)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Int32 => {
            let mut b = Int32Builder::new();
            for v in values {
                match v {
                    Value::Int(n) => b.append_value(*n),
                    Value::Null => b.append_null(),
                    other => return Err(mismatch(t, other)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Boolean => {
            let mut b = BooleanBuilder::new();
            for v in values {
                match v {
                    Value::Boolean(x) => b.append_value(*x),
                    Value::Null => b.append_null(),
                    other => return Err(mismatch(t, other)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Timestamp(ArrowTimeUnit::Microsecond, tz) => {
            let mut b = TimestampMicrosecondBuilder::new().with_timezone_opt(tz.clone());
            for v in values {
                match v {
                    Value::Timestamp(TimeUnit::Microsecond, n) => b.append_value(*n),
                    Value::Null => b.append_null(),
                    other => return Err(mismatch(t, other)),
                }
            }
            Arc::new(b.finish())
        }
        other => {
            return Err(StoreError::Batch(format!(
                "no staging support for {other} columns"
            )));
        }
    })
}
