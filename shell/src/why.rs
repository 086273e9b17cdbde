//! `kq why <incident>`: the incident, the last lines its container logged (when kqd fetched
//! them), then the changes behind it (the `incident_changes` view, with the look-back window
//! asked for), its workload's own changes first.

use crate::client::Client;
use crate::format::{Display, Format, Target};

/// A window such as `30m`, `2h`, `90s` or `1d`, as DuckDB's interval.
pub fn window(text: &str) -> Result<String, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("--window {text:?}: give a number and a unit, e.g. 30m"))?;
    let unit = match unit {
        "s" => "SECOND",
        "m" | "" => "MINUTE",
        "h" => "HOUR",
        "d" => "DAY",
        other => {
            return Err(format!(
                "--window {text:?}: unknown unit {other:?}; use s, m, h or d"
            ));
        }
    };
    Ok(format!("INTERVAL {n} {unit}"))
}

/// The SQL of the changes behind `id`, closest first.
pub fn changes_sql(id: &str, window: &str) -> String {
    format!(
        "SELECT rank, relation, round(seconds_before) AS seconds_before, kind, namespace, name, operation, diff \
         FROM ({}) WHERE incident_id = '{}' ORDER BY rank, changed_at DESC",
        kq_schema::incident_changes_sql(window),
        id.replace('\'', "''")
    )
}

/// Prints the incident and the changes behind it. Returns the exit status.
pub async fn run(client: &mut Client, id: &str, window_text: &str, format: Format) -> i32 {
    let window = match window(window_text) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("kq: {e}");
            return 1;
        }
    };
    let display = Display::new(format);
    let target = Target::for_stdout();
    let mut out = std::io::stdout().lock();
    let quoted = id.replace('\'', "''");
    let found = client
        .query(&format!(
            "SELECT count(*) FROM incidents WHERE id = '{quoted}'"
        ))
        .await;
    match found {
        Ok(r) if r.rows() == 1 && first_count(&r) == Some(0) => {
            eprintln!("kq: no incident {id:?}; `kq incidents` lists them");
            return 1;
        }
        Err(e) => {
            eprintln!("kq: {e}");
            return e.exit_code();
        }
        Ok(_) => {}
    }
    // A table shows the log as text under the incident; other formats carry it as a field.
    let table = format == Format::Table;
    let incident = format!(
        "SELECT first_seen, severity, context, namespace, object_kind, object_name, controller, container, type, reason, exit_code, occurrences{} \
         FROM incidents WHERE id = '{quoted}'",
        if table { "" } else { ", last_log" }
    );
    if let Err(e) = crate::run_statement(client, &incident, &display, target, &mut out).await {
        return e.report();
    }
    if table {
        let sql = format!("SELECT last_log FROM incidents WHERE id = '{quoted}'");
        match client.query(&sql).await {
            Ok(r) => {
                if let Some(log) = first_text(&r) {
                    let _ = write_log(&mut out, &log);
                }
            }
            Err(e) => {
                eprintln!("kq: {e}");
                return e.exit_code();
            }
        }
    }
    if let Err(e) = crate::run_statement(
        client,
        &changes_sql(id, &window),
        &display,
        target,
        &mut out,
    )
    .await
    {
        return e.report();
    }
    0
}

/// The log under a heading, indented, as `kubectl logs` would print it.
fn write_log(out: &mut impl std::io::Write, log: &str) -> std::io::Result<()> {
    writeln!(out, "Last log lines:")?;
    for line in log.lines() {
        writeln!(out, "  {line}")?;
    }
    writeln!(out)
}

/// The first column of the first row as text, unless NULL.
fn first_text(r: &crate::client::QueryResult) -> Option<String> {
    use arrow::array::Array as _;
    let b = r.batches.iter().find(|b| b.num_rows() > 0)?;
    let col = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).ok()?;
    let col = col.as_any().downcast_ref::<arrow::array::StringArray>()?;
    (!col.is_null(0)).then(|| col.value(0).to_string())
}

fn first_count(r: &crate::client::QueryResult) -> Option<i64> {
    use arrow::array::AsArray as _;
    let b = r.batches.first()?;
    let col = b
        .column(0)
        .as_primitive_opt::<arrow::datatypes::Int64Type>()?;
    Some(col.value(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_as_intervals() {
        assert_eq!(window("30m").unwrap(), "INTERVAL 30 MINUTE");
        assert_eq!(window("2h").unwrap(), "INTERVAL 2 HOUR");
        assert_eq!(window("45").unwrap(), "INTERVAL 45 MINUTE");
        assert!(window("soon").is_err());
        assert!(window("3w").is_err());
        assert!(changes_sql("x'y", "INTERVAL 1 HOUR").contains("'x''y'"));
        assert!(changes_sql("x", "INTERVAL 1 HOUR").contains("- INTERVAL 1 HOUR"));
    }
}
