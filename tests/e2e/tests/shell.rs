//! The real `kq` in a real terminal (tmux, 80 columns), driven as a person types: tables
//! fitted to the width, the row cap, `\x`, completion by position, the pager, errors with
//! DuckDB's caret, and Ctrl-C cancelling a long statement back to the prompt; and `kq -c`
//! exiting 130 on SIGINT.

use std::time::Duration;

use kq_e2e::terminal::Terminal;
use kq_e2e::{Env, bin, eventually};
use unicode_width::UnicodeWidthStr as _;

/// A simulated fleet of `clusters` × `pods` with kqd synced on it.
async fn synced_fleet(clusters: usize, pods: usize) -> (Env, kq_e2e::Kqd) {
    let env = Env::start(clusters, pods).await;
    let kqd = env.kqd().await;
    env.wait_pods_synced(Duration::from_secs(30)).await;
    (env, kqd)
}

/// kq against the env's kqd, in an 80-column terminal of `height` rows, with its history
/// and state kept in the env's directory.
async fn shell(env: &Env, height: u16, extra: &[(&str, &str)]) -> Terminal {
    let state = env.dir.path().join("shell-state");
    let state = state.to_str().unwrap().to_string();
    let mut vars = vec![
        ("XDG_STATE_HOME", state.as_str()),
        ("TERM", "xterm-256color"),
    ];
    vars.extend_from_slice(extra);
    let socket = env.socket.to_str().unwrap().to_string();
    let mut t = Terminal::start(&bin("kq"), &["--socket", &socket], &vars, 80, height);
    t.wait_prompt().await;
    t
}

/// Whether kqd's log shows the long cross join running.
fn started(log: &str) -> bool {
    log.lines()
        .any(|l| l.contains("query started") && l.contains("range(300000) b"))
}

/// The lines of a box table in `output`.
fn table_lines(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| l.starts_with(['┌', '│', '├', '└']))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wide_table_fits_80_columns_and_long_results_are_capped() {
    let (env, _kqd) = synced_fleet(2, 60).await;
    let mut t = shell(&env, 60, &[]).await;

    // Every pods column would need hundreds of columns: the table keeps to 80, narrows
    // cells with `…`, and says how many columns it shows.
    let out = t
        .run("select * from pods order by context, name limit 3;")
        .await;
    let lines = table_lines(&out);
    assert!(!lines.is_empty(), "no table:\n{out}");
    for l in &lines {
        assert!(l.width() <= 80, "{} columns wide: {l}", l.width());
    }
    assert!(out.contains('…'), "{out}");
    let columns = kq_schema::table("pods").unwrap().columns.len();
    assert!(
        out.contains(&format!("3 rows  {columns} columns (")),
        "{out}"
    );
    assert!(out.contains("│ context │"), "{out}");

    // 120 pods: the first 20 and the last 20 rows, and the count.
    let out = t.run("select name from pods order by name;").await;
    assert!(out.contains("120 rows (40 shown)"), "{out}");
    let body: Vec<&str> = table_lines(&out)
        .into_iter()
        .filter(|l| l.starts_with('│'))
        .skip(2)
        .collect();
    assert_eq!(body.len(), 41, "40 rows and the elision line:\n{out}");
    assert!(body[20].contains('·'), "{out}");
    let all = env
        .csv("select name from pods order by name")
        .await
        .unwrap();
    let names: Vec<&str> = all.lines().skip(1).collect();
    assert!(
        body[0].contains(names[0]) && body[40].contains(names[119]),
        "{out}"
    );

    // .maxrows changes the cap; numbers are right-aligned.
    t.run(".maxrows 4").await;
    let out = t
        .run("select name, restarts from pods order by name;")
        .await;
    assert!(out.contains("120 rows (4 shown)"), "{out}");
    let row = table_lines(&out)[4];
    assert!(row.ends_with(" 0 │"), "{row}");
    assert!(row.contains("        0 │"), "right-aligned: {row}");
}

#[tokio::test(flavor = "multi_thread")]
async fn expanded_display_shows_one_column_per_line() {
    let (env, _kqd) = synced_fleet(1, 10).await;
    let mut t = shell(&env, 60, &[]).await;
    let out = t.run("\\x").await;
    assert_eq!(out, "Expanded display is on.");
    let out = t
        .run("select name, phase, node from pods order by name limit 2;")
        .await;
    let want_first = env
        .csv("select name from pods order by name limit 1")
        .await
        .unwrap();
    let first = want_first.lines().nth(1).unwrap();
    assert!(out.contains("-[ RECORD 1 ]"), "{out}");
    assert!(out.contains("-[ RECORD 2 ]"), "{out}");
    assert!(out.contains(&format!("name  | {first}")), "{out}");
    assert!(out.contains("phase | Running"), "{out}");
    // `.mode line` is DuckDB's spelling of the same idea.
    t.run("\\x off").await;
    t.run(".mode line").await;
    let out = t.run("select 1 as one, 'two' as second;").await;
    assert_eq!(out, "   one = 1\nsecond = two");
}

#[tokio::test(flavor = "multi_thread")]
async fn completion_knows_tables_after_from_and_context_names_in_quotes() {
    let (env, _kqd) = synced_fleet(2, 10).await;
    let mut t = shell(&env, 40, &[]).await;
    // After FROM only tables: `nod` completes to `nodes` (not to the `node` column).
    t.type_text("select count(*) from nod");
    t.press("Tab");
    t.wait_for("nodes completed", Duration::from_secs(5), |s| {
        s.lines().last() == Some("kq> select count(*) from nodes")
    })
    .await;
    t.type_text(" where context = 'sim-");
    t.press("Tab");
    t.press("Tab");
    // Two contexts match: the list of both is shown.
    let s = t
        .wait_for("the context list", Duration::from_secs(5), |s| {
            s.contains("'sim-1'") && s.contains("'sim-2'")
        })
        .await;
    assert!(
        s.contains("'sim-1'  'sim-2'") || s.contains("'sim-1'\n'sim-2'"),
        "{s}"
    );
    t.type_text("2';");
    t.press("Enter");
    let s = t.wait_prompt().await;
    let nodes = env
        .csv("select count(*) from nodes where context = 'sim-2'")
        .await
        .unwrap();
    let n = nodes.lines().nth(1).unwrap();
    assert!(s.contains(&format!("│ {n:>12} │")), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_cancels_a_long_query_and_returns_to_the_prompt() {
    let (env, kqd) = synced_fleet(1, 5).await;
    let mut t = shell(&env, 40, &[]).await;
    // A cross join DuckDB needs many minutes for.
    t.line("select sum(a.range * b.range) from range(300000) a, range(300000) b;");
    assert!(
        eventually(Duration::from_secs(10), || started(&kqd.log())).await,
        "kqd never started the query:\n{}",
        kqd.log()
    );
    t.press("C-c");
    let s = t.wait_prompt().await;
    assert!(s.contains("cancelled"), "{s}");
    assert!(t.alive());
    // kqd stopped the query when the connection closed.
    assert!(
        eventually(Duration::from_secs(10), || kqd
            .log()
            .contains("query cancelled: the client went away"))
        .await,
        "{}",
        kqd.log()
    );
    // The shell goes on, on a new connection.
    let out = t.run("select 42 as answer;").await;
    assert!(out.contains("│     42 │"), "{out}");
    // Ctrl-C at the prompt clears the line; Ctrl-D leaves.
    t.type_text("select 'half typed");
    t.press("C-c");
    t.wait_for("a cleared line", Duration::from_secs(5), |s| {
        s.lines().last() == Some("kq>")
    })
    .await;
    t.press("C-d");
    assert!(eventually(Duration::from_secs(5), || !t.alive()).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_points_at_the_offending_token() {
    let (env, _kqd) = synced_fleet(1, 5).await;
    let mut t = shell(&env, 40, &[]).await;
    let out = t.run("select nme from pods;").await;
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("LINE 1: select nme from pods"))
        .unwrap_or_else(|| panic!("no LINE in:\n{out}"));
    let caret = lines[at + 1];
    let col = caret.find('^').expect("a caret");
    assert_eq!(&lines[at][col..col + 3], "nme", "{out}");
    assert!(out.starts_with("Error: Binder Error"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn output_taller_than_the_terminal_goes_through_the_pager() {
    let (env, _kqd) = synced_fleet(1, 30).await;
    // A pager that keeps what it is given.
    let paged = env.dir.path().join("paged.txt");
    let pager = env.dir.path().join("pager.sh");
    std::fs::write(&pager, format!("#!/bin/sh\ncat > {}\n", paged.display())).unwrap();
    std::fs::set_permissions(&pager, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pager = pager.to_str().unwrap().to_string();
    let mut t = shell(&env, 20, &[("PAGER", &pager)]).await;
    // 10 rows fit in 20 lines: no pager.
    t.run("select name from pods limit 5;").await;
    assert!(!paged.exists());
    // 30 rows do not.
    t.run("select name from pods order by name;").await;
    let text = std::fs::read_to_string(&paged).expect("the pager was given the result");
    assert!(text.contains("30 rows"), "{text}");
    // Written to a file with .once, a result is whole and goes nowhere else.
    let file = env.dir.path().join("once.csv");
    t.run(&format!(".once {}", file.display())).await;
    t.run(".mode csv").await;
    let out = t.run("select name from pods order by name;").await;
    assert_eq!(out, "");
    let want = env
        .csv("select name from pods order by name")
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), want);
}

#[tokio::test(flavor = "multi_thread")]
async fn kq_c_exits_130_on_sigint_and_kqd_stops_the_query() {
    let (env, kqd) = synced_fleet(1, 5).await;
    let child = env.spawn_kq(&[
        "-c",
        "select sum(a.range * b.range) from range(300000) a, range(300000) b",
    ]);
    // Once kqd runs the statement, kq is waiting on it (with its SIGINT handler set).
    assert!(
        eventually(Duration::from_secs(10), || started(&kqd.log())).await,
        "kqd never started the query:\n{}",
        kqd.log()
    );
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        eventually(Duration::from_secs(10), || kqd
            .log()
            .contains("query cancelled: the client went away"))
        .await,
        "{}",
        kqd.log()
    );
}

/// The value cells of a one-column box table: the body rows, trimmed.
fn cells(screen: &str) -> Vec<String> {
    screen
        .lines()
        .filter(|l| l.starts_with('│'))
        .map(|l| l.trim_matches(|c| c == '│' || c == ' ').to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_runs_the_query_again_when_kqd_commits_a_change_to_its_table() {
    let (env, _kqd) = synced_fleet(1, 5).await;
    let mut t = shell(&env, 30, &[]).await;
    t.run("select count(*) as watched from pods where name like 'watched-%';")
        .await;
    t.line(".watch");
    t.wait_for("the first run", Duration::from_secs(10), |s| {
        s.contains("On every change:") && cells(s).last().is_some_and(|c| c == "0")
    })
    .await;
    let store = &env.fleet.clusters[0].store;
    kube_sim::scenario::create_pod(store, "default", "watched-1", "nginx:1.27").unwrap();
    t.wait_for("the run after the change", Duration::from_secs(10), |s| {
        cells(s).last().is_some_and(|c| c == "1")
    })
    .await;
    kube_sim::scenario::create_pod(store, "default", "watched-2", "nginx:1.27").unwrap();
    t.wait_for(
        "the run after the second change",
        Duration::from_secs(10),
        |s| cells(s).last().is_some_and(|c| c == "2"),
    )
    .await;
    t.press("C-c");
    t.wait_prompt().await;
    let out = t.run("select 7 as after_watch;").await;
    assert!(cells(&out).iter().any(|c| c == "7"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kq_watch_in_a_pipe_prints_each_new_result() {
    use std::io::BufRead as _;
    let (env, _kqd) = synced_fleet(1, 5).await;
    let mut child = env.spawn_kq(&[
        "watch",
        "--format",
        "csv",
        "select count(*) as n from pods where name like 'piped-%'",
    ]);
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // Each run prints a header and the count; a commit to pods that does not change the
    // count (a status update) prints the same again, which is fine.
    let until = |want: &str| {
        let mut seen = Vec::new();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no {want:?} after {seen:?}"));
            if line == want {
                return seen;
            }
            seen.push(line);
        }
    };
    assert_eq!(until("0"), ["n"]);
    let store = &env.fleet.clusters[0].store;
    kube_sim::scenario::create_pod(store, "default", "piped-1", "nginx:1.27").unwrap();
    let between = until("1");
    assert!(
        between.iter().all(|l| l == "n" || l == "0")
            && between.last().map(String::as_str) == Some("n"),
        "{between:?}"
    );
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// A result far larger than memory should hold passes through `kq -c --format jsonl`
/// batch by batch: kq's peak RSS stays a fraction of what it writes.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_result_streams_through_kq_in_flat_memory() {
    use std::io::Read as _;
    let (env, _kqd) = synced_fleet(1, 5).await;
    let mut child = env.spawn_kq(&[
        "--format",
        "jsonl",
        "-c",
        "select range as i, repeat('x', 1000) as pad from range(250000)",
    ]);
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut total, mut buf) = (0usize, vec![0u8; 1 << 16]);
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    // VmHWM is the process's peak resident set; the last reading before it exits is it.
    let mut peak_kib = 0u64;
    while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        let Some(hwm) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        else {
            break;
        };
        peak_kib = hwm;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let written = reader.join().unwrap();
    assert!(child.wait().unwrap().success());
    assert!(written > 250_000 * 1000, "wrote {written} bytes");
    let peak_mib = peak_kib / 1024;
    eprintln!(
        "kq wrote {} MiB with a peak RSS of {peak_mib} MiB",
        written >> 20
    );
    assert!(
        peak_mib < 80,
        "kq's peak RSS was {peak_mib} MiB for {} MiB written",
        written >> 20
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn read_runs_a_files_statements_and_output_sends_results_to_a_file() {
    let (env, _kqd) = synced_fleet(1, 5).await;
    let mut t = shell(&env, 40, &[]).await;
    let script = env.dir.path().join("script.sql");
    std::fs::write(
        &script,
        "-- a report\nselect 1 as first;\n.mode line\nselect 2\n  as second;\n",
    )
    .unwrap();
    let out = t.run(&format!(".read {}", script.display())).await;
    assert!(cells(&out).iter().any(|c| c == "1"), "{out}");
    assert!(out.contains("second = 2"), "{out}");
    // .output sends every result to the file until `.output` alone.
    let file = env.dir.path().join("out.txt");
    t.run(&format!(".output {}", file.display())).await;
    assert_eq!(t.run("select 'one' as x;").await, "");
    assert_eq!(t.run("select 'two' as x;").await, "");
    t.run(".output").await;
    assert_eq!(t.run("select 'three' as x;").await, "x = three");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "x = one\nx = two\n"
    );
}
