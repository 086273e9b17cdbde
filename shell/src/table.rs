//! Results for people: rows collected as display strings with a bounded memory (the first
//! and last rows past a cap, and a count), then drawn as a box table fitted to the terminal
//! (DuckDB's duckbox is the model), as expanded records (`\x`), as `name = value` lines, or
//! as a Markdown table.

use std::collections::VecDeque;

use arrow::array::Array;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use unicode_width::{UnicodeWidthChar as _, UnicodeWidthStr as _};

/// How many rows to keep, and how cells are spelt.
#[derive(Debug, Clone)]
pub struct Keep {
    /// Keep at most this many rows: the first half and the last half. `None` keeps all.
    pub max_rows: Option<usize>,
    /// What a NULL cell shows.
    pub null: String,
}

/// A result's rows as display strings: all of them, or the first and last past a cap.
pub struct Rows {
    pub schema: SchemaRef,
    head: Vec<Vec<Option<String>>>,
    tail: VecDeque<Vec<Option<String>>>,
    head_cap: usize,
    tail_cap: usize,
    total: usize,
    numeric: Vec<bool>,
    null: String,
}

impl Rows {
    pub fn new(schema: SchemaRef, keep: &Keep) -> Rows {
        let (head_cap, tail_cap) = match keep.max_rows {
            None => (usize::MAX, 0),
            Some(n) => (n - n / 2, n / 2),
        };
        let numeric = schema
            .fields()
            .iter()
            .map(|f| f.data_type().is_numeric())
            .collect();
        Rows {
            schema,
            head: Vec::new(),
            tail: VecDeque::new(),
            head_cap,
            tail_cap,
            total: 0,
            numeric,
            null: keep.null.clone(),
        }
    }

    /// Takes one batch; rows that fall between the head and the tail are only counted.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<(), arrow::error::ArrowError> {
        let opts = FormatOptions::default();
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<_, _>>()?;
        let n = batch.num_rows();
        // Only rows that can still be shown are formatted: the head's room, then the last
        // `tail_cap` rows of the batch.
        let head_room = self.head_cap.saturating_sub(self.head.len()).min(n);
        let tail_from = n.saturating_sub(self.tail_cap).max(head_room);
        let cells = |row: usize| -> Vec<Option<String>> {
            batch
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(col, f)| (!col.is_null(row)).then(|| f.value(row).to_string()))
                .collect()
        };
        for row in 0..head_room {
            self.head.push(cells(row));
        }
        for row in tail_from..n {
            if self.tail_cap == 0 {
                break;
            }
            if self.tail.len() == self.tail_cap {
                self.tail.pop_front();
            }
            self.tail.push_back(cells(row));
        }
        self.total += n;
        Ok(())
    }

    pub fn total(&self) -> usize {
        self.total
    }

    fn shown(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    fn elided(&self) -> bool {
        self.total > self.shown()
    }

    fn cell<'a>(&'a self, c: &'a Option<String>) -> &'a str {
        c.as_deref().unwrap_or(&self.null)
    }

    fn names(&self) -> Vec<&str> {
        self.schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect()
    }

    /// The rows kept, in order, with `None` where rows were left out.
    fn kept(&self) -> impl Iterator<Item = Option<&Vec<Option<String>>>> {
        let gap = self.elided().then_some(None);
        self.head
            .iter()
            .map(Some)
            .chain(gap)
            .chain(self.tail.iter().map(Some))
    }

    /// The footer line: row and column counts, and how many of each are shown.
    fn footer(&self, columns_shown: usize) -> String {
        let n = self.total;
        let mut s = format!("{} row{}", thousands(n), if n == 1 { "" } else { "s" });
        if self.elided() {
            s.push_str(&format!(" ({} shown)", thousands(self.shown())));
        }
        let cols = self.schema.fields().len();
        if columns_shown < cols {
            s.push_str(&format!("  {cols} columns ({columns_shown} shown)"));
        }
        s
    }
}

/// Draws a box table no wider than `width` (None: as wide as the cells need). Columns wider
/// than their share are narrowed with `…`; when even narrow columns do not fit, middle
/// columns give way to a `…` column.
pub fn boxed(rows: &Rows, width: Option<usize>) -> String {
    let names = rows.names();
    let types: Vec<String> = rows
        .schema
        .fields()
        .iter()
        .map(|f| type_name(f.data_type()))
        .collect();
    let ncols = names.len();
    let mut natural: Vec<usize> = (0..ncols)
        .map(|i| names[i].width().max(types[i].width()))
        .collect();
    for row in rows.kept().flatten() {
        for (i, c) in row.iter().enumerate() {
            natural[i] = natural[i].max(display(rows.cell(c)).width());
        }
    }
    // A column is not narrowed below 16 or its header and type, so every column shown can
    // still be told by its name and read; columns that do not fit then are left out.
    let least: Vec<usize> = (0..ncols)
        .map(|i| {
            let label = names[i].width().max(types[i].width()).clamp(16, 24);
            natural[i].min(label)
        })
        .collect();
    let (shown, widths) = fit(&natural, &least, width);
    let mut out = String::new();
    let line = |out: &mut String, l: &str, m: &str, r: &str| {
        out.push_str(l);
        for (k, w) in widths.iter().enumerate() {
            out.push_str(&"─".repeat(w + 2));
            out.push_str(if k + 1 == widths.len() { r } else { m });
        }
        out.push('\n');
    };
    let cells = |out: &mut String, values: &[(&str, bool)]| {
        out.push('│');
        for ((v, right), w) in values.iter().zip(&widths) {
            out.push(' ');
            out.push_str(&pad(&truncate(v, *w), *w, *right));
            out.push_str(" │");
        }
        out.push('\n');
    };
    let pick = |all: &dyn Fn(usize) -> (String, bool)| -> Vec<(String, bool)> {
        shown
            .iter()
            .map(|c| match c {
                Some(i) => all(*i),
                None => ("…".to_string(), false),
            })
            .collect()
    };
    line(&mut out, "┌", "┬", "┐");
    let header = pick(&|i| (names[i].to_string(), false));
    cells(&mut out, &as_refs(&header));
    let typerow = pick(&|i| (types[i].clone(), false));
    cells(&mut out, &as_refs(&typerow));
    line(&mut out, "├", "┼", "┤");
    for row in rows.kept() {
        let values = match row {
            Some(r) => pick(&|i| (display(rows.cell(&r[i])), rows.numeric[i])),
            None => pick(&|_| ("·".to_string(), false)),
        };
        cells(&mut out, &as_refs(&values));
    }
    line(&mut out, "└", "┴", "┘");
    let columns_shown = shown.iter().flatten().count();
    out.push_str(&rows.footer(columns_shown));
    out.push('\n');
    out
}

fn as_refs(v: &[(String, bool)]) -> Vec<(&str, bool)> {
    v.iter().map(|(s, b)| (s.as_str(), *b)).collect()
}

/// Chooses the columns to show (`None` is the `…` column standing for those left out) and
/// their widths, so the table fits `width`.
fn fit(
    natural: &[usize],
    least: &[usize],
    width: Option<usize>,
) -> (Vec<Option<usize>>, Vec<usize>) {
    let all: Vec<Option<usize>> = (0..natural.len()).map(Some).collect();
    let Some(width) = width else {
        return (all, natural.to_vec());
    };
    // Each column costs its width plus three (" │" and the leading space), and the table
    // one more for its left edge.
    let cost = |ws: &[usize]| ws.iter().map(|w| w + 3).sum::<usize>() + 1;
    let min_width = |i: usize| least[i];
    let mut shown = all;
    loop {
        let cols: Vec<usize> = shown.iter().flatten().copied().collect();
        let mins: Vec<usize> = shown.iter().map(|c| c.map_or(1, min_width)).collect();
        if cost(&mins) <= width || cols.len() <= 1 {
            break;
        }
        // Leave out the middle column, as DuckDB does, keeping the first and last.
        let drop = cols[cols.len() / 2];
        let pos = shown.iter().position(|c| *c == Some(drop)).expect("shown");
        shown.remove(pos);
        if !shown.contains(&None) {
            let at = pos.min(shown.len());
            shown.insert(at, None);
        }
    }
    let mut widths: Vec<usize> = shown.iter().map(|c| c.map_or(1, |i| natural[i])).collect();
    // Narrow the widest column, one character at a time, until the table fits.
    while cost(&widths) > width {
        let (k, _) = widths
            .iter()
            .enumerate()
            .filter(|(k, w)| shown[*k].is_some_and(|i| **w > min_width(i)))
            .max_by_key(|(_, w)| **w)
            .unwrap_or((usize::MAX, &0));
        if k == usize::MAX {
            break;
        }
        widths[k] -= 1;
    }
    (shown, widths)
}

/// Expanded display (psql's `\x`): one `-[ RECORD n ]-` block per row, a column per line.
pub fn expanded(rows: &Rows, width: Option<usize>) -> String {
    let names = rows.names();
    let label = names.iter().map(|n| n.width()).max().unwrap_or(0);
    let value_width = width.map(|w| w.saturating_sub(label + 3).max(10));
    let mut out = String::new();
    let mut number = 0;
    for row in rows.kept() {
        let Some(row) = row else {
            let skipped = rows.total - rows.shown();
            out.push_str(&format!("… {} records not shown …\n", thousands(skipped)));
            number += skipped;
            continue;
        };
        number += 1;
        let title = format!("-[ RECORD {number} ]");
        let rule = width.unwrap_or(label + 20).saturating_sub(title.width());
        out.push_str(&title);
        out.push_str(&"-".repeat(rule.min(label + 20)));
        out.push('\n');
        for (name, c) in names.iter().zip(row) {
            let v = display(rows.cell(c));
            let v = match value_width {
                Some(w) => truncate(&v, w),
                None => v,
            };
            out.push_str(&format!("{} | {v}\n", pad(name, label, false)));
        }
    }
    out.push_str(&format!("({})\n", rows.footer(names.len())));
    out
}

/// DuckDB's `.mode line`: `name = value`, names right-aligned, a blank line between rows.
pub fn lines(rows: &Rows) -> String {
    let names = rows.names();
    let label = names.iter().map(|n| n.width()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, row) in rows.kept().enumerate() {
        if k > 0 {
            out.push('\n');
        }
        match row {
            Some(row) => {
                for (name, c) in names.iter().zip(row) {
                    out.push_str(&format!("{} = {}\n", pad(name, label, true), rows.cell(c)));
                }
            }
            None => out.push_str("…\n"),
        }
    }
    out
}

/// A GitHub-flavoured Markdown table; numbers right-aligned, `|` escaped.
pub fn markdown(rows: &Rows) -> String {
    let esc = |s: &str| display(s).replace('|', "\\|");
    let names = rows.names();
    let mut out = String::new();
    out.push_str(&format!(
        "| {} |\n",
        names.iter().map(|n| esc(n)).collect::<Vec<_>>().join(" | ")
    ));
    out.push_str(&format!(
        "|{}|\n",
        rows.numeric
            .iter()
            .map(|n| if *n { "---:" } else { "---" })
            .collect::<Vec<_>>()
            .join("|")
    ));
    for row in rows.kept().flatten() {
        out.push_str(&format!(
            "| {} |\n",
            row.iter()
                .map(|c| esc(rows.cell(c)))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    out
}

/// A cell's text on one line: line breaks and tabs become visible escapes.
fn display(s: &str) -> String {
    if !s.contains(['\n', '\r', '\t']) {
        return s.to_string();
    }
    s.replace('\n', "\\n")
        .replace('\r', "\\r")
        .replace('\t', "\\t")
}

/// Cuts `s` to `width` display columns, ending with `…` when cut.
fn truncate(s: &str, width: usize) -> String {
    if s.width() <= width {
        return s.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for ch in s.chars() {
        let w = ch.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(ch);
        used += w;
    }
    out.push('…');
    out
}

fn pad(s: &str, width: usize, right: bool) -> String {
    let fill = " ".repeat(width.saturating_sub(s.width()));
    if right {
        format!("{fill}{s}")
    } else {
        format!("{s}{fill}")
    }
}

/// DuckDB's names for the Arrow types kqd sends.
fn type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "varchar".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int8 => "int8".into(),
        DataType::Int16 => "int16".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::UInt8 => "uint8".into(),
        DataType::UInt16 => "uint16".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Binary | DataType::LargeBinary => "blob".into(),
        DataType::List(f) | DataType::LargeList(f) => format!("{}[]", type_name(f.data_type())),
        DataType::Struct(_) => "struct".into(),
        DataType::Map(_, _) => "map".into(),
        DataType::Null => "null".into(),
        other => other.to_string().to_lowercase(),
    }
}

/// 12345 → "12,345".
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    fn batch(n: i64, text: &str) -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from_iter_values(0..n)) as Arc<dyn Array>,
            ),
            (
                "label",
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 7 != 3).then(|| format!("{text}{i}"))),
                )),
            ),
        ])
        .unwrap()
    }

    fn keep(max_rows: Option<usize>) -> Keep {
        Keep {
            max_rows,
            null: "NULL".into(),
        }
    }

    #[test]
    fn past_the_cap_the_first_and_last_rows_are_kept_and_all_are_counted() {
        let b = batch(25, "row ");
        let mut rows = Rows::new(b.schema(), &keep(Some(6)));
        for _ in 0..4 {
            rows.push(&b).unwrap();
        }
        assert_eq!(rows.total(), 100);
        let out = boxed(&rows, None);
        assert!(out.contains("100 rows (6 shown)"), "{out}");
        let ids: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("│ "))
            .map(|l| l.split('│').next().unwrap().trim())
            .collect();
        assert_eq!(ids, ["id", "int64", "0", "1", "2", "·", "22", "23", "24"]);
    }

    #[test]
    fn a_wide_table_fits_its_width_with_cut_cells() {
        let b = batch(3, &"x".repeat(200));
        let mut rows = Rows::new(b.schema(), &keep(None));
        rows.push(&b).unwrap();
        let out = boxed(&rows, Some(40));
        for l in out.lines() {
            assert!(l.width() <= 40, "{l:?} is {} wide", l.width());
        }
        assert!(out.contains('…'));
        // Numbers are right-aligned, NULL is spelt out.
        assert!(out.contains("│     0 │"), "{out}");
    }

    #[test]
    fn too_many_columns_give_way_to_an_ellipsis_column() {
        let cols: Vec<(String, Arc<dyn Array>)> = (0..30)
            .map(|i| {
                (
                    format!("column_{i}"),
                    Arc::new(StringArray::from(vec!["value"])) as Arc<dyn Array>,
                )
            })
            .collect();
        let b = RecordBatch::try_from_iter(cols).unwrap();
        let mut rows = Rows::new(b.schema(), &keep(None));
        rows.push(&b).unwrap();
        let out = boxed(&rows, Some(80));
        assert!(out.lines().all(|l| l.width() <= 80), "{out}");
        assert!(
            out.contains("column_0") && out.contains("column_29"),
            "{out}"
        );
        assert!(out.contains("30 columns ("), "{out}");
    }

    #[test]
    fn nulls_show_as_set() {
        let b = batch(5, "v");
        let mut rows = Rows::new(
            b.schema(),
            &Keep {
                max_rows: None,
                null: "∅".into(),
            },
        );
        rows.push(&b).unwrap();
        assert!(boxed(&rows, None).contains("∅"));
        assert!(lines(&rows).contains("label = ∅"));
        assert!(expanded(&rows, Some(80)).contains("-[ RECORD 4 ]"));
        let md = markdown(&rows);
        assert!(
            md.starts_with("| id | label |\n|---:|---|\n| 0 | v0 |"),
            "{md}"
        );
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234), "1,234");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
