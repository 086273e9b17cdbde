//! A real OCI registry for tests: Debian's `docker-registry` on a free port, with a small
//! recording proxy in front that counts every request kq makes (method, path, time) and can
//! answer with injected errors (429 with Retry-After). Images are pushed straight to the
//! registry through its HTTP API, so pushes are not counted.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use sha2::{Digest, Sha256};

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub at: Instant,
    /// The Authorization header kq sent, to check which credentials it used.
    pub authorization: Option<String>,
}

/// An answer the proxy gives instead of forwarding.
#[derive(Debug, Clone)]
pub struct Fault {
    pub status: u16,
    pub retry_after: Option<u64>,
}

/// What the proxy demands before it forwards, like a private registry or Docker Hub.
#[derive(Debug, Clone, Default)]
pub enum Gate {
    /// Anyone may read.
    #[default]
    Open,
    /// HTTP Basic with this user and password (`WWW-Authenticate: Basic`).
    Basic(String, String),
    /// A bearer token from the proxy's own `/token` endpoint, which hands one to anyone
    /// (Docker Hub's anonymous pull flow).
    Bearer,
}

const TOKEN: &str = "kq-test-token";

/// A pushed single-platform image.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: String,
    /// Layers plus config, what kq must report.
    pub size_bytes: i64,
    pub manifest_len: usize,
}

pub struct Registry {
    /// host:port of the proxy: what kq is pointed at.
    pub host: String,
    upstream: String,
    child: Child,
    _dir: tempfile::TempDir,
    seen: Arc<Mutex<Vec<Seen>>>,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    gate: Arc<Mutex<Gate>>,
    pulls_left: Arc<Mutex<Option<String>>>,
    http: reqwest::Client,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn sha(data: &[u8]) -> String {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

impl Registry {
    /// Starts `docker-registry` and the proxy, and waits until the registry answers.
    pub async fn start() -> Registry {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let upstream = format!("127.0.0.1:{port}");
        let config: PathBuf = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {upstream}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("docker-registry is installed (apt install docker-registry; .ci/run does)");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).expect("log"))
            .spawn()
            .expect("docker-registry starts");
        kq_daemon::images::install_tls_provider();
        let http = reqwest::Client::new();
        let base = format!("http://{upstream}/v2/");
        let up = crate::eventually_async(Duration::from_secs(20), || {
            let (http, base) = (http.clone(), base.clone());
            async move {
                http.get(&base)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        assert!(up, "docker-registry did not start on {upstream}");

        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let faults: Arc<Mutex<VecDeque<Fault>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy binds");
        let host = listener.local_addr().expect("addr").to_string();
        let gate: Arc<Mutex<Gate>> = Arc::default();
        let pulls_left: Arc<Mutex<Option<String>>> = Arc::default();
        let proxy = Proxy {
            seen: seen.clone(),
            faults: faults.clone(),
            gate: gate.clone(),
            pulls_left: pulls_left.clone(),
            http: http.clone(),
            upstream: upstream.clone(),
            host: host.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| forward(req, proxy.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Registry {
            host,
            upstream,
            child,
            _dir: dir,
            seen,
            faults,
            gate,
            pulls_left,
            http,
        }
    }

    /// From now on every answer says how many pulls are left, as Docker Hub's
    /// `ratelimit-remaining` header does (`"76;w=21600"`); `None` stops saying it.
    pub fn pulls_left(&self, header: Option<&str>) {
        *self.pulls_left.lock().unwrap() = header.map(str::to_string);
    }

    /// From now on the proxy demands this authentication.
    pub fn gate(&self, gate: Gate) {
        *self.gate.lock().unwrap() = gate;
    }

    /// Requests seen so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }

    /// The next requests get these answers instead of the registry's.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.faults.lock().unwrap().extend(faults);
    }

    async fn put_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha(data);
        let start = self
            .http
            .post(format!("http://{}/v2/{repo}/blobs/uploads/", self.upstream))
            .send()
            .await
            .expect("upload starts");
        assert_eq!(start.status(), 202, "blob upload refused");
        let location = start.headers()["location"].to_str().unwrap().to_string();
        let url = if location.starts_with("http") {
            location
        } else {
            format!("http://{}{location}", self.upstream)
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let put = self
            .http
            .put(format!("{url}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("blob upload");
        assert_eq!(put.status(), 201, "blob upload failed");
        digest
    }

    async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
        let r = self
            .http
            .put(format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                self.upstream
            ))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("manifest upload");
        let status = r.status();
        assert_eq!(
            status,
            201,
            "manifest upload failed: {}",
            r.text().await.unwrap_or_default()
        );
    }

    /// Pushes an image of random layers with these sizes for a platform, tagged `tag` (or
    /// untagged, by digest only, when `tag` is None).
    pub async fn push_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        layer_sizes: &[usize],
        os: &str,
        arch: &str,
    ) -> Pushed {
        let config = serde_json::to_vec(&json!({
            "architecture": arch, "os": os,
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {"Labels": {"made-by": format!("kq test {:x}", fastrand::u64(..))}}
        }))
        .unwrap();
        let config_digest = self.put_blob(repo, &config).await;
        let mut layers = Vec::new();
        let mut size = config.len() as i64;
        for &n in layer_sizes {
            let data: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
                .take(n)
                .collect();
            let d = self.put_blob(repo, &data).await;
            size += n as i64;
            layers.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": n, "digest": d}));
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": config_digest},
            "layers": layers,
        }))
        .unwrap();
        let digest = sha(&manifest);
        let mt = "application/vnd.oci.image.manifest.v1+json";
        self.put_manifest(repo, tag.unwrap_or(&digest), mt, &manifest)
            .await;
        Pushed {
            digest,
            size_bytes: size,
            manifest_len: manifest.len(),
        }
    }

    /// Pushes a multi-arch index over already pushed images, tagged `tag`; returns its digest.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: &str,
        images: &[(&Pushed, &str, &str)],
    ) -> String {
        let manifests: Vec<_> = images
            .iter()
            .map(|(p, os, arch)| {
                json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "size": p.manifest_len, "digest": p.digest,
                    "platform": {"os": os, "architecture": arch},
                })
            })
            .collect();
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }))
        .unwrap();
        self.put_manifest(repo, tag, "application/vnd.oci.image.index.v1+json", &index)
            .await;
        sha(&index)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Resp = hyper::Response<Full<Bytes>>;

#[derive(Clone)]
struct Proxy {
    seen: Arc<Mutex<Vec<Seen>>>,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    gate: Arc<Mutex<Gate>>,
    pulls_left: Arc<Mutex<Option<String>>>,
    http: reqwest::Client,
    upstream: String,
    host: String,
}

fn answer(status: u16, headers: &[(&str, String)], body: &'static [u8]) -> Resp {
    let mut b = hyper::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(Full::new(Bytes::from_static(body))).unwrap()
}

async fn forward(
    req: hyper::Request<hyper::body::Incoming>,
    p: Proxy,
) -> Result<Resp, std::convert::Infallible> {
    let at = Instant::now();
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let record = |status: u16| {
        p.seen.lock().unwrap().push(Seen {
            method: method.to_string(),
            path: path.clone(),
            status,
            at,
            authorization: authorization.clone(),
        })
    };
    let fault = p.faults.lock().unwrap().pop_front();
    if let Some(f) = fault {
        record(f.status);
        let headers: Vec<(&str, String)> = f
            .retry_after
            .map(|s| ("retry-after", s.to_string()))
            .into_iter()
            .collect();
        return Ok(answer(
            f.status,
            &headers,
            b"{\"errors\":[{\"code\":\"TOOMANYREQUESTS\"}]}",
        ));
    }
    let gate = p.gate.lock().unwrap().clone();
    match &gate {
        Gate::Open => {}
        Gate::Basic(user, password) => {
            use base64::Engine as _;
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            );
            if authorization.as_deref() != Some(want.as_str()) {
                record(401);
                let h = [("www-authenticate", "Basic realm=\"kq-test\"".to_string())];
                return Ok(answer(
                    401,
                    &h,
                    b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
                ));
            }
        }
        Gate::Bearer => {
            if path.starts_with("/token") {
                record(200);
                return Ok(answer(
                    200,
                    &[("content-type", "application/json".into())],
                    b"{\"token\":\"kq-test-token\"}",
                ));
            }
            if authorization.as_deref() != Some(format!("Bearer {TOKEN}").as_str()) {
                record(401);
                let h = [(
                    "www-authenticate",
                    format!(
                        "Bearer realm=\"http://{}/token\",service=\"kq-test\",scope=\"repository:team/app:pull\"",
                        p.host
                    ),
                )];
                return Ok(answer(
                    401,
                    &h,
                    b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
                ));
            }
        }
    }
    let mut out = p.http.request(
        reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap(),
        format!("http://{}{path}", p.upstream),
    );
    for (k, v) in req.headers() {
        if k != "host" && k != "authorization" {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let resp = match out.body(body).send().await {
        Ok(r) => r,
        Err(_) => {
            record(502);
            return Ok(answer(502, &[], b""));
        }
    };
    let status = resp.status().as_u16();
    record(status);
    let mut b = hyper::Response::builder().status(status);
    for (k, v) in resp.headers() {
        if k != "transfer-encoding" && k != "connection" {
            b = b.header(k.as_str(), v.as_bytes());
        }
    }
    if let Some(left) = p.pulls_left.lock().unwrap().clone() {
        b = b.header("ratelimit-remaining", left);
    }
    let bytes = resp.bytes().await.unwrap_or_default();
    Ok(b.body(Full::new(bytes)).unwrap())
}
