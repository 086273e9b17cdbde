//! The interactive shell: rustyline with history, completion and highlighting
//! (`complete.rs`), input that runs on until `;`, results fitted to the terminal and paged
//! when taller than it, Ctrl-C that cancels the running statement, and dot commands (also
//! spelt the psql way: `\dt`, `\d`, `\x`, `\o`, `\i`, `\watch`, `\q`).

use std::borrow::Cow;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::Hinter;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Editor, Helper};

use crate::client::{Client, ClientError};
use crate::complete::{self, DOT_COMMANDS, Values};
use crate::format::{Display, Expanded, Format, Target, WriteError, terminal_size};

/// Completion, highlighting and multi-line validation for SQL.
struct SqlHelper {
    values: Values,
}

impl Completer for SqlHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        Ok(complete::complete(line, pos, &self.values))
    }
}

impl Hinter for SqlHelper {
    type Hint = String;
}

impl Highlighter for SqlHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        if line.trim_start().starts_with(['.', '\\']) {
            return Cow::Borrowed(line);
        }
        complete::highlight(line)
    }

    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }

    fn highlight_char(&self, _line: &str, _pos: usize, _kind: CmdKind) -> bool {
        true
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

fn history_path() -> PathBuf {
    kq_schema::paths::default_data_dir().join("history")
}

/// Where results go besides the terminal.
enum Redirect {
    None,
    /// The next result only (`.once`).
    Once(PathBuf),
    /// Every result until `.output` alone (`.output`, `\o`).
    All(PathBuf),
}

/// The shell's state between statements.
struct Shell {
    client: Client,
    socket: PathBuf,
    display: Display,
    timer: bool,
    pager: bool,
    redirect: Redirect,
    last_sql: Option<String>,
}

/// What a dot command asks of the loop.
enum Next {
    Continue,
    Quit,
}

/// Runs the REPL until `.quit` or Ctrl-D. Returns the exit status.
pub async fn run(mut client: Client, socket: &Path, format: Format) -> i32 {
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
    let values = fetch_values(&mut client).await;
    rl.set_helper(Some(SqlHelper { values }));
    let history = history_path();
    if let Some(dir) = history.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = rl.load_history(&history);
    println!(
        "kq {} — SQL over every cluster in your kubeconfig. .help for help, .quit to leave.",
        env!("CARGO_PKG_VERSION")
    );
    let mut shell = Shell {
        client,
        socket: socket.to_path_buf(),
        display: Display::new(format),
        timer: false,
        pager: true,
        redirect: Redirect::None,
        last_sql: None,
    };
    loop {
        let line = match rl.readline("kq> ") {
            Ok(l) => l,
            // Ctrl-C at the prompt clears the line.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("kq: {e}");
                break;
            }
        };
        if let Next::Quit = shell.input(&line).await {
            break;
        }
    }
    let _ = rl.save_history(&history);
    0
}

/// The values completion offers, asked of kqd once.
async fn fetch_values(client: &mut Client) -> Values {
    let mut lists = Vec::new();
    for sql in Values::QUERIES {
        lists.push(first_column(client, sql).await);
    }
    let [contexts, namespaces, kinds]: [Vec<String>; 3] = lists.try_into().unwrap_or_default();
    Values {
        contexts,
        namespaces,
        kinds,
        incident_types: kq_schema::incidents::INCIDENT_TYPES
            .iter()
            .map(|t| t.name.to_string())
            .collect(),
    }
}

/// The first column of a query's rows as text; empty when the query fails.
async fn first_column(client: &mut Client, sql: &str) -> Vec<String> {
    let Ok(r) = client.query(sql).await else {
        return Vec::new();
    };
    let opts = arrow::util::display::FormatOptions::default();
    let mut out = Vec::new();
    for b in &r.batches {
        let Some(col) = b.columns().first() else {
            continue;
        };
        let Ok(f) = arrow::util::display::ArrayFormatter::try_new(col.as_ref(), &opts) else {
            continue;
        };
        out.extend((0..b.num_rows()).map(|i| f.value(i).to_string()));
    }
    out
}

impl Shell {
    /// Handles one input: a dot command, or statements.
    async fn input(&mut self, line: &str) -> Next {
        let input = line.trim();
        if input.is_empty() {
            return Next::Continue;
        }
        if input.starts_with('.') || input.starts_with('\\') {
            return Box::pin(self.command(input)).await;
        }
        for stmt in crate::split_statements(input) {
            self.last_sql = Some(stmt.clone());
            self.statement(&stmt).await;
        }
        Next::Continue
    }

    /// Runs one statement, printing its result where it should go; Ctrl-C cancels it.
    async fn statement(&mut self, sql: &str) {
        let started = Instant::now();
        let file = match std::mem::replace(&mut self.redirect, Redirect::None) {
            Redirect::None => None,
            Redirect::Once(p) => Some(p),
            Redirect::All(p) => {
                self.redirect = Redirect::All(p.clone());
                Some(p)
            }
        };
        let interrupted = match file {
            Some(path) => self.print_to_file(sql, &path).await,
            None => self.print_to_terminal(sql).await,
        };
        if interrupted {
            // kqd stops a query whose connection closes, wherever it is: planning, or
            // streaming. A new connection serves the next statement.
            eprintln!("cancelled");
            match Client::connect(&self.socket).await {
                Ok(c) => self.client = c,
                Err(e) => eprintln!("kq: {e}"),
            }
        }
        if self.timer {
            println!("Run Time: {:.3} s", started.elapsed().as_secs_f64());
        }
    }

    /// Writes the result to a file, unfitted and uncapped. Returns whether Ctrl-C came.
    async fn print_to_file(&mut self, sql: &str, path: &Path) -> bool {
        let mut file = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => std::io::BufWriter::new(f),
            Err(e) => {
                eprintln!("kq: cannot open {}: {e}", path.display());
                return false;
            }
        };
        let run = crate::run_statement(
            &mut self.client,
            sql,
            &self.display,
            Target::Plain,
            &mut file,
        );
        tokio::select! {
            r = run => { report(r); false }
            _ = tokio::signal::ctrl_c() => true,
        }
    }

    /// Writes the result to the terminal, fitted to it, through the pager when taller.
    async fn print_to_terminal(&mut self, sql: &str) -> bool {
        let (width, height) = terminal_size().unwrap_or((80, 24));
        let target = Target::Terminal { width };
        let mut buf = Vec::new();
        let run = crate::run_statement(&mut self.client, sql, &self.display, target, &mut buf);
        let r = tokio::select! {
            r = run => r,
            _ = tokio::signal::ctrl_c() => return true,
        };
        let ok = r.is_ok();
        report(r);
        if ok {
            show(&buf, self.pager, height);
        }
        false
    }

    /// Handles a dot command.
    async fn command(&mut self, input: &str) -> Next {
        let mut words = input.split_whitespace();
        let cmd = words.next().unwrap_or_default();
        let arg = words.next();
        let rest = input[cmd.len()..].trim();
        match cmd {
            ".quit" | ".exit" | ".q" | "\\q" => return Next::Quit,
            ".help" | "\\?" | "\\h" => {
                for (c, what) in DOT_COMMANDS {
                    println!("{c:<11} {what}");
                }
                println!(
                    "SQL runs until ';' and may span lines. Tab completes tables, columns and values; Ctrl-C cancels a running statement."
                );
            }
            ".tables" | "\\dt" => {
                for t in kq_schema::CATALOG.iter() {
                    if arg.is_none_or(|p| kq_schema::sql::like(t.name, p)) {
                        println!("{:<26} {}", t.name, t.description);
                    }
                }
            }
            ".schema" | "\\d" | "\\d+" => print_schema(arg),
            ".mode" | "\\pset" => {
                // `\pset format csv` as psql spells it.
                let value = if cmd == "\\pset" {
                    words.next().or(arg.filter(|a| *a != "format"))
                } else {
                    arg
                };
                match value.map(str::parse::<Format>) {
                    Some(Ok(f)) => self.display.format = f,
                    Some(Err(e)) => eprintln!("{e}"),
                    None => println!("{}", self.display.format),
                }
            }
            ".maxrows" => set_number(arg, &mut self.display.max_rows, ".maxrows"),
            ".maxwidth" => set_number(arg, &mut self.display.max_width, ".maxwidth"),
            "\\x" | ".x" => {
                self.display.expanded = match arg {
                    Some("on") => Expanded::On,
                    Some("off") => Expanded::Off,
                    Some("auto") => Expanded::Auto,
                    None if self.display.expanded == Expanded::Off => Expanded::On,
                    None => Expanded::Off,
                    Some(other) => {
                        eprintln!("\\x takes on, off or auto, not {other:?}");
                        return Next::Continue;
                    }
                };
                println!(
                    "Expanded display is {}.",
                    match self.display.expanded {
                        Expanded::On => "on",
                        Expanded::Off => "off",
                        Expanded::Auto => "used automatically",
                    }
                );
            }
            ".nullvalue" => self.display.null = unquote(rest).to_string(),
            ".pager" => match arg {
                Some("on") => self.pager = true,
                Some("off") => self.pager = false,
                _ => println!("pager is {}", if self.pager { "on" } else { "off" }),
            },
            ".once" => match arg {
                Some(f) => self.redirect = Redirect::Once(PathBuf::from(unquote(f))),
                None => eprintln!("usage: .once FILE"),
            },
            ".output" | "\\o" => {
                self.redirect = match arg {
                    Some(f) => Redirect::All(PathBuf::from(unquote(f))),
                    None => Redirect::None,
                }
            }
            ".read" | "\\i" => match arg {
                Some(f) => return Box::pin(self.read(Path::new(unquote(f)))).await,
                None => eprintln!("usage: .read FILE"),
            },
            ".watch" | "\\watch" => self.watch(arg).await,
            ".timer" | "\\timing" => {
                self.timer = match arg {
                    Some("on") => true,
                    Some("off") => false,
                    _ => !self.timer,
                };
                println!("Timer is {}", if self.timer { "on" } else { "off" });
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
                            return Next::Continue;
                        }
                    }
                }
                let follow = crate::incidents::follow_until_interrupted(
                    &mut self.client,
                    &filter,
                    self.display.format,
                );
                if let Err(e) = follow.await {
                    eprintln!("Error: {e}");
                }
            }
            ".status" => self.statement(crate::STATUS_SQL).await,
            _ => eprintln!("unknown command {input:?}; .help lists them"),
        }
        Next::Continue
    }

    /// Runs a file's statements and dot commands, in order.
    async fn read(&mut self, path: &Path) -> Next {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("kq: cannot read {}: {e}", path.display());
                return Next::Continue;
            }
        };
        let mut pending = String::new();
        for line in text.lines() {
            if pending.trim().is_empty() && line.trim_start().starts_with(['.', '\\']) {
                if let Next::Quit = self.input(line).await {
                    return Next::Quit;
                }
                continue;
            }
            pending.push_str(line);
            pending.push('\n');
            if is_complete(&pending) {
                self.input(&std::mem::take(&mut pending)).await;
            }
        }
        if !pending.trim().is_empty() {
            self.input(&pending).await;
        }
        Next::Continue
    }

    /// Runs the last query again each time kqd commits to a table it reads, or every
    /// `interval` seconds, until Ctrl-C.
    async fn watch(&mut self, interval: Option<&str>) {
        let Some(sql) = self.last_sql.clone() else {
            eprintln!("nothing to watch yet: run a query first");
            return;
        };
        let every = match interval.map(|s| s.trim_start_matches("i=").parse::<f64>()) {
            None => crate::watch::Every::Commit,
            Some(Ok(s)) if s > 0.0 => crate::watch::Every::Seconds(s),
            _ => {
                eprintln!("usage: .watch [SECONDS] (none: on every change kqd commits)");
                return;
            }
        };
        report(
            crate::watch::watch(&mut self.client, &sql, every, &self.display, true)
                .await
                .map(|_| 0),
        );
        // Ctrl-C may have left a statement half read: the next one gets a new connection.
        match Client::connect(&self.socket).await {
            Ok(c) => self.client = c,
            Err(e) => eprintln!("kq: {e}"),
        }
    }
}

/// Prints a statement's error the way the DuckDB CLI does: the message, with the line and
/// caret DuckDB adds under the offending token.
fn report(r: Result<usize, WriteError>) {
    match r {
        Ok(_) => {}
        Err(WriteError::Client(ClientError::Sql(m))) => eprintln!("Error: {m}"),
        Err(e) => eprintln!("Error: {e}"),
    }
}

/// Writes output to the terminal, through the pager when it is taller than the terminal.
fn show(buf: &[u8], pager: bool, height: usize) {
    let lines = buf.iter().filter(|&&b| b == b'\n').count();
    if pager
        && lines + 1 >= height
        && let Some(mut child) = spawn_pager()
    {
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(buf);
        }
        let _ = child.wait();
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(buf);
    let _ = out.flush();
}

/// `$PAGER`, else `less -FSRX` (quit if one screen, no wrapping, colours, no clearing).
fn spawn_pager() -> Option<std::process::Child> {
    let command = std::env::var("PAGER")
        .ok()
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| "less -FSRX".into());
    let mut parts = command.split_whitespace();
    let program = parts.next()?;
    std::process::Command::new(program)
        .args(parts)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .ok()
}

fn set_number(arg: Option<&str>, value: &mut usize, name: &str) {
    match arg.map(str::parse::<usize>) {
        Some(Ok(n)) => *value = n,
        Some(Err(_)) => eprintln!("{name} takes a number (0: no limit)"),
        None => println!("{name} {value}"),
    }
}

/// `'text'` or `"text"` without its quotes.
fn unquote(s: &str) -> &str {
    s.strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
        .unwrap_or(s)
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

    #[test]
    fn quoted_file_names_lose_their_quotes() {
        assert_eq!(unquote("'/tmp/out.csv'"), "/tmp/out.csv");
        assert_eq!(unquote("\"x\""), "x");
        assert_eq!(unquote("plain"), "plain");
    }
}
