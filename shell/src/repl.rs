//! The interactive shell: rustyline with history, completion from kq-schema's catalog,
//! input that runs on until `;`, and dot commands (`.tables`, `.schema`, `.mode`, …, also
//! spelt the psql way: `\dt`, `\d`, `\q`).

use std::borrow::Cow;
use std::time::Instant;

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Editor, Helper};

use crate::client::Client;
use crate::format::{self, Format};

const KEYWORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP BY",
    "ORDER BY",
    "HAVING",
    "LIMIT",
    "JOIN",
    "LEFT JOIN",
    "ON",
    "AND",
    "OR",
    "NOT",
    "IN",
    "LIKE",
    "ILIKE",
    "AS",
    "COUNT",
    "SUM",
    "AVG",
    "MIN",
    "MAX",
    "DISTINCT",
    "WITH",
    "DESC",
    "ASC",
    "IS NULL",
    "IS NOT NULL",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "DESCRIBE",
    "SUMMARIZE",
    "COPY",
];

const DOT_COMMANDS: &[(&str, &str)] = &[
    (
        ".tables",
        "list tables (optionally LIKE a pattern); also \\dt",
    ),
    (
        ".schema",
        "show the columns of one table or all, with descriptions; also \\d",
    ),
    (".mode", "set the output format: table, csv, json or jsonl"),
    (".timer", "on|off: print how long each statement took"),
    (
        ".follow",
        "stream incidents as they are recorded [context=… namespace=… severity=…]; Ctrl-C stops",
    ),
    (".status", "each context's state, object count and error"),
    (".help", "show this help; also \\?"),
    (".quit", "leave kq; also .exit, \\q, Ctrl-D"),
];

/// Completion, hints and multi-line validation for SQL.
struct SqlHelper;

impl Completer for SqlHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let start = line[..pos]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .map_or(0, |i| i + 1);
        let word = &line[start..pos];
        if word.is_empty() {
            return Ok((pos, vec![]));
        }
        let lower = word.to_lowercase();
        let mut out: Vec<Pair> = Vec::new();
        let mut add = |s: &str| {
            if s.to_lowercase().starts_with(&lower) && !out.iter().any(|p| p.replacement == s) {
                out.push(Pair {
                    display: s.to_string(),
                    replacement: s.to_string(),
                });
            }
        };
        if start == 0 && word.starts_with('.') {
            DOT_COMMANDS.iter().for_each(|(c, _)| add(c));
        }
        for t in kq_schema::CATALOG.iter() {
            add(t.name);
            t.columns.iter().for_each(|c| add(c.name));
        }
        let upper = word.chars().next().is_some_and(|c| c.is_uppercase());
        for k in KEYWORDS {
            if upper {
                add(k)
            } else {
                add(&k.to_lowercase())
            }
        }
        Ok((start, out))
    }
}

impl Hinter for SqlHelper {
    type Hint = String;
}

impl Highlighter for SqlHelper {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}

impl Validator for SqlHelper {
    fn validate(&self, ctx: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        Ok(if is_complete(ctx.input()) {
            ValidationResult::Valid(None)
        } else {
            ValidationResult::Incomplete
        })
    }
}

impl Helper for SqlHelper {}

/// A dot command is complete on its line; SQL is complete when it ends with `;` outside
/// quotes and comments.
fn is_complete(input: &str) -> bool {
    let t = input.trim();
    if t.is_empty() || t.starts_with('.') || t.starts_with('\\') {
        return true;
    }
    kq_schema::sql::ends_statement(t)
}

fn history_path() -> std::path::PathBuf {
    kq_schema::paths::default_data_dir().join("history")
}

/// Runs the REPL until `.quit` or Ctrl-D. Returns the exit status.
pub async fn run(client: &mut Client, mut mode: Format) -> i32 {
    let config = rustyline::Config::builder()
        .auto_add_history(true)
        .history_ignore_dups(true)
        .and_then(|b| b.max_history_size(10_000))
        .map(|b| b.completion_type(rustyline::CompletionType::List).build());
    let mut rl: Editor<SqlHelper, rustyline::history::DefaultHistory> =
        match config.and_then(Editor::with_config) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("kq: cannot start the line editor: {e}");
                return 1;
            }
        };
    rl.set_helper(Some(SqlHelper));
    let history = history_path();
    if let Some(dir) = history.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = rl.load_history(&history);
    println!(
        "kq {} — SQL over every cluster in your kubeconfig. .help for help, .quit to leave.",
        env!("CARGO_PKG_VERSION")
    );
    let mut timer = false;
    loop {
        let line = match rl.readline("kq> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("kq: {e}");
                break;
            }
        };
        let input = line.trim();
        if input.is_empty() {
            continue;
        }
        if input.starts_with('.') || input.starts_with('\\') {
            match dot_command(client, input, &mut mode, &mut timer).await {
                Some(true) => continue,
                Some(false) => break,
                None => {
                    eprintln!("unknown command {input:?}; .help lists them");
                    continue;
                }
            }
        }
        for stmt in crate::split_statements(input) {
            run_one(client, &stmt, mode, timer).await;
        }
    }
    let _ = rl.save_history(&history);
    0
}

async fn run_one(client: &mut Client, sql: &str, mode: Format, timer: bool) {
    let started = Instant::now();
    match client.query(sql).await {
        Ok(r) => {
            let mut out = std::io::stdout().lock();
            if let Err(e) = format::write(&mut out, &r, mode) {
                eprintln!("kq: cannot print the result: {e}");
            }
        }
        Err(e) => eprintln!("Error: {e}"),
    }
    if timer {
        println!("Run Time: {:.3} s", started.elapsed().as_secs_f64());
    }
}

/// Handles a dot command; `Some(false)` means quit, `None` an unknown command.
async fn dot_command(
    client: &mut Client,
    input: &str,
    mode: &mut Format,
    timer: &mut bool,
) -> Option<bool> {
    let mut words = input.split_whitespace();
    let cmd = words.next()?;
    let arg = words.next();
    match cmd {
        ".quit" | ".exit" | ".q" | "\\q" => return Some(false),
        ".help" | "\\?" | "\\h" => {
            for (c, what) in DOT_COMMANDS {
                println!("{c:<10} {what}");
            }
            println!(
                "SQL runs until ';' and may span lines. Tables: .tables; columns: .schema <table>."
            );
        }
        ".tables" | "\\dt" => {
            for t in kq_schema::CATALOG.iter() {
                if arg.is_none_or(|p| kq_schema::sql::like(t.name, p)) {
                    println!("{:<12} {}", t.name, t.description);
                }
            }
        }
        ".schema" | "\\d" | "\\d+" => print_schema(arg),
        ".mode" | "\\pset" => match arg.map(str::parse::<Format>) {
            Some(Ok(f)) => *mode = f,
            Some(Err(e)) => eprintln!("{e}"),
            None => println!("{mode:?}"),
        },
        ".timer" | "\\timing" => {
            *timer = match arg {
                Some("on") => true,
                Some("off") => false,
                _ => !*timer,
            };
            println!("Timer is {}", if *timer { "on" } else { "off" });
        }
        ".follow" => {
            let mut filter = kq_schema::follow::FollowIncidents::default();
            for w in input.split_whitespace().skip(1) {
                match w.split_once('=') {
                    Some(("context", v)) => filter.context = Some(v.to_string()),
                    Some(("namespace", v)) => filter.namespace = Some(v.to_string()),
                    Some(("severity", v)) => filter.min_severity = Some(v.to_string()),
                    _ => {
                        eprintln!(
                            "usage: .follow [context=NAME] [namespace=NAME] [severity=critical|high|medium|low]"
                        );
                        return Some(true);
                    }
                }
            }
            if let Err(e) = crate::incidents::follow_until_interrupted(client, &filter, *mode).await
            {
                eprintln!("Error: {e}");
            }
        }
        ".status" => run_one(client, crate::STATUS_SQL, *mode, false).await,
        _ => return None,
    }
    Some(true)
}

fn print_schema(table: Option<&str>) {
    let tables: Vec<_> = kq_schema::CATALOG
        .iter()
        .filter(|t| table.is_none_or(|n| n == t.name))
        .collect();
    if tables.is_empty() {
        eprintln!(
            "no table {:?}; .tables lists them",
            table.unwrap_or_default()
        );
    }
    for t in tables {
        println!("-- {}", t.description);
        println!("CREATE TABLE {} (", t.name);
        let width = t
            .columns
            .iter()
            .map(|c| c.name.len() + c.sql_type.len() + 1)
            .max()
            .unwrap_or(0);
        for (i, c) in t.columns.iter().enumerate() {
            let sep = if i + 1 == t.columns.len() { " " } else { "," };
            let decl = format!("{} {}", c.name, c.sql_type);
            println!("  {decl:<width$}{sep} -- {}", c.description);
        }
        println!(");");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_complete_at_a_semicolon_outside_quotes() {
        assert!(is_complete("select 1;"));
        assert!(!is_complete("select ';'"));
        assert!(!is_complete("select 1\nfrom pods"));
        assert!(is_complete("select 1\nfrom pods ; -- done"));
        assert!(is_complete(".tables"));
        assert!(!is_complete("select 'unterminated;"));
    }
}
