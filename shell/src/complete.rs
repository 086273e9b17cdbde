//! What the shell knows about the SQL being typed: a small tokenizer, completion by position
//! (tables after FROM and JOIN, the columns of the tables the statement names, dot commands,
//! and values such as context names inside quotes after `context =`), and highlighting
//! (keywords, strings, numbers, comments; an unterminated string or an unmatched parenthesis
//! in red).

use std::borrow::Cow;

use rustyline::completion::Pair;

/// Dot commands and what they do, for `.help` and completion.
pub const DOT_COMMANDS: &[(&str, &str)] = &[
    (
        ".tables",
        "list tables (optionally LIKE a pattern); also \\dt",
    ),
    (
        ".schema",
        "show the columns of one table or all, with descriptions; also \\d",
    ),
    (
        ".mode",
        "table, line, markdown, csv, json or jsonl; also \\pset format",
    ),
    (
        ".maxrows",
        "rows a table shows at most, its first and last (default 40; 0: all)",
    ),
    (
        ".maxwidth",
        "columns a table may use (0: the terminal's width)",
    ),
    ("\\x", "[on|off|auto] expanded display: one column per line"),
    (".nullvalue", "what NULL shows as (default NULL)"),
    (
        ".pager",
        "on|off: page output taller than the terminal ($PAGER, else less -FSRX)",
    ),
    (".once", "FILE: write the next result to FILE"),
    (
        ".output",
        "[FILE]: write results to FILE, or again to the terminal; also \\o",
    ),
    (
        ".read",
        "FILE: run the statements and commands of FILE; also \\i",
    ),
    (
        ".watch",
        "[SECONDS]: run the last query again at each change kqd commits to its tables (or every SECONDS) until Ctrl-C; also \\watch",
    ),
    (
        ".timer",
        "on|off: print how long each statement took; also \\timing",
    ),
    (
        ".follow",
        "stream incidents as they are recorded [context=… namespace=… severity=…]; Ctrl-C stops",
    ),
    (".status", "each context's state, object count and error"),
    (".help", "show this help; also \\?"),
    (".quit", "leave kq; also .exit, \\q, Ctrl-D"),
];

/// Words completed and highlighted as SQL keywords.
const KEYWORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "ORDER",
    "HAVING",
    "LIMIT",
    "OFFSET",
    "JOIN",
    "LEFT",
    "RIGHT",
    "INNER",
    "OUTER",
    "FULL",
    "CROSS",
    "ON",
    "USING",
    "AND",
    "OR",
    "NOT",
    "IN",
    "IS",
    "NULL",
    "LIKE",
    "ILIKE",
    "AS",
    "DISTINCT",
    "WITH",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "DESC",
    "ASC",
    "UNION",
    "ALL",
    "EXCEPT",
    "INTERSECT",
    "BETWEEN",
    "EXISTS",
    "DESCRIBE",
    "SUMMARIZE",
    "COPY",
    "TO",
    "QUALIFY",
    "OVER",
    "PARTITION",
    "TRUE",
    "FALSE",
    "CAST",
    "COUNT",
    "SUM",
    "AVG",
    "MIN",
    "MAX",
    "FILTER",
    "PIVOT",
    "UNPIVOT",
    "EXPLAIN",
];

/// Keywords after which a table name comes.
const BEFORE_TABLE: &[&str] = &["FROM", "JOIN", "DESCRIBE", "SUMMARIZE", "TABLE", "PIVOT"];

/// Values kqd knows, asked for once when the shell starts and completed inside quotes.
#[derive(Debug, Default, Clone)]
pub struct Values {
    pub contexts: Vec<String>,
    pub namespaces: Vec<String>,
    pub kinds: Vec<String>,
    pub incident_types: Vec<String>,
}

impl Values {
    /// The SQL each list is read with.
    pub const QUERIES: [&'static str; 3] = [
        "select name from contexts order by 1",
        "select distinct name from namespaces order by 1",
        "select distinct kind from objects order by 1",
    ];

    /// The values for a column named `column`, if kq knows them.
    fn for_column(&self, column: &str) -> Option<Vec<String>> {
        let own = |v: &[String]| Some(v.to_vec());
        match column {
            "context" | "contexts" => own(&self.contexts),
            "namespace" => own(&self.namespaces),
            "kind" | "object_kind" | "owner_kind" => own(&self.kinds),
            "type" => own(&self.incident_types),
            "severity" => Some(
                kq_schema::incidents::SEVERITIES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// What a stretch of input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Word,
    Quoted,
    /// A string literal; `closed` is false when the input ends inside it.
    Str {
        closed: bool,
    },
    Number,
    Comment,
    Open,
    Close,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

/// Splits SQL into tokens (whitespace is left out).
pub fn tokens(sql: &str) -> Vec<Token> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let c = b[i];
        let kind = if c.is_ascii_whitespace() {
            i += 1;
            continue;
        } else if c == b'\'' || c == b'"' {
            i += 1;
            let mut closed = false;
            while i < b.len() {
                if b[i] == c {
                    // A doubled quote stays inside the string.
                    if b.get(i + 1) == Some(&c) {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    closed = true;
                    break;
                }
                i += 1;
            }
            if c == b'\'' {
                Kind::Str { closed }
            } else {
                Kind::Quoted
            }
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            Kind::Comment
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                i += 1;
            }
            i = (i + 2).min(b.len());
            Kind::Comment
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            Kind::Number
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
                i += 1;
            }
            Kind::Word
        } else {
            i += 1;
            match c {
                b'(' => Kind::Open,
                b')' => Kind::Close,
                _ => Kind::Other,
            }
        };
        out.push(Token {
            kind,
            start,
            end: i,
        });
    }
    out
}

fn is_keyword(word: &str) -> bool {
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word))
}

/// The tables a statement names after FROM or JOIN (wherever the cursor is).
pub(crate) fn named_tables(sql: &str) -> Vec<&'static kq_schema::Table> {
    named_tables_in(sql, &tokens(sql))
}

fn named_tables_in(sql: &str, toks: &[Token]) -> Vec<&'static kq_schema::Table> {
    /// Where the scan is: outside a table list, right after FROM/JOIN (or a comma in the
    /// list), or after a table name (and perhaps its alias).
    #[derive(PartialEq)]
    enum At {
        Outside,
        Table,
        List,
    }
    let mut out: Vec<&'static kq_schema::Table> = Vec::new();
    let mut at = At::Outside;
    for t in toks {
        let text = &sql[t.start..t.end];
        at = match t.kind {
            Kind::Word if BEFORE_TABLE.iter().any(|k| k.eq_ignore_ascii_case(text)) => At::Table,
            Kind::Word if at == At::Table => {
                if let Some(table) = kq_schema::table(&text.to_lowercase())
                    && !out.iter().any(|o| o.name == table.name)
                {
                    out.push(table);
                }
                At::List
            }
            // An alias: `from pods p, nodes n`.
            Kind::Word if at == At::List && !is_keyword(text) => At::List,
            Kind::Other if at == At::List && text == "," => At::Table,
            _ => At::Outside,
        };
    }
    out
}

/// Completion candidates for the input `line` with the cursor at `pos`: where the replaced
/// word starts, and the candidates.
pub fn complete(line: &str, pos: usize, values: &Values) -> (usize, Vec<Pair>) {
    let before = &line[..pos];
    let toks = tokens(before);
    let mut out: Vec<Pair> = Vec::new();
    let mut add = |s: &str, word: &str| {
        if s.to_lowercase().starts_with(&word.to_lowercase())
            && !out.iter().any(|p| p.replacement == s)
        {
            out.push(Pair {
                display: s.to_string(),
                replacement: s.to_string(),
            });
        }
    };
    // Dot commands, and their arguments.
    let trimmed = before.trim_start();
    if trimmed.starts_with('.') || trimmed.starts_with('\\') {
        let lead = before.len() - trimmed.len();
        let mut words = trimmed.split_whitespace();
        let cmd = words.next().unwrap_or_default();
        if !trimmed.contains(char::is_whitespace) {
            DOT_COMMANDS
                .iter()
                .flat_map(|(c, _)| [*c])
                .chain(["\\dt", "\\d", "\\q", "\\o", "\\i", "\\watch", "\\timing"])
                .for_each(|c| add(c, cmd));
            return (lead, out);
        }
        let word_start = before.rfind(char::is_whitespace).map_or(pos, |i| i + 1);
        let word = &before[word_start..];
        match cmd {
            ".schema" | "\\d" | "\\d+" | ".tables" | "\\dt" => {
                kq_schema::CATALOG.iter().for_each(|t| add(t.name, word))
            }
            ".mode" => ["table", "line", "markdown", "csv", "json", "jsonl"]
                .iter()
                .for_each(|m| add(m, word)),
            "\\x" | ".pager" | ".timer" | "\\timing" => {
                ["on", "off", "auto"].iter().for_each(|m| add(m, word))
            }
            _ => {}
        }
        return (word_start, out);
    }
    // Inside a string: values for the column it is compared with.
    if let Some(last) = toks.last()
        && last.kind == (Kind::Str { closed: false })
    {
        let typed = &before[last.start..];
        let column = toks[..toks.len() - 1]
            .iter()
            .rev()
            .find(|t| t.kind == Kind::Word && !is_keyword(&before[t.start..t.end]))
            .map(|t| before[t.start..t.end].to_lowercase());
        if let Some(list) = column.and_then(|c| values.for_column(&c)) {
            for v in list {
                add(&format!("'{}'", v.replace('\'', "''")), typed);
            }
        }
        return (last.start, out);
    }
    // The word being typed, and the keyword before it.
    let (start, word) = match toks.last() {
        Some(t) if t.end == pos && matches!(t.kind, Kind::Word | Kind::Quoted) => {
            (t.start, &before[t.start..])
        }
        _ => (pos, ""),
    };
    let previous = toks
        .iter()
        .rev()
        .filter(|t| t.end < pos || (t.end == pos && word.is_empty()))
        .find(|t| !(t.kind == Kind::Other && &before[t.start..t.end] == ","))
        .map(|t| before[t.start..t.end].to_uppercase());
    let table_position = previous
        .as_deref()
        .is_some_and(|p| BEFORE_TABLE.contains(&p))
        || after_from_comma(before, &toks, start);
    if table_position {
        kq_schema::CATALOG.iter().for_each(|t| add(t.name, word));
        return (start, out);
    }
    if word.is_empty() {
        return (pos, out);
    }
    let tables = named_tables(line);
    let columns: Vec<&str> = if tables.is_empty() {
        kq_schema::CATALOG
            .iter()
            .flat_map(|t| t.columns.iter().map(|c| c.name))
            .collect()
    } else {
        tables
            .iter()
            .flat_map(|t| t.columns.iter().map(|c| c.name))
            .collect()
    };
    columns.iter().for_each(|c| add(c, word));
    if tables.is_empty() {
        kq_schema::CATALOG.iter().for_each(|t| add(t.name, word));
    }
    let upper = word.chars().next().is_some_and(|c| c.is_uppercase());
    for k in KEYWORDS {
        let k = if upper {
            Cow::Borrowed(*k)
        } else {
            Cow::Owned(k.to_lowercase())
        };
        add(&k, word);
    }
    (start, out)
}

/// Whether the word at `start` follows `FROM a,` (a table list continued).
fn after_from_comma(sql: &str, toks: &[Token], start: usize) -> bool {
    let upto: Vec<&Token> = toks.iter().filter(|t| t.end <= start).collect();
    let Some(last) = upto.last() else {
        return false;
    };
    if &sql[last.start..last.end] != "," {
        return false;
    }
    for t in upto.iter().rev().skip(1) {
        let text = &sql[t.start..t.end];
        if t.kind == Kind::Word && BEFORE_TABLE.iter().any(|k| k.eq_ignore_ascii_case(text)) {
            return true;
        }
        if t.kind == Kind::Word && is_keyword(text) || matches!(t.kind, Kind::Open | Kind::Close) {
            return false;
        }
    }
    false
}

/// The input with ANSI colours: keywords bold, strings green, numbers cyan, comments dim;
/// an unterminated string and unmatched parentheses red.
pub fn highlight(line: &str) -> Cow<'_, str> {
    let toks = tokens(line);
    // Parentheses left open, and closing ones with nothing to close.
    let mut open: Vec<usize> = Vec::new();
    let mut unmatched: Vec<usize> = Vec::new();
    for (k, t) in toks.iter().enumerate() {
        match t.kind {
            Kind::Open => open.push(k),
            Kind::Close if open.pop().is_none() => unmatched.push(k),
            _ => {}
        }
    }
    unmatched.extend(open);
    let mut out = String::with_capacity(line.len() + 16);
    let mut at = 0;
    for (k, t) in toks.iter().enumerate() {
        out.push_str(&line[at..t.start]);
        let text = &line[t.start..t.end];
        let colour = match t.kind {
            Kind::Word if is_keyword(text) => Some("1;34"),
            Kind::Str { closed: true } => Some("32"),
            Kind::Str { closed: false } => Some("1;31"),
            Kind::Number => Some("36"),
            Kind::Comment => Some("2"),
            Kind::Open | Kind::Close if unmatched.contains(&k) => Some("1;31"),
            _ => None,
        };
        match colour {
            Some(c) => out.push_str(&format!("\x1b[{c}m{text}\x1b[0m")),
            None => out.push_str(text),
        }
        at = t.end;
    }
    out.push_str(&line[at..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(line: &str, values: &Values) -> Vec<String> {
        names_at(line, line.len(), values)
    }

    fn names_at(line: &str, pos: usize, values: &Values) -> Vec<String> {
        let (_, pairs) = complete(line, pos, values);
        pairs.into_iter().map(|p| p.replacement).collect()
    }

    #[test]
    fn after_from_only_tables_are_offered() {
        let got = names("select * from nod", &Values::default());
        assert_eq!(got, ["nodes"]);
        let got = names("select * from pods p join nod", &Values::default());
        assert_eq!(got, ["nodes"]);
        let got = names("select * from pods, nod", &Values::default());
        assert_eq!(got, ["nodes"]);
    }

    #[test]
    fn columns_come_from_the_tables_the_statement_names() {
        let got = names_at("select res from pods", 10, &Values::default());
        // `restarts` is a pods column; `resource` (objects) and `resources` (a table) are
        // not offered once the statement names pods.
        assert!(got.contains(&"restarts".to_string()), "{got:?}");
        assert!(!got.contains(&"resource".to_string()), "{got:?}");
        assert!(!got.contains(&"resources".to_string()), "{got:?}");
        let (start, _) = complete("select res from pods", 10, &Values::default());
        assert_eq!(start, 7);
    }

    #[test]
    fn values_complete_inside_quotes() {
        let values = Values {
            contexts: vec!["prod-eu".into(), "prod-us".into(), "staging".into()],
            ..Values::default()
        };
        let got = names("select * from pods where context = 'pro", &values);
        assert_eq!(got, ["'prod-eu'", "'prod-us'"]);
        let got = names("select * from incidents where severity in ('h", &values);
        assert_eq!(got, ["'high'"]);
    }

    #[test]
    fn dot_commands_and_their_arguments_complete() {
        assert_eq!(names(".ma", &Values::default()), [".maxrows", ".maxwidth"]);
        assert_eq!(names(".schema conf", &Values::default()), ["configmaps"]);
        assert_eq!(names(".mode mark", &Values::default()), ["markdown"]);
    }

    #[test]
    fn unbalanced_input_is_shown_in_red() {
        let h = highlight("select (1 from 'open");
        assert!(h.contains("\x1b[1;31m(\x1b[0m"), "{h:?}");
        assert!(h.contains("\x1b[1;31m'open\x1b[0m"), "{h:?}");
        assert!(h.contains("\x1b[1;34mselect\x1b[0m"), "{h:?}");
        let h = highlight("select (1)");
        assert!(!h.contains("31m"), "{h:?}");
    }
}
