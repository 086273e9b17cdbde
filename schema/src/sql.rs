//! Where SQL statements end. kqd refuses more than one statement per query, kq splits
//! scripts and knows when a line of input completes a statement; all three need the same
//! answer to "is this `;` outside quotes and comments?", so there is one splitter.
//!
//! It knows what DuckDB's lexer knows about statement boundaries: `'…'` strings and `"…"`
//! identifiers (a doubled quote inside stays inside), `-- …` line comments and `/* … */`
//! block comments. Comments are replaced by a space (a line comment by its newline), so
//! that the tokens on either side stay apart.

/// The statements of `script`, split on `;` outside quotes and comments, with comments
/// removed and surrounding whitespace trimmed; empty statements are dropped.
pub fn split_statements(script: &str) -> Vec<String> {
    scan(script).statements
}

/// Whether `input` ends a statement: its last character outside comments and whitespace
/// is a `;` outside quotes. An unterminated quote or block comment never does.
pub fn ends_statement(input: &str) -> bool {
    let s = scan(input);
    s.closed && s.last_is_semicolon
}

/// SQL LIKE with `%` and `_` (case-sensitive), as `.tables` and Flight SQL filter patterns
/// are written.
pub fn like(name: &str, pattern: &str) -> bool {
    fn go(n: &[u8], p: &[u8]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some(b'%') => (0..=n.len()).any(|i| go(&n[i..], &p[1..])),
            Some(b'_') => !n.is_empty() && go(&n[1..], &p[1..]),
            Some(c) => n.first() == Some(c) && go(&n[1..], &p[1..]),
        }
    }
    go(name.as_bytes(), pattern.as_bytes())
}

/// What one pass over the text found.
struct Scan {
    statements: Vec<String>,
    /// Every quote and block comment was closed.
    closed: bool,
    /// The last character outside comments and whitespace was a separating `;`.
    last_is_semicolon: bool,
}

fn scan(text: &str) -> Scan {
    let mut statements = Vec::new();
    let mut cur = String::new();
    let mut closed = true;
    let mut last_is_semicolon = false;
    let mut chars = text.chars().peekable();
    let mut finish = |cur: &mut String| {
        let t = cur.trim();
        if !t.is_empty() {
            statements.push(t.to_string());
        }
        cur.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                last_is_semicolon = false;
                cur.push(c);
                closed = false;
                while let Some(q) = chars.next() {
                    cur.push(q);
                    if q == c {
                        // A doubled quote is the quote character itself.
                        if chars.peek() == Some(&c) {
                            cur.push(c);
                            chars.next();
                            continue;
                        }
                        closed = true;
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                cur.push(' ');
                for q in chars.by_ref() {
                    if q == '\n' {
                        cur.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                cur.push(' ');
                closed = false;
                let mut prev = ' ';
                for q in chars.by_ref() {
                    if prev == '*' && q == '/' {
                        closed = true;
                        break;
                    }
                    prev = q;
                }
            }
            ';' => {
                last_is_semicolon = true;
                finish(&mut cur);
            }
            c => {
                if !c.is_whitespace() {
                    last_is_semicolon = false;
                }
                cur.push(c);
            }
        }
    }
    finish(&mut cur);
    Scan {
        statements,
        closed,
        last_is_semicolon,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_and_both_kinds_of_comment() {
        let s = split_statements(
            "select ';'; -- a; comment\nselect 2;\n\n  ;select /* ; */ 3; select \"a;b\" from t",
        );
        assert_eq!(
            s,
            vec![
                "select ';'",
                "select 2",
                "select   3",
                "select \"a;b\" from t"
            ]
        );
    }

    #[test]
    fn a_doubled_quote_stays_inside_its_string() {
        assert_eq!(
            split_statements("select 'it''s; fine'; select 2"),
            vec!["select 'it''s; fine'", "select 2"]
        );
    }

    #[test]
    fn comments_are_removed_and_keep_tokens_apart() {
        assert_eq!(split_statements("/* lead */select/**/1"), vec!["select 1"]);
        assert_eq!(split_statements("-- only a comment"), Vec::<String>::new());
    }

    #[test]
    fn like_patterns() {
        assert!(like("pods", "p%"));
        assert!(like("pods", "_ods"));
        assert!(!like("nodes", "p%"));
    }

    #[test]
    fn a_statement_ends_at_a_semicolon_outside_quotes_and_comments() {
        assert!(ends_statement("select 1;"));
        assert!(ends_statement("select 1\nfrom pods ; -- done"));
        assert!(ends_statement("select 1; /* done */"));
        assert!(!ends_statement("select ';'"));
        assert!(!ends_statement("select 1\nfrom pods"));
        assert!(!ends_statement("select 'unterminated;"));
        assert!(!ends_statement("select 1 /* unterminated;"));
        assert!(!ends_statement("select 1 -- not yet;"));
    }
}
