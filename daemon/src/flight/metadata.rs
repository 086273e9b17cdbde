//! What Flight SQL clients ask about the database rather than of it: server info, the
//! catalog and schema, tables with their columns (described from kq-schema's catalog), table
//! types, primary keys (none: kq's tables are keyed by convention, not constraints) and the
//! SQL types kq's columns use.

use std::sync::LazyLock;

use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{Nullable, Searchable, SqlInfo, XdbcDataType};
use duckdb::arrow::datatypes::{Field, Schema};

/// The database (catalog) name clients see.
pub const CATALOG: &str = "kq";
/// The one schema.
pub const SCHEMA: &str = "main";
/// The table types GetTableTypes lists.
pub const TABLE_TYPES: &[&str] = &["TABLE", "VIEW"];

pub static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "kqd");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.build().expect("static SqlInfo builds")
});

/// The SQL types kq's catalog uses, as GetXdbcTypeInfo describes them.
pub static XDBC_TYPES: LazyLock<XdbcTypeInfoData> = LazyLock::new(|| {
    let mut b = XdbcTypeInfoDataBuilder::new();
    let types = [
        ("BOOLEAN", XdbcDataType::XdbcBit, Some(1)),
        ("INTEGER", XdbcDataType::XdbcInteger, Some(32)),
        ("BIGINT", XdbcDataType::XdbcBigint, Some(64)),
        ("DOUBLE", XdbcDataType::XdbcDouble, Some(53)),
        ("VARCHAR", XdbcDataType::XdbcVarchar, None),
        ("JSON", XdbcDataType::XdbcVarchar, None),
        ("TIMESTAMPTZ", XdbcDataType::XdbcTimestamp, None),
    ];
    for (name, data_type, column_size) in types {
        let text = matches!(data_type, XdbcDataType::XdbcVarchar);
        b.append(XdbcTypeInfo {
            type_name: name.into(),
            data_type,
            column_size,
            literal_prefix: text.then(|| "'".into()),
            literal_suffix: text.then(|| "'".into()),
            create_params: None,
            nullable: Nullable::NullabilityNullable,
            case_sensitive: text,
            searchable: Searchable::Full,
            unsigned_attribute: (!text).then_some(false),
            fixed_prec_scale: false,
            auto_increment: None,
            local_type_name: Some(name.into()),
            minimum_scale: None,
            maximum_scale: None,
            sql_data_type: data_type,
            datetime_subcode: None,
            num_prec_radix: None,
            interval_precision: None,
        });
    }
    b.build().expect("static XdbcTypeInfo builds")
});

/// A table's schema as DuckDB answers it, with each column described from the catalog in
/// the field metadata Flight SQL defines (`ARROW:FLIGHT:SQL:REMARKS` and friends), which
/// ADBC's get_objects and JDBC's getColumns turn into column remarks.
pub fn described(table: &kq_schema::Table, schema: &Schema) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let mut meta = f.metadata().clone();
            meta.extend([
                ("ARROW:FLIGHT:SQL:CATALOG_NAME", CATALOG),
                ("ARROW:FLIGHT:SQL:SCHEMA_NAME", SCHEMA),
                ("ARROW:FLIGHT:SQL:TABLE_NAME", table.name),
                ("ARROW:FLIGHT:SQL:IS_READ_ONLY", "1"),
            ]);
            if let Some(c) = table.columns.iter().find(|c| c.name == f.name()) {
                meta.extend([
                    ("ARROW:FLIGHT:SQL:TYPE_NAME", c.sql_type),
                    ("ARROW:FLIGHT:SQL:REMARKS", c.description),
                ]);
            }
            f.as_ref().clone().with_metadata(meta)
        })
        .collect();
    Schema::new(fields)
}

/// The catalog tables a GetTables request can match, before the builder's own filtering:
/// skipping the rest spares a DuckDB round trip per table.
pub fn candidate_tables(
    name_pattern: Option<&str>,
) -> impl Iterator<Item = &'static kq_schema::Table> {
    let pattern = name_pattern.map(str::to_owned);
    kq_schema::CATALOG.iter().filter(move |t| {
        pattern
            .as_deref()
            .is_none_or(|p| kq_schema::sql::like(t.name, p))
    })
}

/// The result schema of GetPrimaryKeys, as Flight SQL defines it.
pub fn primary_keys_schema() -> Schema {
    use duckdb::arrow::datatypes::DataType;
    Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ])
}

/// The type of a catalog table, as GetTables reports it.
pub fn table_type(t: &kq_schema::Table) -> &'static str {
    if t.view.is_some() { "VIEW" } else { "TABLE" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duckdb::arrow::datatypes::DataType;

    #[test]
    fn columns_carry_their_catalog_description() {
        let pods = kq_schema::CATALOG
            .iter()
            .find(|t| t.name == "pods")
            .unwrap();
        let schema = Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("not_in_catalog", DataType::Utf8, true),
        ]);
        let got = described(pods, &schema);
        let name = got.field(0).metadata();
        let want = pods.columns.iter().find(|c| c.name == "name").unwrap();
        assert_eq!(name["ARROW:FLIGHT:SQL:REMARKS"], want.description);
        assert_eq!(name["ARROW:FLIGHT:SQL:TYPE_NAME"], "VARCHAR");
        assert!(
            got.field(1)
                .metadata()
                .get("ARROW:FLIGHT:SQL:REMARKS")
                .is_none()
        );
    }

    #[test]
    fn a_name_pattern_narrows_the_tables_asked_of_duckdb() {
        let names: Vec<_> = candidate_tables(Some("pod%")).map(|t| t.name).collect();
        assert!(names.contains(&"pods"), "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("pod")));
        assert_eq!(
            candidate_tables(None).count(),
            kq_schema::CATALOG.iter().count()
        );
    }
}
