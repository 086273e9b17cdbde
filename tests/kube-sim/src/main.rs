//! kube-sim: starts a fleet of simulated Kubernetes clusters and writes a kubeconfig for it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kube_sim::{ClusterOptions, Fleet, FleetOptions, GenSpec, scenario};

/// Start a fleet of simulated Kubernetes clusters on 127.0.0.1 and write a kubeconfig with
/// one context per cluster (sim-1, sim-2, …). Point kubectl or kqd at it with
/// `export KUBECONFIG=<path>`; stop with Ctrl-C.
///
/// Example: kube-sim --clusters 2 --pods 500 --kubeconfig /tmp/sim.kubeconfig
#[derive(Parser, Debug)]
#[command(name = "kube-sim", version)]
struct Args {
    /// Number of simulated clusters (contexts sim-1 … sim-N).
    #[arg(long, default_value_t = 2)]
    clusters: usize,
    /// Nodes per cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Application namespaces per cluster (default, kube-system and kube-public always exist).
    #[arg(long, default_value_t = 4)]
    namespaces: usize,
    /// Pods per cluster, in Deployment, StatefulSet and Job chains.
    #[arg(long, default_value_t = 40)]
    pods: usize,
    /// Where to write the kubeconfig.
    #[arg(long, default_value = "kube-sim.kubeconfig")]
    kubeconfig: PathBuf,
    /// Serve plain HTTP, without authentication, instead of HTTPS with a self-signed CA
    /// and bearer tokens.
    #[arg(long)]
    plain_http: bool,
    /// Changes kept for watches to resume from; older resource versions get 410 Gone.
    #[arg(long, default_value_t = 50_000)]
    compaction_window: usize,
    /// Every this many seconds, crash a random pod's container, to show live changes (0: off).
    #[arg(long, default_value_t = 0)]
    churn: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut opts = FleetOptions::new(args.clusters);
    opts.tls = !args.plain_http;
    opts.cluster = ClusterOptions {
        compaction_window: args.compaction_window,
        ..ClusterOptions::default()
    };
    let spec = GenSpec {
        nodes: args.nodes,
        namespaces: args.namespaces,
        pods: args.pods,
        seed: 1,
    };
    let fleet = Fleet::start_generated(opts, &spec).await?;
    fleet
        .write_kubeconfig(&args.kubeconfig)
        .with_context(|| format!("writing {}", args.kubeconfig.display()))?;
    let path = std::fs::canonicalize(&args.kubeconfig)?;
    for c in &fleet.clusters {
        println!(
            "{}  {}  objects={}",
            c.name,
            c.server_url(),
            c.store.counts().values().sum::<usize>()
        );
    }
    println!(
        "kubeconfig: {}\n  export KUBECONFIG={}",
        path.display(),
        path.display()
    );
    println!("ready");
    if args.churn > 0 {
        let clusters = fleet.clusters.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            loop {
                tokio::time::sleep(Duration::from_secs(args.churn)).await;
                n += 1;
                let c = &clusters[n % clusters.len()];
                let Some(rt) = c.store.resolve_kind("v1", "Pod") else {
                    continue;
                };
                let Ok(page) = c.store.list(&rt, &Default::default(), None, None) else {
                    continue;
                };
                let Some(p) = page.items.get(n * 7919 % page.items.len().max(1)) else {
                    continue;
                };
                let v = p.value();
                let container = v["spec"]["containers"][0]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                // What the container logged before it died, as `kubectl logs --previous`
                // (and kqd's crash logs) will show it.
                let log = format!(
                    "level=info msg=\"serving on :8080\"\n\
                     level=info msg=\"connecting to db\" url=postgres://app:s3cret@db:5432/app\n\
                     level=error msg=\"order {n}: cart is nil\"\n\
                     panic: demo crash\n\
                     \n\
                     goroutine 1 [running]:\n\
                     main.checkout(...)\n\
                     \t/src/checkout.go:42 +0x1d\n"
                );
                c.logs.set(&p.namespace, &p.name, &container, true, &log);
                let _ = scenario::crash_container(
                    &c.store,
                    &p.namespace,
                    &p.name,
                    &container,
                    1,
                    "Error",
                    Some("panic: demo crash"),
                );
            }
        });
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}
