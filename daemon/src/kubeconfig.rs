//! Reads the kubeconfig files (the `KUBECONFIG` list, else `~/.kube/config`), merges them
//! with client-go's rules, and builds one kube `Client` per context, with exec credential
//! plugins forced to run non-interactively.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{ExecInteractiveMode, KubeConfigOptions, Kubeconfig};

use crate::store::ContextInfo;

/// Errors building a client for one context.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("context {context}: {source}")]
    Config {
        context: String,
        source: kube::config::KubeconfigError,
    },
    #[error("context {context}: cannot build a client: {source}")]
    Client {
        context: String,
        source: kube::Error,
    },
}

/// One context to watch.
#[derive(Debug, Clone)]
pub struct ContextSpec {
    pub info: ContextInfo,
    /// Its file is broken now; the context runs from that file's last good version.
    pub config_error: Option<String>,
}

/// What reading the kubeconfig files found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub contexts: Vec<ContextSpec>,
    /// Files that could not be read or parsed, with the reason.
    pub errors: Vec<(PathBuf, String)>,
    /// The merged kubeconfig every client is built from.
    pub merged: Kubeconfig,
    pub files: Vec<PathBuf>,
}

/// The files to read: the explicit list, else `$KUBECONFIG`, else `~/.kube/config`.
pub fn kubeconfig_paths(explicit: &[PathBuf]) -> Vec<PathBuf> {
    if !explicit.is_empty() {
        return explicit.to_vec();
    }
    match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(v) => std::env::split_paths(&v)
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        None => vec![kq_schema::paths::home().join(".kube/config")],
    }
}

/// Reads and merges the files once. A file that is missing or broken is reported and
/// skipped; the others still count.
pub fn load(paths: &[PathBuf]) -> Loaded {
    Files::default().load(paths)
}

/// The kubeconfig files as kqd last read them. A file that breaks (a half-written save, bad
/// YAML) keeps serving its last good version until it is fixed.
#[derive(Debug, Default)]
pub struct Files {
    good: HashMap<PathBuf, Kubeconfig>,
}

impl Files {
    /// Reads and merges the files with client-go's rules.
    pub fn load(&mut self, paths: &[PathBuf]) -> Loaded {
        let mut out = Loaded {
            files: paths.to_vec(),
            ..Default::default()
        };
        let mut merged: Option<Kubeconfig> = None;
        for path in paths {
            let (kc, broken) = match read(path) {
                Ok(Some(kc)) => {
                    self.good.insert(path.clone(), kc.clone());
                    (kc, None)
                }
                Ok(None) => {
                    self.good.remove(path);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read kubeconfig");
                    out.errors.push((path.clone(), e.clone()));
                    match self.good.get(path) {
                        Some(kc) => (
                            kc.clone(),
                            Some(format!(
                                "kubeconfig {}: {e}; using its last good version",
                                path.display()
                            )),
                        ),
                        None => continue,
                    }
                }
            };
            add_file(&mut out, &mut merged, path, kc, broken);
        }
        finish(out, merged)
    }
}

/// Adds one file's contexts (the first definition of a name wins) and merges it.
fn add_file(
    out: &mut Loaded,
    merged: &mut Option<Kubeconfig>,
    path: &Path,
    kc: Kubeconfig,
    broken: Option<String>,
) {
    {
        for named in &kc.contexts {
            // client-go's merge keeps the first definition of a name, so the first file
            // that defines a context is its source.
            if out.contexts.iter().any(|c| c.info.name == named.name) {
                continue;
            }
            let Some(ctx) = &named.context else { continue };
            let server = kc
                .clusters
                .iter()
                .find(|c| c.name == ctx.cluster)
                .and_then(|c| c.cluster.as_ref())
                .and_then(|c| c.server.clone())
                .unwrap_or_default();
            out.contexts.push(ContextSpec {
                info: ContextInfo {
                    name: named.name.clone(),
                    cluster: ctx.cluster.clone(),
                    server,
                    user: ctx.user.clone().unwrap_or_default(),
                    namespace: ctx.namespace.clone(),
                    source_file: path.display().to_string(),
                },
                config_error: broken.clone(),
            });
        }
    }
    *merged = Some(match merged.take() {
        None => kc,
        Some(m) => match m.clone().merge(kc) {
            Ok(m) => m,
            Err(e) => {
                out.errors.push((path.to_path_buf(), e.to_string()));
                m
            }
        },
    });
}

/// Fills in servers whose cluster entry lives in a later file.
fn finish(mut out: Loaded, merged: Option<Kubeconfig>) -> Loaded {
    let merged = merged.unwrap_or_default();
    for c in &mut out.contexts {
        if c.info.server.is_empty()
            && let Some(s) = merged
                .clusters
                .iter()
                .find(|n| n.name == c.info.cluster)
                .and_then(|n| n.cluster.as_ref())
                .and_then(|n| n.server.clone())
        {
            c.info.server = s;
        }
    }
    out.merged = merged;
    out
}

/// A digest of what defines a context: its context, cluster and user entries. Two loads
/// with the same digest need no reconnect.
pub fn fingerprint(merged: &Kubeconfig, name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let ctx = merged.contexts.iter().find(|c| c.name == name);
    let inner = ctx.and_then(|c| c.context.as_ref());
    let cluster = inner.and_then(|i| merged.clusters.iter().find(|c| c.name == i.cluster));
    let user = inner
        .and_then(|i| i.user.as_ref())
        .and_then(|u| merged.auth_infos.iter().find(|a| &a.name == u));
    let mut h = std::hash::DefaultHasher::new();
    for part in [
        serde_json::to_string(&ctx),
        serde_json::to_string(&cluster),
        serde_json::to_string(&user),
    ] {
        part.unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

fn read(path: &Path) -> Result<Option<Kubeconfig>, String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
        Ok(_) => {}
    }
    Kubeconfig::read_from(path)
        .map(Some)
        .map_err(|e| crate::describe(&e))
}

/// Builds the client for one context of the merged kubeconfig.
pub async fn client_for(merged: &Kubeconfig, context: &str) -> Result<kube::Client, ContextError> {
    let mut kc = merged.clone();
    // A daemon has no terminal: exec plugins must never prompt or inherit stdin.
    for a in &mut kc.auth_infos {
        if let Some(exec) = a.auth_info.as_mut().and_then(|ai| ai.exec.as_mut()) {
            exec.interactive_mode = Some(ExecInteractiveMode::Never);
        }
    }
    let opts = KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &opts)
        .await
        .map_err(|source| ContextError::Config {
            context: context.to_string(),
            source,
        })?;
    cfg.connect_timeout = Some(Duration::from_secs(10));
    build_client(cfg).map_err(|source| ContextError::Client {
        context: context.to_string(),
        source,
    })
}

/// Largest HTTP/1 read buffer per connection. kqd keeps one watch connection open per
/// resource and context (hundreds), and hyper's default (~400 kB) lets each keep the
/// buffer its largest list page needed; responses stream fine through 64 kB.
const HTTP_READ_BUFFER: usize = 64 * 1024;

/// kube's default client stack (base URI, retries, credentials, extra headers) over a
/// hyper client whose read buffers are capped at [`HTTP_READ_BUFFER`].
fn build_client(cfg: kube::Config) -> Result<kube::Client, kube::Error> {
    use kube::client::ConfigExt;
    use kube::client::retry::RetryPolicy;

    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(cfg.connect_timeout);
    let https = cfg.rustls_https_connector_with_connector(http)?;
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http1_max_buf_size(HTTP_READ_BUFFER)
        .build(https);
    let service = tower::ServiceBuilder::new()
        .layer(cfg.base_uri_layer())
        .option_layer(
            cfg.default_retry
                .then(|| tower::retry::RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(cfg.auth_layer()?)
        .layer(cfg.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(hyper);
    Ok(kube::Client::new(service, cfg.default_namespace))
}
