//! One simulated cluster: its store, token, faults and traffic log, and the accept loop that
//! serves it over HTTPS (or plain HTTP) on a loopback port, going offline on request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::faults::{ConnRecord, Faults, TrafficLog};
use crate::store::Store;

/// Tunables of a simulated cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// How many changes the store keeps for watches to resume from; older resource versions
    /// get 410 Gone.
    pub compaction_window: usize,
    /// How often open watches that asked for bookmarks receive one.
    pub bookmark_interval: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            compaction_window: 50_000,
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

/// A running simulated cluster.
pub struct Cluster {
    pub name: String,
    pub addr: SocketAddr,
    pub store: Store,
    pub faults: Faults,
    pub traffic: TrafficLog,
    /// What each container logged, for `pods/{name}/log`.
    pub logs: crate::logs::Logs,
    pub options: ClusterOptions,
    token: Mutex<String>,
    original_token: String,
    tls: Option<TlsAcceptor>,
    next_conn: AtomicU64,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Cluster {
    /// Binds a free loopback port and starts serving.
    pub async fn start(
        name: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        options: ClusterOptions,
    ) -> anyhow::Result<Arc<Cluster>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let token = format!("kube-sim-{}-{}", name, uuid::Uuid::new_v4().simple());
        let cluster = Arc::new(Cluster {
            name: name.to_string(),
            addr,
            store: Store::new(options.compaction_window),
            faults: Faults::default(),
            traffic: TrafficLog::default(),
            logs: Default::default(),
            options,
            token: Mutex::new(token.clone()),
            original_token: token,
            tls: tls.map(TlsAcceptor::from),
            next_conn: AtomicU64::new(1),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(cluster.clone(), Some(listener)));
        *cluster.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(cluster)
    }

    /// `https://127.0.0.1:PORT` (or `http://` without TLS).
    pub fn server_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The bearer token clients must present.
    pub fn token(&self) -> String {
        self.original_token.clone()
    }

    /// Over TLS the bearer token is required. Plain HTTP serves without authentication, as
    /// the API server's old insecure port did (client-go never sends tokens over http).
    pub(crate) fn authorized(&self, h: Option<&HeaderValue>) -> bool {
        if self.tls.is_none() {
            return true;
        }
        let want = format!(
            "Bearer {}",
            self.token.lock().unwrap_or_else(|e| e.into_inner())
        );
        h.and_then(|v| v.to_str().ok()) == Some(want.as_str())
    }

    /// Makes the kubeconfig's token invalid (401 on every request) until restored.
    pub fn expire_token(&self) {
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) =
            format!("rotated-{}", uuid::Uuid::new_v4());
    }

    pub fn restore_token(&self) {
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = self.original_token.clone();
    }

    /// Takes the cluster off the network: the port stops listening and every open
    /// connection is cut. `set_offline(false)` listens on the same port again.
    pub fn set_offline(&self, offline: bool) {
        self.faults.offline.send_replace(offline);
    }

    /// Forgets the change log and ends open watches with 410 Gone, as a compaction would.
    pub fn force_gone(&self) {
        self.store.compact();
        self.faults.end_watches_gone();
    }

    /// Stops serving for good.
    pub fn shutdown(&self) {
        self.set_offline(true);
        if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }
}

async fn accept_loop(cluster: Arc<Cluster>, mut listener: Option<TcpListener>) {
    let mut offline = cluster.faults.offline.subscribe();
    loop {
        let Some(l) = listener.as_ref() else {
            // Offline: wait to come back, then bind the same port again.
            if offline.wait_for(|o| !*o).await.is_err() {
                return;
            }
            listener = rebind(cluster.addr).await;
            continue;
        };
        tokio::select! {
            accepted = l.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let id = cluster.next_conn.fetch_add(1, Ordering::Relaxed);
                cluster.traffic.record_conn(ConnRecord { id, peer, at: Instant::now() });
                tokio::spawn(serve_conn(cluster.clone(), stream, id));
            }
            changed = offline.changed() => {
                if changed.is_err() {
                    return;
                }
                if *offline.borrow() {
                    listener = None;
                }
            }
        }
    }
}

async fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Some(l),
            Err(e) if Instant::now() > deadline => {
                tracing::error!(%addr, error = %e, "cannot listen again after going offline");
                return None;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn serve_conn(cluster: Arc<Cluster>, stream: TcpStream, id: u64) {
    let _ = stream.set_nodelay(true);
    let mut offline = cluster.faults.offline.subscribe();
    let svc = {
        let cluster = cluster.clone();
        hyper::service::service_fn(move |req| crate::api::handle(cluster.clone(), id, req))
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let serve = async {
        match &cluster.tls {
            Some(acceptor) => {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
            }
            None => {
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            }
        }
    };
    tokio::select! {
        _ = serve => {}
        _ = offline.wait_for(|o| *o) => {}
    }
}
