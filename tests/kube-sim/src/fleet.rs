//! A fleet of simulated clusters sharing one CA, and the kubeconfig that reaches them.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::cluster::{Cluster, ClusterOptions};
use crate::generate::{self, GenSpec};
use crate::tls::FleetTls;

/// How to start a fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Context (and cluster) names, one per simulated cluster.
    pub names: Vec<String>,
    /// Serve HTTPS with a self-signed CA (the default) or plain HTTP.
    pub tls: bool,
    pub cluster: ClusterOptions,
}

impl FleetOptions {
    /// `n` clusters named `sim-1` … `sim-n`, over TLS.
    pub fn new(n: usize) -> Self {
        FleetOptions {
            names: (1..=n).map(|i| format!("sim-{i}")).collect(),
            tls: true,
            cluster: ClusterOptions::default(),
        }
    }
}

/// Running simulated clusters. Dropping the fleet stops them.
pub struct Fleet {
    pub clusters: Vec<Arc<Cluster>>,
    tls: Option<FleetTls>,
    cluster_options: ClusterOptions,
}

impl Fleet {
    pub async fn start(opts: FleetOptions) -> anyhow::Result<Fleet> {
        let tls = if opts.tls {
            Some(FleetTls::generate()?)
        } else {
            None
        };
        let mut fleet = Fleet {
            clusters: Vec::new(),
            tls,
            cluster_options: opts.cluster.clone(),
        };
        for name in &opts.names {
            fleet.add_cluster(name).await?;
        }
        Ok(fleet)
    }

    /// Starts `opts.names.len()` clusters and fills cluster i with `spec` (seed i + 1, so
    /// clusters differ).
    pub async fn start_generated(opts: FleetOptions, spec: &GenSpec) -> anyhow::Result<Fleet> {
        let fleet = Fleet::start(opts).await?;
        for (i, c) in fleet.clusters.iter().enumerate() {
            let spec = GenSpec {
                seed: i as u64 + 1,
                ..spec.clone()
            };
            generate::populate(&c.store, &spec)
                .map_err(|e| anyhow::anyhow!("populating {}: {e}", c.name))?;
        }
        Ok(fleet)
    }

    /// Starts one more cluster on a new port.
    pub async fn add_cluster(&mut self, name: &str) -> anyhow::Result<Arc<Cluster>> {
        let server = self.tls.as_ref().map(|t| t.server.clone());
        let c = Cluster::start(name, server, self.cluster_options.clone()).await?;
        self.clusters.push(c.clone());
        Ok(c)
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// A kubeconfig with one context per cluster, each with its own cluster and user entry.
    pub fn kubeconfig(&self) -> Value {
        kubeconfig_for(
            self.clusters.iter().map(|c| c.as_ref()),
            self.tls.as_ref().map(|t| t.ca_pem.as_str()),
        )
    }

    /// Writes [`Fleet::kubeconfig`] to `path` (mode 0600, as kubectl does).
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        write_private(path, &serde_yaml_like(&self.kubeconfig()))
    }

    /// The CA certificate (PEM) clients must trust, when serving TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &self.clusters {
            c.shutdown();
        }
    }
}

/// A kubeconfig for some clusters of a fleet.
pub fn kubeconfig_for<'a>(
    clusters: impl Iterator<Item = &'a Cluster>,
    ca_pem: Option<&str>,
) -> Value {
    let (mut cs, mut ctxs, mut users) = (vec![], vec![], vec![]);
    let mut first = None;
    for c in clusters {
        first.get_or_insert_with(|| c.name.clone());
        let mut cluster = json!({"server": c.server_url()});
        if let Some(pem) = ca_pem {
            cluster["certificate-authority-data"] =
                json!(base64::engine::general_purpose::STANDARD.encode(pem));
        }
        cs.push(json!({"name": format!("{}-cluster", c.name), "cluster": cluster}));
        users.push(json!({"name": format!("{}-user", c.name), "user": {"token": c.token()}}));
        ctxs.push(json!({"name": c.name, "context": {"cluster": format!("{}-cluster", c.name), "user": format!("{}-user", c.name), "namespace": "default"}}));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": cs,
        "contexts": ctxs,
        "users": users,
        "current-context": first.unwrap_or_default(),
        "preferences": {},
    })
}

/// JSON is valid YAML; kubeconfig readers (client-go, kube-rs) accept it as is.
fn serde_yaml_like(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("a JSON value always serializes")
}

/// Writes a file only its owner can read, atomically (temp file + rename), as kubectl does.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
