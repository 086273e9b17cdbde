//! Running a query again and again: every N seconds (psql's `\watch`), or each time kqd
//! commits a change to a table the query reads (kqd pushes the tables of each commit on a
//! follow stream). `.watch` in the shell and `kq watch` share it.

use std::io::Write as _;
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};

use crate::client::Client;
use crate::format::{Display, Target, WriteError, terminal_size};

/// When to run the query again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Every {
    /// When kqd commits to a table the query reads.
    Commit,
    Seconds(f64),
}

/// Commits closer together than this are shown once: a busy fleet commits every batch.
const SETTLE: Duration = Duration::from_millis(250);

/// The tables a query reads, views expanded to the tables under them; empty when it names
/// none kq knows (then every commit counts).
pub fn tables_read(sql: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut todo = crate::complete::named_tables(sql);
    while let Some(t) = todo.pop() {
        if out.iter().any(|o| o == t.name) {
            continue;
        }
        out.push(t.name.to_string());
        if let Some(view) = t.view {
            todo.extend(crate::complete::named_tables(view));
        }
    }
    out.sort();
    out
}

/// Runs `sql` and shows it, then again at each `every`, until Ctrl-C (Ok) or an error.
/// At a terminal each run clears the screen first, under a header, as watch(1) does; in a
/// pipe the runs follow each other.
pub async fn watch(
    client: &mut Client,
    sql: &str,
    every: Every,
    display: &Display,
    terminal: bool,
) -> Result<(), WriteError> {
    // Subscribed before the first run, so that no commit falls between the two.
    let mut commits = match every {
        Every::Commit => {
            let filter = kq_schema::follow::FollowCommits {
                tables: tables_read(sql),
            };
            Some(client.follow_commits(&filter).await?)
        }
        Every::Seconds(_) => None,
    };
    let label = match every {
        Every::Commit => "On every change".to_string(),
        Every::Seconds(s) => format!("Every {s}s"),
    };
    loop {
        let target = if terminal {
            Target::Terminal {
                width: terminal_size().map_or(80, |(w, _)| w),
            }
        } else {
            Target::Plain
        };
        let mut buf = Vec::new();
        if terminal {
            let now = jiff::Zoned::now().strftime("%H:%M:%S");
            let _ = writeln!(buf, "{label}: {sql}    {now}\n");
        }
        let run = crate::run_statement(client, sql, display, target, &mut buf);
        tokio::select! {
            r = run => { r?; }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let mut out = std::io::stdout().lock();
        if terminal {
            let _ = out.write_all(b"\x1b[H\x1b[2J");
        }
        out.write_all(&buf)?;
        out.flush()?;
        drop(out);
        let next = async {
            match (&mut commits, every) {
                (Some(stream), _) => {
                    let got = stream.next().await;
                    // Let a burst of commits settle, then take them all as one.
                    tokio::time::sleep(SETTLE).await;
                    while let Some(Some(_)) = stream.next().now_or_never() {}
                    got.is_some()
                }
                (None, Every::Seconds(s)) => {
                    tokio::time::sleep(Duration::from_secs_f64(s)).await;
                    true
                }
                (None, Every::Commit) => false,
            }
        };
        tokio::select! {
            more = next => if !more { return Ok(()) },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_is_watched_through_its_tables() {
        assert_eq!(tables_read("select count(*) from pods"), ["pods"]);
        let got = tables_read("select * from container_images");
        assert!(got.contains(&"container_images".to_string()), "{got:?}");
        assert!(got.len() > 1, "the view's own tables too: {got:?}");
        assert!(tables_read("select 1").is_empty());
        assert_eq!(
            tables_read("select * from pods p, nodes n join namespaces x on true"),
            ["namespaces", "nodes", "pods"]
        );
    }
}
