//! Prepared statements without server state: the handle a client holds carries the SQL
//! and, once the client has bound them with DoPut, the parameter values (as an Arrow IPC
//! stream). kqd hands back a new handle from DoPut, as Flight SQL allows, so nothing is
//! kept between calls, nothing leaks when a client never closes a statement, and a handle
//! outlives a kqd restart.

use duckdb::arrow::array::{Array, AsArray as _};
use duckdb::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, DecimalType as _, Field, Float32Type, Float64Type,
    Int8Type, Int16Type, Int32Type, Int64Type, Schema, TimeUnit, UInt8Type, UInt16Type, UInt32Type,
    UInt64Type,
};
use duckdb::arrow::ipc::reader::StreamReader;
use duckdb::arrow::ipc::writer::StreamWriter;
use duckdb::arrow::record_batch::RecordBatch;
use duckdb::types::{TimeUnit as DuckUnit, Value};
use tonic::Status;

/// Marks a handle as kq's, and its layout's version.
const MAGIC: &[u8; 4] = b"kqp1";

/// A prepared statement as its handle carries it.
#[derive(Debug, Default, PartialEq)]
pub struct Prepared {
    pub sql: String,
    /// The bound values, one per parameter in order; empty until the client binds them.
    pub params: Vec<Value>,
    /// The bound batch as it came, so the next handle carries it again.
    bound: Option<Vec<u8>>,
}

impl Prepared {
    pub fn new(sql: String) -> Prepared {
        Prepared {
            sql,
            ..Prepared::default()
        }
    }

    /// The handle: magic, the SQL's length (u32, little-endian), the SQL, then the bound
    /// batch as an Arrow IPC stream, if any.
    pub fn handle(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.sql.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.sql.len() as u32).to_le_bytes());
        out.extend_from_slice(self.sql.as_bytes());
        if let Some(b) = &self.bound {
            out.extend_from_slice(b);
        }
        out
    }

    /// Reads a handle back.
    pub fn from_handle(handle: &[u8]) -> Result<Prepared, Status> {
        let not_ours = || Status::invalid_argument("the prepared statement handle is not kq's");
        let rest = handle.strip_prefix(MAGIC).ok_or_else(not_ours)?;
        let len: [u8; 4] = rest
            .get(..4)
            .and_then(|l| l.try_into().ok())
            .ok_or_else(not_ours)?;
        let len = u32::from_le_bytes(len) as usize;
        let sql = rest.get(4..4 + len).ok_or_else(not_ours)?;
        let sql = String::from_utf8(sql.to_vec()).map_err(|_| not_ours())?;
        let ipc = &rest[4 + len..];
        let mut prepared = Prepared::new(sql);
        if !ipc.is_empty() {
            let batches = StreamReader::try_new(ipc, None)
                .and_then(|r| r.collect::<Result<Vec<_>, _>>())
                .map_err(|_| not_ours())?;
            prepared.bind(&batches)?;
        }
        Ok(prepared)
    }

    /// Binds the parameter values a client sent with DoPut: one row, one column per
    /// parameter.
    pub fn bind(&mut self, batches: &[RecordBatch]) -> Result<(), Status> {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
            self.params.clear();
            self.bound = None;
            return Ok(());
        };
        if rows > 1 {
            return Err(Status::invalid_argument(format!(
                "kqd binds one set of parameters to a query; this binding has {rows} rows"
            )));
        }
        self.params = (0..batch.num_columns())
            .map(|i| value_at(batch.column(i).as_ref(), 0))
            .collect::<Result<_, _>>()?;
        let mut ipc = Vec::new();
        let mut w = StreamWriter::try_new(&mut ipc, &batch.schema())
            .map_err(|e| Status::internal(format!("encoding the parameters: {e}")))?;
        w.write(batch)
            .and_then(|_| w.finish())
            .map_err(|e| Status::internal(format!("encoding the parameters: {e}")))?;
        drop(w);
        self.bound = Some(ipc);
        Ok(())
    }
}

/// The parameter schema a client is told at prepare time: DuckDB names the parameters but
/// not their types before values are bound, and casts a text value to whatever type the
/// statement needs, so every parameter is announced as nullable text.
pub fn parameter_schema(names: &[String]) -> Schema {
    Schema::new(
        names
            .iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    )
}

/// One Arrow value as a DuckDB value. Types without a direct equivalent go as their text,
/// which DuckDB casts where the statement needs another type.
fn value_at(a: &dyn Array, i: usize) -> Result<Value, Status> {
    if a.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match a.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Boolean(a.as_boolean().value(i)),
        DataType::Int8 => Value::TinyInt(a.as_primitive::<Int8Type>().value(i)),
        DataType::Int16 => Value::SmallInt(a.as_primitive::<Int16Type>().value(i)),
        DataType::Int32 => Value::Int(a.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => Value::BigInt(a.as_primitive::<Int64Type>().value(i)),
        DataType::UInt8 => Value::UTinyInt(a.as_primitive::<UInt8Type>().value(i)),
        DataType::UInt16 => Value::USmallInt(a.as_primitive::<UInt16Type>().value(i)),
        DataType::UInt32 => Value::UInt(a.as_primitive::<UInt32Type>().value(i)),
        DataType::UInt64 => Value::UBigInt(a.as_primitive::<UInt64Type>().value(i)),
        DataType::Float32 => Value::Float(a.as_primitive::<Float32Type>().value(i)),
        DataType::Float64 => Value::Double(a.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => Value::Text(a.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Value::Text(a.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Value::Text(a.as_string_view().value(i).to_string()),
        DataType::Binary => Value::Blob(a.as_binary::<i32>().value(i).to_vec()),
        DataType::LargeBinary => Value::Blob(a.as_binary::<i64>().value(i).to_vec()),
        DataType::Date32 => Value::Date32(a.as_primitive::<Date32Type>().value(i)),
        DataType::Timestamp(unit, _) => Value::Timestamp(duck_unit(unit), timestamp_at(a, i, unit)),
        DataType::Decimal128(_, scale) => {
            let v = a.as_primitive::<Decimal128Type>().value(i);
            Value::Text(Decimal128Type::format_decimal(v, 38, *scale))
        }
        _ => {
            let text = duckdb::arrow::util::display::array_value_to_string(a, i)
                .map_err(|e| Status::invalid_argument(format!("a parameter value: {e}")))?;
            Value::Text(text)
        }
    })
}

fn timestamp_at(a: &dyn Array, i: usize, unit: &TimeUnit) -> i64 {
    use duckdb::arrow::datatypes::{
        TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    match unit {
        TimeUnit::Second => a.as_primitive::<TimestampSecondType>().value(i),
        TimeUnit::Millisecond => a.as_primitive::<TimestampMillisecondType>().value(i),
        TimeUnit::Microsecond => a.as_primitive::<TimestampMicrosecondType>().value(i),
        TimeUnit::Nanosecond => a.as_primitive::<TimestampNanosecondType>().value(i),
    }
}

fn duck_unit(unit: &TimeUnit) -> DuckUnit {
    match unit {
        TimeUnit::Second => DuckUnit::Second,
        TimeUnit::Millisecond => DuckUnit::Millisecond,
        TimeUnit::Microsecond => DuckUnit::Microsecond,
        TimeUnit::Nanosecond => DuckUnit::Nanosecond,
    }
}

/// The schema as Flight SQL wants it at prepare time: IPC-encoded.
pub fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    use arrow_flight::{IpcMessage, SchemaAsIpc};
    let IpcMessage(b) = SchemaAsIpc::new(
        schema,
        &duckdb::arrow::ipc::writer::IpcWriteOptions::default(),
    )
    .try_into()
    .map_err(|e: duckdb::arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(b)
}

/// A batch for tests and for the empty parameter set.
#[cfg(test)]
fn one_row(fields: Vec<(&str, std::sync::Arc<dyn Array>)>) -> RecordBatch {
    RecordBatch::try_from_iter(fields).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use duckdb::arrow::array::{BooleanArray, Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn a_handle_carries_the_sql_and_the_bound_values() {
        let mut p = Prepared::new("select * from pods where context = ? and restarts > ?".into());
        assert_eq!(Prepared::from_handle(&p.handle()).unwrap(), p);
        p.bind(&[one_row(vec![
            ("1", Arc::new(StringArray::from(vec!["sim-1"]))),
            ("2", Arc::new(Int64Array::from(vec![3]))),
        ])])
        .unwrap();
        let back = Prepared::from_handle(&p.handle()).unwrap();
        assert_eq!(back.sql, p.sql);
        assert_eq!(
            back.params,
            vec![Value::Text("sim-1".into()), Value::BigInt(3)]
        );
    }

    #[test]
    fn nulls_and_booleans_bind_as_themselves() {
        let mut p = Prepared::new("select ?, ?".into());
        p.bind(&[one_row(vec![
            ("1", Arc::new(BooleanArray::from(vec![true]))),
            ("2", Arc::new(StringArray::from(vec![None::<&str>]))),
        ])])
        .unwrap();
        assert_eq!(p.params, vec![Value::Boolean(true), Value::Null]);
    }

    #[test]
    fn several_parameter_rows_are_refused_with_a_reason() {
        let mut p = Prepared::new("select ?".into());
        let e = p
            .bind(&[one_row(vec![("1", Arc::new(Int64Array::from(vec![1, 2])))])])
            .unwrap_err();
        assert!(e.message().contains("2 rows"), "{}", e.message());
    }

    #[test]
    fn a_foreign_handle_is_refused() {
        assert!(Prepared::from_handle(b"select 1").is_err());
        assert!(Prepared::from_handle(b"kqp1\xff\xff\xff\xffselect").is_err());
    }
}
