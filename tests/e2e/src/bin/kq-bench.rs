//! kq-bench: measures kqd against the simulator and prints each figure next to its target
//! and, where one exists, as a ratio of a baseline measured in the same run.
//!
//! - initial sync rate vs the raw typed-JSON parse rate of the same pods (one core);
//! - peak RSS of kqd after the initial sync;
//! - `select count(*) from pods` over the socket (in-process Flight client) and through
//!   `kq -c` (a new process each time);
//! - watch-to-query latency: a pod created in the simulator until a query sees it.

use std::time::{Duration, Instant};

use clap::Parser;
use kq_e2e::{Env, sim_pod_uids};
use kube_sim::scenario;

#[derive(Parser)]
#[command(name = "kq-bench", about = "Measure kqd against the simulator")]
struct Args {
    /// Simulated clusters.
    #[arg(long, default_value_t = 2)]
    clusters: usize,
    /// Pods per cluster.
    #[arg(long, default_value_t = 5000)]
    pods: usize,
    /// Samples for each latency figure.
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// Sustained load: pod status changes per second across the fleet, one run per rate
    /// (for example `--load 1000,5000`), each measuring watch-to-query latency under it.
    #[arg(long, value_delimiter = ',')]
    load: Vec<u64>,
    /// How long each sustained-load run lasts.
    #[arg(long, default_value_t = 30)]
    load_secs: u64,
    /// How long the probes' watchers wait between two queries, in milliseconds. Each query
    /// scans the probed cluster's pods, so polling is itself a load on kqd's two cores: at
    /// 2 ms, a query is running most of the time.
    #[arg(long, default_value_t = 2)]
    poll_ms: u64,
    /// Mirror into a PostgreSQL started for the run (initdb/pg_ctl on loopback): report the
    /// catch-up time, and under load the watch-to-PostgreSQL latency too.
    #[arg(long)]
    postgres: bool,
    /// The nice value of that PostgreSQL's processes. A team's server runs on another
    /// machine; at 0 it shares kqd's cores at kqd's priority, and its COPY and upserts
    /// take about a third of a two-core machine during the catch-up.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    postgres_nice: i32,
    /// With `--postgres`: mirror without `objects` (`mirror_objects = false`), to see what
    /// its JSON costs. The catch-up then waits for the pods.
    #[arg(long)]
    no_mirror_objects: bool,
    /// Run kqd without field-level history (`record_diffs = false`), to see what diffs cost.
    #[arg(long)]
    no_diffs: bool,
    /// A line for kqd's config file, TOML (`--config 'initial_sync_concurrency = 1'`),
    /// to measure a setting against the defaults; repeat for more.
    #[arg(long = "config", value_name = "TOML")]
    config_lines: Vec<String>,
    /// Copy kqd's log (debug level for kqd's own modules) here at the end, to see where
    /// the time went.
    #[arg(long)]
    keep_log: Option<std::path::PathBuf>,
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A memory figure of `/proc/PID/status` in MiB: `VmHWM` is the peak RSS, `VmRSS` the
/// current one.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    eprintln!(
        "generating {} clusters × {} pods …",
        args.clusters, args.pods
    );
    let env = Env::start(args.clusters, args.pods).await;
    let total: usize = env
        .fleet
        .clusters
        .iter()
        .map(|c| sim_pod_uids(c).len())
        .sum();

    // Baseline: parse every object the fleet serves once, into the type kqd parses it into,
    // on one core.
    let bodies = bytes_of::objects(&env);
    let started = Instant::now();
    let mut parsed = 0usize;
    for (kind, b) in &bodies {
        parsed += usize::from(bytes_of::parse(kind, b)?);
    }
    let parse_rate = parsed as f64 / started.elapsed().as_secs_f64();

    let pg = args
        .postgres
        .then(|| kq_e2e::pg::Postgres::start_niced(args.postgres_nice));
    let url = pg.as_ref().map(|p| p.url());
    // Initial sync: from kqd's start until every context has listed every resource and
    // the rows are queryable (the state change is committed after the rows it follows).
    let started = Instant::now();
    let mut vars: Vec<(&str, &str)> = Vec::new();
    if let Some(u) = &url {
        vars.push(("KQ_POSTGRES_URL", u));
    }
    if args.no_diffs {
        vars.push(("KQ_RECORD_DIFFS", "false"));
    }
    // kqd reads its config file under the env's HOME, never the user's (so it is pinned
    // even when the user sets XDG_CONFIG_HOME); `mirror_objects` has no variable.
    let config_home = env.dir.path().join(".config");
    let mut config: Vec<&str> = args.config_lines.iter().map(String::as_str).collect();
    if args.no_mirror_objects {
        config.push("mirror_objects = false");
    }
    if !config.is_empty() {
        std::fs::create_dir_all(config_home.join("kq"))?;
        std::fs::write(config_home.join("kq/config.toml"), config.join("\n") + "\n")?;
    }
    let config_home = config_home.to_string_lossy().into_owned();
    vars.push(("XDG_CONFIG_HOME", &config_home));
    let kqd = env.kqd_with(&vars).await;
    let mut client = kq_shell::Client::connect(&env.socket).await?;
    wait_synced(
        &mut client,
        env.fleet.clusters.len(),
        total,
        Duration::from_secs(600),
    )
    .await?;
    let sync = started.elapsed();
    // Each context's pods, as the simulator serves them: a check, not part of the timing.
    env.wait_pods_synced(Duration::from_secs(10)).await;
    let sync_rate = bodies.len() as f64 / sync.as_secs_f64();
    let rss = peak_rss_mib(kqd.child.id());
    let rss_now = status_mib(kqd.child.id(), "VmRSS");
    // The mirror's catch-up: from kqd's start until PostgreSQL has every object and the
    // outbox is empty.
    let mut pg_client = None;
    let mut catch_up = None;
    if let Some(u) = &url {
        let (client, conn) = tokio_postgres::connect(u, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        // What the catch-up waits for: every object, or every pod when `objects` is not
        // mirrored.
        let table = if args.no_mirror_objects {
            "pods"
        } else {
            "objects"
        };
        let duck_objects = env
            .csv(&format!("select count(*) from {table}"))
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let duck_objects: i64 = duck_objects.lines().nth(1).unwrap_or("0").parse()?;
        loop {
            // PostgreSQL's count only once kqd says the outbox is empty: counting the
            // mirrored objects ten times a second took a share of the CPU the catch-up
            // measured here needs.
            let state = env
                .csv("select state, outbox from mirror")
                .await
                .unwrap_or_default();
            if state.ends_with("streaming,0\n") {
                let n: i64 = client
                    .query_one(&format!("select count(*) from kq.{table}"), &[])
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                if n >= duck_objects {
                    break;
                }
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(900),
                "the mirror never caught up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        catch_up = Some((
            started.elapsed(),
            duck_objects,
            table,
            peak_rss_mib(kqd.child.id()),
        ));
        pg_client = Some(client);
    }

    let mut socket_lat = Vec::new();
    for _ in 0..args.samples {
        let t = Instant::now();
        client.query("select count(*) from pods").await?;
        socket_lat.push(t.elapsed());
    }
    let mut cli_lat = Vec::new();
    for _ in 0..args.samples.min(50) {
        let t = Instant::now();
        let out = env
            .kq(&["-c", "select count(*) from pods", "--format", "csv"])
            .await;
        anyhow::ensure!(out.status.success(), "kq -c failed");
        cli_lat.push(t.elapsed());
    }

    let c = &env.fleet.clusters[0];
    let mut watch_lat = Vec::new();
    for i in 0..args.samples.min(50) {
        let name = format!("bench-{i}");
        let t = Instant::now();
        scenario::create_pod(&c.store, "default", &name, "nginx:1.27")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let sql = format!("select count(*) from pods where name = '{name}'");
        loop {
            let r = client.query(&sql).await?;
            if first_ints(&r.batches) == [1] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        watch_lat.push(t.elapsed());
    }
    let rss_after = peak_rss_mib(kqd.child.id());

    // The database and its write-ahead log, which holds everything until a checkpoint.
    let db_mib: f64 = ["kq.duckdb", "kq.duckdb.wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(env.data_dir.join(f)).ok())
        .map(|m| m.len() as f64 / 1048576.0)
        .sum();
    println!(
        "kq-bench: {} clusters × {} pods ({total} pods){}",
        args.clusters,
        args.pods,
        if args.postgres {
            format!(
                ", mirrored to a local PostgreSQL at nice {}",
                args.postgres_nice
            )
        } else {
            String::new()
        }
    );
    if !config.is_empty() {
        println!("kqd config: {}", config.join("; "));
    }
    println!("{:<44} {:>14} {:>22}", "figure", "value", "target / ratio");
    println!(
        "{:<44} {:>14} {:>22}",
        "baseline: typed JSON parse of every object, 1 core",
        format!("{parse_rate:.0} /s"),
        ""
    );
    println!(
        "{:<44} {:>14} {:>22}",
        format!("initial sync of {} objects", bodies.len()),
        format!("{:.2} s", sync.as_secs_f64()),
        format!(
            "{sync_rate:.0} /s = {:.2}× parse (≥ 0.5×)",
            sync_rate / parse_rate
        )
    );
    println!(
        "{:<44} {:>14} {:>22}",
        "kqd peak RSS after initial sync",
        format!("{rss:.0} MiB"),
        "≤ 250 MiB at 10 × 10k"
    );
    println!(
        "{:<44} {:>14} {:>22}",
        "kqd RSS right after initial sync",
        format!("{rss_now:.0} MiB"),
        ""
    );
    println!(
        "{:<44} {:>14} {:>22}",
        "kqd peak RSS at the end",
        format!("{rss_after:.0} MiB"),
        ""
    );
    println!(
        "{:<44} {:>14} {:>22}",
        "database file and WAL",
        format!("{db_mib:.1} MiB"),
        ""
    );
    println!(
        "{:<44} {:>14} {:>22}",
        "count(*) over the socket, p50",
        ms(percentile(&mut socket_lat, 0.5)),
        "≤ 2 ms"
    );
    println!(
        "{:<44} {:>14} {:>22}",
        "count(*) over the socket, p99",
        ms(percentile(&mut socket_lat, 0.99)),
        ""
    );
    println!(
        "{:<44} {:>14} {:>22}",
        "count(*) through `kq -c`, p50",
        ms(percentile(&mut cli_lat, 0.5)),
        ""
    );
    println!(
        "{:<44} {:>14} {:>22}",
        "watch-to-query latency, p50",
        ms(percentile(&mut watch_lat, 0.5)),
        ""
    );
    println!(
        "{:<44} {:>14} {:>22}",
        "watch-to-query latency, p99",
        ms(percentile(&mut watch_lat, 0.99)),
        "≤ 250 ms"
    );
    if let Some((took, rows, table, peak)) = catch_up {
        println!(
            "{:<44} {:>14} {:>22}",
            format!("mirror catch-up of {rows} {table}"),
            format!("{:.2} s", took.as_secs_f64()),
            "≤ 60 s from kqd start"
        );
        println!(
            "{:<44} {:>14} {:>22}",
            "kqd peak RSS once the mirror caught up",
            format!("{peak:.0} MiB"),
            ""
        );
    }
    for rate in &args.load {
        let r = load::run(
            &env,
            &mut client,
            pg_client.as_ref(),
            *rate,
            Duration::from_secs(args.load_secs),
            Duration::from_millis(args.poll_ms),
        )
        .await?;
        r.print();
    }
    if let Some(path) = &args.keep_log {
        std::fs::copy(&kqd.log, path)?;
    }
    drop(kqd);
    drop(pg);
    Ok(())
}

/// The sustained-load mode: the simulator changes pods' status at a steady rate while a
/// probe measures how long a change takes to become queryable.
mod load {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use kq_e2e::Env;
    use kube_sim::patch::PatchType;
    use kube_sim::scenario;

    use super::{ms, percentile};

    /// What one run measured.
    pub struct Report {
        rate: u64,
        applied: u64,
        secs: f64,
        latencies: Vec<Duration>,
        /// With the mirror: from the change to PostgreSQL having it, and from DuckDB
        /// having it to PostgreSQL having it.
        pg_latencies: Vec<Duration>,
        pg_after_duck: Vec<Duration>,
        /// p50 of the first and of the last third of the probes.
        first: Duration,
        last: Duration,
        lost: usize,
        /// The DuckDB probe's queries: how many, and their p50.
        polls: Vec<Duration>,
    }

    impl Report {
        /// Lag is bounded when the probes at the end wait no longer than those at the
        /// start, within a margin (twice as long, or 250 ms more).
        fn bounded(&self) -> bool {
            self.lost == 0
                && (self.last <= self.first * 2
                    || self.last <= self.first + Duration::from_millis(250))
        }

        pub fn print(mut self) {
            let achieved = self.applied as f64 / self.secs;
            println!();
            println!(
                "sustained load: {} pod status changes/s asked, {achieved:.0}/s applied for {:.0} s; {} probes",
                self.rate,
                self.secs,
                self.latencies.len()
            );
            let target = if self.rate <= 1000 { "≤ 250 ms" } else { "" };
            println!(
                "{:<44} {:>14} {:>22}",
                "watch-to-query latency under load, p50",
                ms(percentile(&mut self.latencies, 0.5)),
                ""
            );
            println!(
                "{:<44} {:>14} {:>22}",
                "watch-to-query latency under load, p99",
                ms(percentile(&mut self.latencies, 0.99)),
                target
            );
            println!(
                "{:<44} {:>14} {:>22}",
                "lag, p50 of first third → last third",
                format!("{} → {}", ms(self.first), ms(self.last)),
                if self.bounded() { "bounded" } else { "GROWING" }
            );
            if !self.pg_latencies.is_empty() {
                println!(
                    "{:<44} {:>14} {:>22}",
                    "watch-to-PostgreSQL latency, p50",
                    ms(percentile(&mut self.pg_latencies, 0.5)),
                    ""
                );
                println!(
                    "{:<44} {:>14} {:>22}",
                    "watch-to-PostgreSQL latency, p99",
                    ms(percentile(&mut self.pg_latencies, 0.99)),
                    ""
                );
                println!(
                    "{:<44} {:>14} {:>22}",
                    "DuckDB-to-PostgreSQL lag, p99",
                    ms(percentile(&mut self.pg_after_duck, 0.99)),
                    "≤ 1 s"
                );
            }
            println!(
                "{:<44} {:>14} {:>22}",
                format!("probe queries ({}), p50", self.polls.len()),
                ms(percentile(&mut self.polls, 0.5)),
                ""
            );
            if self.lost > 0 {
                println!("{} probes were never seen within 10 s", self.lost);
            }
        }
    }

    const PROBE: &str = "bench-probe";
    /// What the last probe's number reads while probing goes on.
    const STILL_PROBING: u64 = u64::MAX;

    pub async fn run(
        env: &Env,
        client: &mut kq_shell::Client,
        pg: Option<&tokio_postgres::Client>,
        rate: u64,
        secs: Duration,
        poll: Duration,
    ) -> anyhow::Result<Report> {
        let c0 = env.fleet.clusters[0].clone();
        if scenario::create_pod(&c0.store, "default", PROBE, "nginx:1.27").is_ok() {
            wait_probe(client, &c0.name, "", Duration::from_secs(30)).await?;
        }
        // Every pod of the fleet, changed in turn, the clusters interleaved: a fleet's
        // events come from all its clusters at once, and so each batch of the writer holds
        // changes of every context, with their status rows, as it would in use. (Taking
        // one cluster's pods after another's put a whole run's load on one or two contexts.)
        let mut per_cluster = Vec::new();
        for c in &env.fleet.clusters {
            let rt = c
                .store
                .resolve_kind("v1", "Pod")
                .expect("pods are built in");
            let pods: Vec<_> = c
                .store
                .list(&rt, &Default::default(), None, None)?
                .items
                .into_iter()
                .filter(|p| p.name != PROBE)
                .map(|p| (c.clone(), rt.clone(), p.namespace.clone(), p.name.clone()))
                .collect();
            per_cluster.push(pods.into_iter());
        }
        let mut targets = Vec::new();
        loop {
            let before = targets.len();
            targets.extend(per_cluster.iter_mut().filter_map(Iterator::next));
            if targets.len() == before {
                break;
            }
        }
        anyhow::ensure!(!targets.is_empty(), "no pods to change");
        let stop = Arc::new(AtomicBool::new(false));
        let applied = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let load = {
            let (stop, applied) = (stop.clone(), applied.clone());
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                    while applied.load(Ordering::Relaxed) < due {
                        let (c, rt, ns, name) = &targets[i % targets.len()];
                        let body = format!(r#"{{"status":{{"message":"bench {i}"}}}}"#);
                        let _ =
                            c.store
                                .patch(rt, ns, name, PatchType::Merge, body.as_bytes(), true);
                        applied.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        // Probes: a label on one pod, set to the probe's number every 200 ms on a fixed
        // schedule, whether or not the last one is seen yet. Probe n is in DuckDB once the
        // label reads n or a later number (a later write replaces it), and its latency runs
        // from when it was sent. Waiting for each probe before sending the next would count
        // a stall of the writer (a checkpoint) as one slow probe instead of as the ten that
        // were sent during it, as the events of those seconds were: the p99 would hide it.
        let rt = c0
            .store
            .resolve_kind("v1", "Pod")
            .expect("pods are built in");
        // The last probe sent, once probing is over (`STILL_PROBING` until then).
        let last_probe = AtomicU64::new(STILL_PROBING);
        // Numbers above any an earlier run left on the label, so that it never reads a
        // probe of this run as had before it was sent.
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64
            * 1000;
        let send = async {
            let mut sent: Vec<(u64, Instant)> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let probed = async {
                while started.elapsed() < secs {
                    tick.tick().await;
                    let n = base + sent.len() as u64 + 1;
                    let body = format!(r#"{{"metadata":{{"labels":{{"kq-bench-probe":"{n}"}}}}}}"#);
                    let at = Instant::now();
                    c0.store
                        .patch(
                            &rt,
                            "default",
                            PROBE,
                            PatchType::Merge,
                            body.as_bytes(),
                            false,
                        )
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    sent.push((n, at));
                }
                anyhow::Ok(())
            }
            .await;
            // Set however probing ended, so that the watches end too.
            last_probe.store(sent.last().map_or(0, |(n, _)| *n), Ordering::Relaxed);
            probed.map(|()| sent)
        };
        let duck_watch = watch_duck_probe(client, &c0.name, &last_probe, poll);
        let pg_watch = async {
            match pg {
                Some(pg) => watch_pg_probe(pg, &c0.name, &last_probe, poll)
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        let (sent, duck_seen, pg_seen) = futures::future::join3(send, duck_watch, pg_watch).await;
        let (
            sent,
            Watched {
                seen: duck_seen,
                polls,
            },
        ) = (sent?, duck_seen?);
        // Probe n was had once the label read n or a later probe.
        let had =
            |seen: &[(u64, Instant)], n: u64| seen.iter().find(|(v, _)| *v >= n).map(|(_, at)| *at);
        let mut lost = 0;
        // (probe, when it was sent, when DuckDB had it)
        let mut seen_in_duck: Vec<(u64, Instant, Instant)> = Vec::new();
        for (n, at) in &sent {
            match had(&duck_seen, *n) {
                Some(in_duck) => seen_in_duck.push((*n, *at, in_duck)),
                None => lost += 1,
            }
        }
        let latencies: Vec<Duration> = seen_in_duck
            .iter()
            .map(|(_, sent, in_duck)| in_duck.saturating_duration_since(*sent))
            .collect();
        let (mut pg_latencies, mut pg_after_duck) = (Vec::new(), Vec::new());
        if let Some(Watched { seen: pg_seen, .. }) = pg_seen? {
            for (n, sent, in_duck) in &seen_in_duck {
                match had(&pg_seen, *n) {
                    Some(at) => {
                        pg_latencies.push(at.saturating_duration_since(*sent));
                        pg_after_duck.push(at.saturating_duration_since(*in_duck));
                    }
                    None => lost += 1,
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let _ = load.join();
        let secs_run = started.elapsed().as_secs_f64();
        let third = latencies.len() / 3;
        anyhow::ensure!(third > 0, "too few probes: {}", latencies.len());
        let mut first: Vec<Duration> = latencies[..third].to_vec();
        let mut last: Vec<Duration> = latencies[latencies.len() - third..].to_vec();
        Ok(Report {
            rate,
            applied: applied.load(Ordering::Relaxed),
            secs: secs_run,
            first: percentile(&mut first, 0.5),
            last: percentile(&mut last, 0.5),
            latencies,
            pg_latencies,
            pg_after_duck,
            lost,
            polls,
        })
    }

    /// Watches PostgreSQL's copy of the probe pod's label (see [`watch_probe`]). It polls by
    /// primary key:
    /// polled by name every 2 ms, each poll scanned the 100k mirrored pods, and PostgreSQL
    /// spent about 0.3 of the two cores on the benchmark's own queries.
    async fn watch_pg_probe(
        pg: &tokio_postgres::Client,
        context: &str,
        last: &AtomicU64,
        every: Duration,
    ) -> anyhow::Result<Watched> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (instance, uid) = loop {
            let rows = pg
                .query(
                    "select instance, uid from kq.pods where context = $1 and name = $2",
                    &[&context, &PROBE],
                )
                .await?;
            if let Some(r) = rows.first() {
                break (r.get::<_, String>(0), r.get::<_, String>(1));
            }
            anyhow::ensure!(Instant::now() < deadline, "probe pod not in PostgreSQL");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let stmt = pg
            .prepare(
                "select labels->>'kq-bench-probe' from kq.pods where instance = $1 and context = $2 and uid = $3",
            )
            .await?;
        watch_probe(last, every, async || {
            let rows = pg.query(&stmt, &[&instance, &context, &uid]).await?;
            Ok(rows
                .first()
                .and_then(|r| r.get::<_, Option<String>>(0))
                .and_then(|v| v.parse::<u64>().ok()))
        })
        .await
    }

    /// Watches the probe pod's label in DuckDB, through kqd's socket (see [`watch_probe`]).
    async fn watch_duck_probe(
        client: &mut kq_shell::Client,
        context: &str,
        last: &AtomicU64,
        every: Duration,
    ) -> anyhow::Result<Watched> {
        use kq_shell::arrow::array::{Array as _, StringArray};
        let sql = format!(
            "select labels->>'kq-bench-probe' as v from pods where context = '{context}' and name = '{PROBE}'"
        );
        watch_probe(last, every, async || {
            let r = client.query(&sql).await?;
            Ok(r.batches.iter().find_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<StringArray>()?;
                (a.len() > 0 && a.is_valid(0)).then(|| a.value(0).parse::<u64>().ok())?
            }))
        })
        .await
    }

    /// What a probe's watcher saw: each value with when it was first seen, and how long
    /// each of its polls took.
    struct Watched {
        seen: Vec<(u64, Instant)>,
        polls: Vec<Duration>,
    }

    /// Polls the probe's label with `poll`, waiting `every` between two polls, until it reads
    /// `last` once that is set
    /// (or 10 s after: a probe lost on the way is counted lost, not waited for), and returns
    /// each value it took with when it was first seen, and how long each poll took.
    async fn watch_probe(
        last: &AtomicU64,
        every: Duration,
        mut poll: impl AsyncFnMut() -> anyhow::Result<Option<u64>>,
    ) -> anyhow::Result<Watched> {
        let mut seen: Vec<(u64, Instant)> = Vec::new();
        let mut done_at: Option<Instant> = None;
        let mut polls = Vec::new();
        loop {
            let asked = Instant::now();
            let read = poll().await?;
            polls.push(asked.elapsed());
            if let Some(v) = read
                && seen.last().is_none_or(|(last, _)| v > *last)
            {
                seen.push((v, Instant::now()));
            }
            let last = last.load(Ordering::Relaxed);
            if last != STILL_PROBING {
                let at = *done_at.get_or_insert_with(Instant::now);
                if seen.last().is_some_and(|(v, _)| *v >= last)
                    || at.elapsed() > Duration::from_secs(10)
                {
                    return Ok(Watched { seen, polls });
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Waits until the probe pod's label reads `want` (empty: the pod exists).
    async fn wait_probe(
        client: &mut kq_shell::Client,
        context: &str,
        want: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        use kq_shell::arrow::array::{Array as _, StringArray};
        let sql = format!(
            "select coalesce(labels->>'kq-bench-probe', '') as v from pods where context = '{context}' and name = '{PROBE}'"
        );
        let deadline = Instant::now() + timeout;
        loop {
            let r = client.query(&sql).await?;
            let seen = r.batches.iter().any(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .is_some_and(|a| a.len() > 0 && a.value(0) == want)
            });
            if seen {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "probe {want:?} not seen");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Waits until every one of `clusters` contexts is ready and DuckDB holds `pods` pods:
/// one query every 50 ms on the in-process client. (Polling with a new `kq` process each
/// time, as the tests do, took CPU from the sync this times, on the same two cores.)
async fn wait_synced(
    client: &mut kq_shell::Client,
    clusters: usize,
    pods: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let sql = "select (select count(*) from contexts where state = 'ready') as ready,
                      (select count(*) from pods) as pods";
    let want = [clusters as i64, pods as i64];
    let deadline = Instant::now() + timeout;
    loop {
        let got = first_ints(&client.query(sql).await?.batches);
        if got == want {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "after {timeout:?}: (ready contexts, pods) = {got:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first row's BIGINT columns of a result, in order (empty without a row).
fn first_ints(batches: &[kq_shell::arrow::record_batch::RecordBatch]) -> Vec<i64> {
    use kq_shell::arrow::array::Array as _;
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Vec::new();
    };
    (0..b.num_columns())
        .filter_map(|i| {
            let col = b
                .column(i)
                .as_any()
                .downcast_ref::<arrow_array_i64::Int64Array>()?;
            (!col.is_null(0)).then(|| col.value(0))
        })
        .collect()
}

/// Arrow's Int64Array, through kq-shell's arrow.
mod arrow_array_i64 {
    pub use kq_shell::arrow::array::Int64Array;
}

/// Every object's JSON exactly as the simulator serves it, and the typed parse kqd does.
mod bytes_of {
    use k8s_openapi::api::{
        apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch, core::v1 as core,
        networking::v1 as networking, policy::v1 as policy, rbac::v1 as rbac,
        storage::v1 as storage,
    };

    pub use bytes::Bytes;

    /// (kind, JSON) of every object, one version per resource, as kqd lists them.
    pub fn objects(env: &kq_e2e::Env) -> Vec<(String, Bytes)> {
        let mut out = Vec::new();
        for c in &env.fleet.clusters {
            let mut seen = std::collections::HashSet::new();
            for rt in c.store.resource_types() {
                if !seen.insert((rt.group.clone(), rt.plural.clone())) {
                    continue;
                }
                let page = c
                    .store
                    .list(&rt, &Default::default(), None, None)
                    .expect("list");
                out.extend(page.items.iter().map(|o| (rt.kind.clone(), o.json.clone())));
            }
        }
        out
    }

    /// Parses one object into its k8s-openapi type (a JSON value for other kinds).
    pub fn parse(kind: &str, b: &[u8]) -> serde_json::Result<bool> {
        macro_rules! typed {
            ($($k:literal => $t:ty),* $(,)?) => {
                match kind {
                    $($k => serde_json::from_slice::<$t>(b).map(|_| true),)*
                    _ => serde_json::from_slice::<serde_json::Value>(b).map(|_| true),
                }
            };
        }
        typed! {
            "Namespace" => core::Namespace, "Node" => core::Node, "Pod" => core::Pod,
            "Service" => core::Service, "ConfigMap" => core::ConfigMap,
            "Secret" => core::Secret, "Event" => core::Event, "Endpoints" => core::Endpoints,
            "PersistentVolume" => core::PersistentVolume,
            "PersistentVolumeClaim" => core::PersistentVolumeClaim,
            "ServiceAccount" => core::ServiceAccount,
            "Deployment" => apps::Deployment, "ReplicaSet" => apps::ReplicaSet,
            "StatefulSet" => apps::StatefulSet, "DaemonSet" => apps::DaemonSet,
            "Job" => batch::Job, "CronJob" => batch::CronJob,
            "Ingress" => networking::Ingress, "NetworkPolicy" => networking::NetworkPolicy,
            "StorageClass" => storage::StorageClass,
            "Role" => rbac::Role, "ClusterRole" => rbac::ClusterRole,
            "RoleBinding" => rbac::RoleBinding, "ClusterRoleBinding" => rbac::ClusterRoleBinding,
            "HorizontalPodAutoscaler" => autoscaling::HorizontalPodAutoscaler,
            "PodDisruptionBudget" => policy::PodDisruptionBudget,
        }
    }
}
