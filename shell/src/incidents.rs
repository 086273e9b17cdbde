//! `kq incidents` and `.follow`: the open incidents, then (with `--follow`) new and updated
//! ones as kqd records them.

use std::io::Write as _;

use arrow::array::{Array, RecordBatch};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::StreamExt as _;
use kq_schema::follow::FollowIncidents;

use crate::client::{Client, ClientError};
use crate::format::{self, Format};

/// The open incidents matching `filter`, newest first, as SQL.
pub fn open_sql(filter: &FollowIncidents) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut sql = String::from(
        "SELECT last_seen, severity, context, namespace, object_kind, object_name, container, type, reason, exit_code, signal, occurrences, message, \
         list_filter(string_split(last_log, chr(10)), lambda l: trim(l) <> '')[-1] AS last_line, id, \
         (SELECT ic.kind || '/' || ic.name || ' ' \
                 || coalesce((ic.diff->0->>'path') || ' ' || coalesce(ic.diff->0->>'old', '∅') || ' → ' || coalesce(ic.diff->0->>'new', '∅'), ic.operation) \
                 || ', ' || CAST(greatest(round(ic.seconds_before / 60), 0) AS BIGINT) || 'm before' \
          FROM incident_changes ic WHERE ic.incident_id = incidents.id AND ic.rank <= 4 \
            AND (ic.spec_changed OR ic.operation = 'delete') \
          ORDER BY ic.rank, ic.changed_at DESC LIMIT 1) AS suspect \
         FROM incidents WHERE resolved_at IS NULL",
    );
    if let Some(c) = &filter.context {
        sql.push_str(&format!(" AND context = {}", quote(c)));
    }
    if let Some(n) = &filter.namespace {
        sql.push_str(&format!(" AND namespace = {}", quote(n)));
    }
    if let Some(m) = &filter.min_severity {
        let rank = kq_schema::incidents::severity_rank(m);
        let allowed: Vec<String> = kq_schema::incidents::SEVERITIES[..=rank.min(3)]
            .iter()
            .map(|s| quote(s))
            .collect();
        sql.push_str(&format!(" AND severity IN ({})", allowed.join(", ")));
    }
    sql.push_str(" ORDER BY last_seen DESC");
    sql
}

/// Prints the open incidents, then follows if asked; runs until the stream ends, an error,
/// or Ctrl-C. Returns the exit status.
pub async fn run(
    client: &mut Client,
    filter: &FollowIncidents,
    follow: bool,
    format: Format,
) -> i32 {
    let display = format::Display::new(format);
    let target = format::Target::for_stdout();
    let mut out = std::io::stdout().lock();
    match crate::run_statement(client, &open_sql(filter), &display, target, &mut out).await {
        Ok(_) => {}
        Err(e) => return e.report(),
    }
    drop(out);
    if !follow {
        return 0;
    }
    match follow_until_interrupted(client, filter, format).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kq: {e}");
            e.exit_code()
        }
    }
}

/// Streams incidents to stdout until Ctrl-C (then returns Ok) or the stream fails.
pub async fn follow_until_interrupted(
    client: &mut Client,
    filter: &FollowIncidents,
    format: Format,
) -> Result<(), ClientError> {
    let mut stream = Box::pin(client.follow_incidents(filter).await?);
    eprintln!("following incidents; Ctrl-C stops");
    let mut first = true;
    loop {
        let batch = tokio::select! {
            b = stream.next() => b,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(batch) = batch else { return Ok(()) };
        let batch = batch?;
        let mut out = std::io::stdout().lock();
        let written = match format {
            Format::Table | Format::Line | Format::Markdown => write_lines(&mut out, &batch),
            // A stream has no end to close a JSON array at: one object per line.
            Format::Json | Format::Jsonl => {
                let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
                w.write(&batch)
                    .and_then(|_| w.finish())
                    .map_err(std::io::Error::other)
            }
            Format::Csv => arrow::csv::WriterBuilder::new()
                .with_header(first)
                .build(&mut out)
                .write(&batch)
                .map_err(std::io::Error::other),
        };
        first = false;
        if written.and_then(|_| out.flush()).is_err() {
            return Ok(()); // stdout closed (a pipe to `head`, say)
        }
    }
}

/// One line per incident: when, severity, where, what, how often, and the message.
fn write_lines(out: &mut impl std::io::Write, b: &RecordBatch) -> std::io::Result<()> {
    let opts = FormatOptions::default();
    let col = |name: &str| -> Option<ArrayFormatter<'_>> {
        let a = b.column_by_name(name)?;
        ArrayFormatter::try_new(a.as_ref(), &opts).ok()
    };
    let cell = |name: &str, row: usize| -> String {
        match (b.column_by_name(name), col(name)) {
            (Some(a), Some(f)) if !a.is_null(row) => f.value(row).to_string(),
            _ => String::new(),
        }
    };
    for row in 0..b.num_rows() {
        let ns = cell("namespace", row);
        let object = if ns.is_empty() {
            format!("{}/{}", cell("object_kind", row), cell("object_name", row))
        } else {
            format!(
                "{}/{}/{}",
                ns,
                cell("object_kind", row),
                cell("object_name", row)
            )
        };
        let container = cell("container", row);
        let exit = cell("exit_code", row);
        let state = if cell("resolved_at", row).is_empty() {
            "open"
        } else {
            "ended"
        };
        writeln!(
            out,
            "{}  {:<8} {:<5} {}  {}{}  {}{}{}  ×{}  {}  [{}]",
            cell("last_seen", row),
            cell("severity", row),
            state,
            cell("context", row),
            object,
            if container.is_empty() {
                String::new()
            } else {
                format!(" [{container}]")
            },
            cell("type", row),
            if exit.is_empty() {
                String::new()
            } else {
                format!(" exit {exit}")
            },
            match cell("signal", row) {
                s if s.is_empty() => String::new(),
                s => format!(" {s}"),
            },
            cell("occurrences", row),
            cell("message", row),
            cell("id", row),
        )?;
    }
    Ok(())
}
