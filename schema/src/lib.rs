//! kq-schema: the catalog of every kq table and column, and the versioned DuckDB migrations
//! generated from it. kqd creates its tables from here; kq uses it for `.tables`, `.schema`
//! and completion, so both always agree on what exists.

mod catalog;
pub mod follow;
pub mod incidents;
mod key;
mod migrations;
pub mod paths;
pub mod reference;
pub mod sql;

pub use catalog::{CATALOG, Column, INCIDENT_WINDOW, Table, incident_changes_sql, table};
pub use key::{object_key, object_key_sql};
pub use migrations::{MIGRATIONS, Migration, SCHEMA_VERSION, create_table_sql};
