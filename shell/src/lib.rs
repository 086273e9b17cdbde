//! kq, the SQL shell: sends SQL to kqd over its Flight SQL socket and prints the results,
//! interactively (history, completion, multi-line input, dot commands) or from `-c`, `-f`
//! or stdin. It never opens DuckDB itself.

mod client;
mod complete;
mod format;
mod incidents;
mod repl;
mod table;
mod watch;
mod why;

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;

use clap::Parser;

/// The arrow crate kq decodes results with, for library users.
pub use arrow;
pub use client::{Client, ClientError, QueryResult};
pub use format::Format;
use format::{Display, Target, WriteError};

/// kq: SQL over every cluster in your kubeconfig, answered by the kqd daemon.
///
/// Examples:
///   kq                                  interactive shell
///   kq -c "select context, count(*) from pods group by 1"
///   kq -f report.sql --format csv
///   echo "select * from contexts" | kq --format json
///   kq incidents --follow --min-severity high
#[derive(Parser, Debug, Clone)]
#[command(name = "kq", version)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    /// Run this SQL and exit.
    // SQL may begin with a `--` comment, which psql and duckdb take as SQL too.
    #[arg(short = 'c', long = "command", allow_hyphen_values = true)]
    pub command: Option<String>,
    /// Run the statements of this file and exit.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// kqd's socket; default: $XDG_RUNTIME_DIR/kq/kq.sock, else /tmp/kq-$UID/kq.sock.
    #[arg(long, env = "KQ_SOCKET", global = true)]
    pub socket: Option<PathBuf>,
}

/// What `kq status` and `.status` show.
pub const STATUS_SQL: &str = "select * from status order by context";

/// Subcommands beside SQL.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Cmd {
    /// Each context: state, sync progress (resources listed / watched), objects, time since
    /// the last change, and what is wrong.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// The open incidents, newest first; with --follow, then new and updated ones as kqd
    /// records them (Ctrl-C stops).
    Incidents {
        /// Keep streaming incidents as they are recorded.
        #[arg(long)]
        follow: bool,
        /// Only this context.
        #[arg(long)]
        context: Option<String>,
        /// Only this namespace.
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// Only this severity and the ones above it: critical, high, medium or low.
        #[arg(long, value_parser = ["critical", "high", "medium", "low"])]
        min_severity: Option<String>,
        /// Output format (csv and json stream one record per line).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// What changed before an incident: the incident, then the changes to its workload, its
    /// pod's owner, itself, the ConfigMaps and Secrets it references, its node and its
    /// namespace's NetworkPolicies in the window before it began, closest first.
    Why {
        /// The incident's id (`kq incidents --format csv` shows it, as does `incidents.id`).
        id: String,
        /// How far back to look: 30m, 2h, 1d…
        #[arg(long, default_value = "30m")]
        window: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Run a query, then again each time kqd commits a change to a table it reads (or every
    /// --interval seconds), until Ctrl-C. At a terminal each run replaces the last.
    Watch {
        /// The query.
        sql: String,
        /// Run it every this many seconds instead of on each change.
        #[arg(long)]
        interval: Option<f64>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell, e.g.
    /// `kq completions bash > ~/.local/share/bash-completion/completions/kq`.
    Completions { shell: clap_complete::Shell },
    /// Print kq's man page (roff), e.g. `kq man > ~/.local/share/man/man1/kq.1`.
    Man,
}

/// Runs kq; returns the process exit status.
pub fn run(args: Args) -> i32 {
    use clap::CommandFactory as _;
    match &args.cmd {
        Some(Cmd::Completions { shell }) => {
            clap_complete::generate(*shell, &mut Args::command(), "kq", &mut std::io::stdout());
            return 0;
        }
        Some(Cmd::Man) => {
            return match clap_mangen::Man::new(Args::command()).render(&mut std::io::stdout()) {
                Ok(()) => 0,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
                Err(e) => {
                    eprintln!("kq: cannot write the man page: {e}");
                    1
                }
            };
        }
        _ => {}
    }
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(kq_schema::paths::default_socket);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kq: cannot start: {e}");
            return 1;
        }
    };
    let script = if let Some(c) = &args.command {
        Some(c.clone())
    } else if let Some(f) = &args.file {
        match std::fs::read_to_string(f) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("kq: cannot read {}: {e}", f.display());
                return 1;
            }
        }
    } else if args.cmd.is_none() && !std::io::stdin().is_terminal() {
        let mut s = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut s) {
            eprintln!("kq: cannot read stdin: {e}");
            return 1;
        }
        Some(s)
    } else {
        None
    };
    runtime.block_on(async {
        let mut client = match Client::connect(&socket).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("kq: {e}");
                return 2;
            }
        };
        if let Some(Cmd::Status { format }) = &args.cmd {
            return run_script(&mut client, STATUS_SQL, *format, Target::for_stdout()).await;
        }
        if let Some(Cmd::Incidents {
            follow,
            context,
            namespace,
            min_severity,
            format,
        }) = &args.cmd
        {
            let filter = kq_schema::follow::FollowIncidents {
                context: context.clone(),
                namespace: namespace.clone(),
                min_severity: min_severity.clone(),
            };
            return incidents::run(&mut client, &filter, *follow, *format).await;
        }
        if let Some(Cmd::Why { id, window, format }) = &args.cmd {
            return why::run(&mut client, id, window, *format).await;
        }
        if let Some(Cmd::Watch {
            sql,
            interval,
            format,
        }) = &args.cmd
        {
            let every = match interval {
                Some(s) if *s > 0.0 => watch::Every::Seconds(*s),
                Some(_) => {
                    eprintln!("kq: --interval must be more than 0");
                    return 1;
                }
                None => watch::Every::Commit,
            };
            let terminal = Target::for_stdout() != Target::Plain;
            let display = Display::new(*format);
            return match watch::watch(&mut client, sql, every, &display, terminal).await {
                Ok(()) => 0,
                Err(e) => e.report(),
            };
        }
        match script {
            // Output for scripts and pipes is never capped or cut.
            Some(s) => run_script(&mut client, &s, args.format, Target::Plain).await,
            None => repl::run(client, &socket, args.format).await,
        }
    })
}

/// Runs each statement of a script in turn, stopping at the first error. Ctrl-C cancels
/// the running statement (kqd stops it when the connection closes) and exits 130.
async fn run_script(client: &mut Client, script: &str, format: Format, target: Target) -> i32 {
    let display = Display::new(format);
    for stmt in split_statements(script) {
        let mut out = std::io::stdout().lock();
        let ran = tokio::select! {
            r = run_statement(client, &stmt, &display, target, &mut out) => r,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("kq: cancelled");
                return 130;
            }
        };
        match ran {
            Ok(_) => {}
            Err(e) => return e.report(),
        }
    }
    0
}

/// Runs one statement and writes its result as it arrives. Returns the number of rows.
pub(crate) async fn run_statement(
    client: &mut Client,
    sql: &str,
    display: &Display,
    target: Target,
    out: &mut dyn std::io::Write,
) -> Result<usize, WriteError> {
    let (schema, batches) = client.query_stream(sql).await?;
    format::write_stream(out, schema, batches, display, target).await
}

/// Splits a script on `;` outside quotes and comments, dropping empty statements.
pub use kq_schema::sql::split_statements;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_may_start_with_a_sql_comment() {
        let sql = "-- the biggest images\nselect 1";
        let args = Args::try_parse_from(["kq", "-c", sql]).unwrap();
        assert_eq!(args.command.as_deref(), Some(sql));
    }
}
