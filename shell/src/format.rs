//! Result output. For programs, CSV, a JSON array and JSON lines stream: each batch is
//! written as it arrives, so a result of any size passes through in flat memory. For people,
//! a box table (`table.rs`), expanded records, `name = value` lines or Markdown; at a
//! terminal the box table is fitted to its width and capped at `.maxrows` rows (its first
//! and last), while in scripts and pipes nothing is ever cut.

use std::io::Write;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::{Stream, StreamExt as _};

use crate::client::ClientError;
use crate::table::{self, Keep, Rows};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Jsonl,
    Line,
    Markdown,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" | "box" | "duckbox" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "jsonl" | "jsonlines" | "ndjson" => Ok(Format::Jsonl),
            "line" => Ok(Format::Line),
            "markdown" | "md" => Ok(Format::Markdown),
            other => Err(format!(
                "unknown mode {other:?}: use table, csv, json, jsonl, line or markdown"
            )),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Table => "table",
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Jsonl => "jsonl",
            Format::Line => "line",
            Format::Markdown => "markdown",
        })
    }
}

/// psql's `\x`: expanded records always, never, or when a table would not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expanded {
    Off,
    On,
    Auto,
}

/// How results look: the shell's dot commands change these.
#[derive(Debug, Clone)]
pub struct Display {
    pub format: Format,
    /// Rows a table at a terminal shows at most (`.maxrows`; 0: all).
    pub max_rows: usize,
    /// Columns a table at a terminal may use (`.maxwidth`; 0: the terminal's width).
    pub max_width: usize,
    pub expanded: Expanded,
    /// What NULL shows as in tables, lines and Markdown (`.nullvalue`).
    pub null: String,
}

impl Display {
    pub fn new(format: Format) -> Display {
        Display {
            format,
            max_rows: 40,
            max_width: 0,
            expanded: Expanded::Off,
            null: "NULL".into(),
        }
    }
}

/// Where output goes: a person's terminal of some width, or a script, pipe or file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Terminal { width: usize },
    Plain,
}

impl Target {
    /// A terminal when stdout is one, of its width; otherwise plain.
    pub fn for_stdout() -> Target {
        use std::io::IsTerminal as _;
        if !std::io::stdout().is_terminal() {
            return Target::Plain;
        }
        Target::Terminal {
            width: terminal_size().map_or(80, |(w, _)| w),
        }
    }
}

/// The terminal's (columns, rows), if stdout is one.
pub fn terminal_size() -> Option<(usize, usize)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (ws.ws_col > 0).then_some((ws.ws_col as usize, ws.ws_row as usize))
}

/// Why a result was not written whole.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot write the result: {0}")]
    Output(#[from] arrow::error::ArrowError),
    #[error("cannot write the result: {0}")]
    Io(#[from] std::io::Error),
}

impl WriteError {
    /// Says on stderr what went wrong and gives the exit status: 0 for a closed pipe (the
    /// reader's choice), 2 when kqd cannot be reached, else 1.
    pub fn report(&self) -> i32 {
        if self.is_broken_pipe() {
            return 0;
        }
        eprintln!("kq: {self}");
        match self {
            WriteError::Client(e) => e.exit_code(),
            _ => 1,
        }
    }

    /// A closed pipe (`kq … | head`) is the reader's choice, not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        let io = match self {
            WriteError::Io(e) => Some(e),
            WriteError::Output(arrow::error::ArrowError::IoError(_, e)) => Some(e),
            _ => None,
        };
        io.is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// Writes a result as its batches arrive. Returns the number of rows.
pub async fn write_stream<S>(
    out: &mut dyn Write,
    schema: SchemaRef,
    mut batches: S,
    display: &Display,
    target: Target,
) -> Result<usize, WriteError>
where
    S: Stream<Item = Result<RecordBatch, ClientError>> + Unpin,
{
    let mut n = 0;
    match display.format {
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            let mut wrote = false;
            while let Some(b) = batches.next().await {
                let b = b?;
                n += b.num_rows();
                w.write(&b)?;
                wrote = true;
            }
            if !wrote {
                // The header alone.
                w.write(&RecordBatch::new_empty(schema))?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::ArrayWriter::new(&mut *out);
            while let Some(b) = batches.next().await {
                let b = b?;
                n += b.num_rows();
                w.write(&b)?;
            }
            // The writer prints `[]` for no rows by itself.
            w.finish()?;
            writeln!(out)?;
        }
        Format::Jsonl => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut *out);
            while let Some(b) = batches.next().await {
                let b = b?;
                n += b.num_rows();
                w.write(&b)?;
            }
            w.finish()?;
        }
        Format::Table | Format::Line | Format::Markdown => {
            let capped = matches!(target, Target::Terminal { .. })
                && display.format == Format::Table
                && display.max_rows > 0;
            let keep = Keep {
                max_rows: capped.then_some(display.max_rows),
                null: display.null.clone(),
            };
            let mut rows = Rows::new(schema, &keep);
            while let Some(b) = batches.next().await {
                rows.push(&b?)?;
            }
            n = rows.total();
            out.write_all(render(&rows, display, target).as_bytes())?;
        }
    }
    out.flush()?;
    Ok(n)
}

/// Draws collected rows as the display asks.
fn render(rows: &Rows, display: &Display, target: Target) -> String {
    let width = match target {
        Target::Terminal { .. } if display.max_width > 0 => Some(display.max_width),
        Target::Terminal { width } => Some(width),
        Target::Plain => None,
    };
    match display.format {
        Format::Line => table::lines(rows),
        Format::Markdown => table::markdown(rows),
        _ => match (display.expanded, width) {
            (Expanded::On, _) => table::expanded(rows, width),
            (Expanded::Auto, Some(w)) => {
                let natural = table::boxed(rows, None);
                if natural
                    .lines()
                    .any(|l| unicode_width::UnicodeWidthStr::width(l) > w)
                {
                    table::expanded(rows, width)
                } else {
                    natural
                }
            }
            _ => table::boxed(rows, width),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use std::sync::Arc;

    fn stream(
        n: i64,
    ) -> (
        SchemaRef,
        impl Stream<Item = Result<RecordBatch, ClientError>> + Unpin,
    ) {
        let b = RecordBatch::try_from_iter([(
            "n",
            Arc::new(Int64Array::from_iter_values(0..n)) as Arc<dyn Array>,
        )])
        .unwrap();
        let schema = b.schema();
        (
            schema,
            futures::stream::iter((0..10).map(move |_| Ok(b.clone()))),
        )
    }

    async fn written(format: Format, target: Target) -> String {
        let (schema, s) = stream(100);
        let mut out = Vec::new();
        let n = write_stream(&mut out, schema, s, &Display::new(format), target)
            .await
            .unwrap();
        assert_eq!(n, 1000);
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn scripts_get_every_row_and_terminals_a_capped_table() {
        let plain = written(Format::Table, Target::Plain).await;
        assert!(plain.contains("1,000 rows\n"), "{plain}");
        assert_eq!(plain.lines().filter(|l| l.starts_with("│")).count(), 1002);
        let screen = written(Format::Table, Target::Terminal { width: 80 }).await;
        assert!(screen.contains("1,000 rows (40 shown)"), "{screen}");
        let csv = written(Format::Csv, Target::Terminal { width: 80 }).await;
        assert_eq!(csv.lines().count(), 1001);
        let jsonl = written(Format::Jsonl, Target::Terminal { width: 80 }).await;
        assert_eq!(jsonl.lines().count(), 1000);
    }

    #[tokio::test]
    async fn expanded_auto_is_used_only_when_the_table_would_not_fit() {
        let b = RecordBatch::try_from_iter([(
            "a_rather_long_column_name",
            Arc::new(Int64Array::from(vec![1])) as Arc<dyn Array>,
        )])
        .unwrap();
        let mut display = Display::new(Format::Table);
        display.expanded = Expanded::Auto;
        for (width, expanded) in [(80, false), (20, true)] {
            let mut out = Vec::new();
            let s = futures::stream::iter([Ok(b.clone())]);
            write_stream(
                &mut out,
                b.schema(),
                s,
                &display,
                Target::Terminal { width },
            )
            .await
            .unwrap();
            let out = String::from_utf8(out).unwrap();
            assert_eq!(out.contains("-[ RECORD 1 ]"), expanded, "{width}: {out}");
        }
    }

    #[test]
    fn modes_parse_by_their_names_and_aliases() {
        assert_eq!("duckbox".parse::<Format>(), Ok(Format::Table));
        assert_eq!("md".parse::<Format>(), Ok(Format::Markdown));
        assert_eq!("line".parse::<Format>(), Ok(Format::Line));
        assert!("html".parse::<Format>().is_err());
    }
}
