//! The OCI distribution API, politely: every request waits for its registry host's rate
//! limiter, failures back off exponentially with jitter, a 429's `Retry-After` is obeyed, and
//! Docker Hub's `ratelimit-remaining` stops manifest GETs (its counted pulls) before the
//! quota runs out. Bearer tokens are fetched on a 401 challenge, anonymously or with the
//! registry's credentials.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

use super::auth::{Basic, Challenge, Credentials};
use super::manifest;
use super::reference::ImageRef;
use super::status::{RegistryStatus, Statuses};

/// How kq talks to registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Requests per second to one registry host, unless `host_rates` says otherwise.
    pub rate_per_sec: f64,
    pub host_rates: HashMap<String, f64>,
    /// Registries served over plain HTTP (a local registry, like Docker's
    /// `insecure-registries`).
    pub insecure: Vec<String>,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// The first backoff; each retry doubles it, up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Timeout of one HTTP request.
    pub timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            rate_per_sec: 2.0,
            host_rates: HashMap::new(),
            insecure: Vec::new(),
            max_attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Why a registry request failed. Not-found and unauthorized answers are remembered for a
/// while; the others are worth trying again soon.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("{0}")]
    Failed(String),
}

impl RegistryError {
    /// Whether the same request would fail the same way for a while.
    pub fn is_lasting(&self) -> bool {
        !matches!(self, RegistryError::Failed(_))
    }
}

/// The registry client shared by every lookup worker.
pub struct Registry {
    http: reqwest::Client,
    opts: RegistryOptions,
    creds: Credentials,
    limiters: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
    /// `Authorization` values by (host, repository), learnt from challenges.
    auth: Mutex<HashMap<(String, String), String>>,
    /// Hosts whose pull quota is spent, until when.
    quota_spent: Mutex<HashMap<String, Instant>>,
    /// Hosts that answered 429, and until when every request to them waits.
    held: Mutex<HashMap<String, Instant>>,
    /// Per-registry counts and problems, for the `registries` table.
    status: Statuses,
}

/// Installs ring as the process's rustls provider, which every reqwest client needs first:
/// reqwest is built without a TLS provider of its own, so that it shares kube's ring.
/// Installing twice is harmless, so callers need not coordinate.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Registry {
    pub fn new(opts: RegistryOptions, creds: Credentials) -> Result<Registry, String> {
        install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(opts.timeout)
            .user_agent(concat!("kq/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the registry client: {e}"))?;
        Ok(Registry {
            http,
            opts,
            creds,
            limiters: Mutex::default(),
            auth: Mutex::default(),
            quota_spent: Mutex::default(),
            held: Mutex::default(),
            status: Statuses::default(),
        })
    }

    /// Every registry's status, and the generation it is at.
    pub fn statuses(&self) -> (u64, Vec<RegistryStatus>) {
        (self.status.generation(), self.status.snapshot())
    }

    /// The generation of the registries' status; it moves whenever one changes.
    pub fn status_generation(&self) -> u64 {
        self.status.generation()
    }

    /// The digest a reference resolves to, from a `HEAD` of its manifest: registries do not
    /// count HEADs as pulls.
    pub async fn head_digest(
        &self,
        r: &ImageRef,
        pull_secret: Option<&Basic>,
    ) -> Result<String, RegistryError> {
        let resp = self
            .manifest_request(Method::HEAD, r, r.manifest_reference(), pull_secret)
            .await?;
        resp.headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| {
                RegistryError::Failed(format!(
                    "{} answered HEAD without a Docker-Content-Digest header",
                    r.registry
                ))
            })
    }

    /// The manifest (or index) with this digest.
    pub async fn manifest(
        &self,
        r: &ImageRef,
        digest: &str,
        pull_secret: Option<&Basic>,
    ) -> Result<bytes::Bytes, RegistryError> {
        if let Some(until) = self.quota_spent(r.api_host()) {
            return Err(RegistryError::Failed(format!(
                "{}'s pull quota is spent (ratelimit-remaining: 0); manifests wait {}s",
                r.registry,
                until.saturating_duration_since(Instant::now()).as_secs()
            )));
        }
        let resp = self
            .manifest_request(Method::GET, r, digest, pull_secret)
            .await?;
        resp.bytes().await.map_err(|e| {
            RegistryError::Failed(format!("reading a manifest from {}: {e}", r.registry))
        })
    }

    fn quota_spent(&self, host: &str) -> Option<Instant> {
        let mut q = self.quota_spent.lock().unwrap_or_else(|e| e.into_inner());
        match q.get(host) {
            Some(&until) if until > Instant::now() => Some(until),
            Some(_) => {
                q.remove(host);
                None
            }
            None => None,
        }
    }

    /// One manifest request, with its retries and, on a challenge, authentication.
    async fn manifest_request(
        &self,
        method: Method,
        r: &ImageRef,
        reference: &str,
        pull_secret: Option<&Basic>,
    ) -> Result<reqwest::Response, RegistryError> {
        let host = r.api_host().to_string();
        let scheme = if self.opts.insecure.contains(&r.registry) {
            "http"
        } else {
            "https"
        };
        let url = format!(
            "{scheme}://{host}/v2/{}/manifests/{reference}",
            r.repository
        );
        let creds = pull_secret.or_else(|| self.creds.get(&r.registry));
        let key = (host.clone(), r.repository.clone());
        let mut challenged = false;
        let mut attempt = 0;
        loop {
            self.wait_turn(&host).await;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header(ACCEPT, manifest::ACCEPT);
            if let Some(a) = self
                .auth
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
            {
                req = req.header(AUTHORIZATION, a);
            }
            self.status.sent(&r.registry, method == Method::GET);
            let sent = req.send().await;
            if let Ok(resp) = &sent {
                self.status.answered(&r.registry, resp.status().as_u16());
            }
            let wait = match sent {
                Ok(resp) if resp.status().is_success() => {
                    self.note_quota(r, &host, resp.headers());
                    return Ok(resp);
                }
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !challenged => {
                    challenged = true;
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(Challenge::parse);
                    let value = self.authenticate(r, challenge, creds).await?;
                    self.auth
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key.clone(), value);
                    continue;
                }
                Ok(resp) => match resp.status() {
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        return Err(RegistryError::Unauthorized(format!(
                            "{} refused {} ({})",
                            r.registry,
                            r.repository,
                            if creds.is_some() {
                                "with credentials"
                            } else {
                                "anonymously; add credentials to ~/.docker/config.json or an imagePullSecret"
                            }
                        )));
                    }
                    StatusCode::NOT_FOUND => {
                        return Err(RegistryError::NotFound(format!(
                            "{} has no manifest {}:{reference}",
                            r.registry, r.repository
                        )));
                    }
                    StatusCode::TOO_MANY_REQUESTS => {
                        let told = retry_after(resp.headers());
                        tracing::info!(registry = %r.registry, retry_after = ?told, "registry says 429 Too Many Requests");
                        let wait = told.unwrap_or_else(|| self.backoff(attempt));
                        // The whole host is told to wait, not just this request: the other
                        // workers' requests would only earn more 429s.
                        self.hold(r, &host, wait);
                        self.status.failed(
                            &r.registry,
                            &format!("429 Too Many Requests: waiting {:.1}s", wait.as_secs_f64()),
                        );
                        wait
                    }
                    s if s.is_server_error() => {
                        self.status
                            .failed(&r.registry, &format!("answered {s} for {}", r.repository));
                        self.backoff(attempt)
                    }
                    s => {
                        return Err(RegistryError::Failed(format!(
                            "{} answered {s} for {}:{reference}",
                            r.registry, r.repository
                        )));
                    }
                },
                Err(e) => {
                    tracing::debug!(registry = %r.registry, error = %e, "registry request failed");
                    self.status
                        .failed(&r.registry, &format!("unreachable: {}", error_chain(&e)));
                    if attempt + 1 >= self.opts.max_attempts {
                        return Err(RegistryError::Failed(format!(
                            "{} unreachable: {}",
                            r.registry,
                            error_chain(&e)
                        )));
                    }
                    self.backoff(attempt)
                }
            };
            attempt += 1;
            if attempt >= self.opts.max_attempts {
                return Err(RegistryError::Failed(format!(
                    "{} kept failing after {attempt} attempts",
                    r.registry
                )));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Answers a challenge: a bearer token from the realm (with credentials when there are
    /// some), or the credentials themselves for Basic.
    async fn authenticate(
        &self,
        r: &ImageRef,
        challenge: Option<Challenge>,
        creds: Option<&Basic>,
    ) -> Result<String, RegistryError> {
        let basic = |b: &Basic| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", b.username, b.password))
            )
        };
        match challenge {
            Some(Challenge::Basic) => creds.map(basic).ok_or_else(|| {
                RegistryError::Unauthorized(format!(
                    "{} wants credentials and kq has none for it",
                    r.registry
                ))
            }),
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", r.repository));
                let mut req = self.http.get(&realm).query(&[("scope", scope.as_str())]);
                if let Some(s) = &service {
                    req = req.query(&[("service", s.as_str())]);
                }
                if let Some(b) = creds {
                    req = req.header(AUTHORIZATION, basic(b));
                }
                // The token service is a host like any other: it gets the same politeness.
                if let Ok(u) = reqwest::Url::parse(&realm)
                    && let Some(h) = u.host_str()
                {
                    let host = match u.port() {
                        Some(p) => format!("{h}:{p}"),
                        None => h.to_string(),
                    };
                    self.wait_turn(&host).await;
                }
                self.status.sent(&r.registry, false);
                let resp = req.send().await.map_err(|e| {
                    let e = format!("token service {realm} unreachable: {}", error_chain(&e));
                    self.status.failed(&r.registry, &e);
                    RegistryError::Failed(e)
                })?;
                self.status.answered(&r.registry, resp.status().as_u16());
                if !resp.status().is_success() {
                    let e = format!("token service {realm} answered {}", resp.status());
                    self.status.failed(&r.registry, &e);
                    return Err(RegistryError::Unauthorized(e));
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Token = resp.json().await.map_err(|e| {
                    RegistryError::Failed(format!("token service {realm} sent no token: {e}"))
                })?;
                t.token
                    .or(t.access_token)
                    .map(|t| format!("Bearer {t}"))
                    .ok_or_else(|| {
                        RegistryError::Failed(format!("token service {realm} sent no token"))
                    })
            }
            None => Err(RegistryError::Unauthorized(format!(
                "{} answered 401 without a usable challenge",
                r.registry
            ))),
        }
    }

    /// Holds every request to `host` for `wait`, unless it is held longer already.
    fn hold(&self, r: &ImageRef, host: &str, wait: Duration) {
        self.status.held(&r.registry, unix_after(wait));
        let until = Instant::now() + wait;
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let e = held.entry(host.to_string()).or_insert(until);
        *e = (*e).max(until);
    }

    /// When requests to `host` may go again, if it is held.
    fn held_until(&self, host: &str) -> Option<Instant> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(host).copied().filter(|&t| t > Instant::now())
    }

    /// Waits until the host is not held and its limiter lets one more request through.
    async fn wait_turn(&self, host: &str) {
        while let Some(until) = self.held_until(host) {
            tokio::time::sleep_until(until.into()).await;
        }
        let limiter = {
            let mut l = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
            l.entry(host.to_string())
                .or_insert_with(|| {
                    let rate = self
                        .opts
                        .host_rates
                        .get(host)
                        .copied()
                        .unwrap_or(self.opts.rate_per_sec);
                    Arc::new(RateLimiter::direct(quota(rate)))
                })
                .clone()
        };
        loop {
            limiter.until_ready().await;
            // A 429 may have come in while this request waited for its turn.
            match self.held_until(host) {
                Some(until) => tokio::time::sleep_until(until.into()).await,
                None => return,
            }
        }
    }

    /// Docker Hub says how many pulls are left (`ratelimit-remaining: 76;w=21600`); at zero,
    /// manifest GETs to that host stop for the window.
    fn note_quota(&self, r: &ImageRef, host: &str, headers: &HeaderMap) {
        let Some(v) = headers
            .get("ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        let (left, window) = parse_ratelimit(v);
        if let Some(left) = left {
            self.status.pulls_remaining(&r.registry, left as i64);
        }
        if left == Some(0) {
            let window = Duration::from_secs(window.unwrap_or(3600));
            self.status.held(&r.registry, unix_after(window));
            self.status.failed(
                &r.registry,
                &format!(
                    "pull quota spent (ratelimit-remaining: 0): manifest downloads wait {}s",
                    window.as_secs()
                ),
            );
            tracing::warn!(
                host,
                window_secs = window.as_secs(),
                "registry pull quota spent; manifest downloads pause"
            );
            self.quota_spent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(host.to_string(), Instant::now() + window);
        }
    }

    /// Exponential backoff with jitter: between half and all of base·2^attempt.
    fn backoff(&self, attempt: u32) -> Duration {
        let full = self
            .opts
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.opts.backoff_max);
        full / 2 + full.mul_f64(fastrand::f64() / 2.0)
    }
}

/// A quota of `rate` requests per second with no burst, so that no second ever sees more.
pub fn quota(rate: f64) -> Quota {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    Quota::with_period(period)
        .expect("a positive period")
        .allow_burst(NonZeroU32::MIN)
}

/// `Retry-After` as seconds or an HTTP date, capped at ten minutes.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let when = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
            let secs = when.duration_since(jiff::Timestamp::now()).as_secs().max(0);
            Duration::from_secs(secs as u64)
        }
    };
    Some(d.min(Duration::from_secs(600)))
}

/// Unix seconds `d` from now.
fn unix_after(d: Duration) -> i64 {
    jiff::Timestamp::now().as_second() + d.as_secs_f64().ceil() as i64
}

/// `76;w=21600` into (76, 21600).
fn parse_ratelimit(v: &str) -> (Option<u64>, Option<u64>) {
    let mut parts = v.split(';');
    let left = parts.next().and_then(|p| p.trim().parse().ok());
    let window = parts.find_map(|p| p.trim().strip_prefix("w=")?.parse().ok());
    (left, window)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_rate_limit_headers() {
        assert_eq!(parse_ratelimit("76;w=21600"), (Some(76), Some(21600)));
        assert_eq!(parse_ratelimit("0"), (Some(0), None));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&later)
            .unwrap();
        h.insert(RETRY_AFTER, date.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_stops_at_the_cap() {
        let r = Registry::new(RegistryOptions::default(), Credentials::default()).unwrap();
        for attempt in 0..4 {
            let full = Duration::from_millis(500) * (1 << attempt);
            let d = r.backoff(attempt);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert!(r.backoff(30) <= Duration::from_secs(60));
    }
}
