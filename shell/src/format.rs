//! Result output: a table for people, CSV, a JSON array, or JSON lines for programs.

use std::io::Write;

use arrow::util::display::FormatOptions;

use crate::client::QueryResult;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Jsonl,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" | "box" | "duckbox" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "jsonl" | "jsonlines" | "ndjson" => Ok(Format::Jsonl),
            other => Err(format!(
                "unknown mode {other:?}: use table, csv, json or jsonl"
            )),
        }
    }
}

/// Writes a result in the given format.
pub fn write(
    out: &mut dyn Write,
    r: &QueryResult,
    format: Format,
) -> Result<(), arrow::error::ArrowError> {
    match format {
        Format::Table => {
            let opts = FormatOptions::default().with_null("NULL");
            if r.batches.is_empty() {
                let empty = arrow::record_batch::RecordBatch::new_empty(r.schema.clone());
                writeln!(
                    out,
                    "{}",
                    arrow::util::pretty::pretty_format_batches_with_options(&[empty], &opts)?
                )?;
            } else {
                writeln!(
                    out,
                    "{}",
                    arrow::util::pretty::pretty_format_batches_with_options(&r.batches, &opts)?
                )?;
            }
            let n = r.rows();
            writeln!(out, "({n} row{})", if n == 1 { "" } else { "s" })?;
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            if r.batches.is_empty() {
                w.write(&arrow::record_batch::RecordBatch::new_empty(
                    r.schema.clone(),
                ))?;
            }
            for b in &r.batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::ArrayWriter::new(&mut *out);
            for b in &r.batches {
                w.write(b)?;
            }
            // The writer prints `[]` for no rows by itself.
            w.finish()?;
            writeln!(out)?;
        }
        Format::Jsonl => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut *out);
            for b in &r.batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}
