//! Crash logs: for each new exit of a container (a crash with restart, an OOM kill), the
//! last lines the exited container logged, fetched once from its cluster and kept with the
//! incident (`incidents.last_log`).
//!
//! The fetcher listens to the incident rows the writer publishes after commit, like the
//! hook, so it never blocks the writer; each fetch is its own task with a deadline, and its
//! result goes back to the writer as an op. It fetches once per occurrence (the row's
//! occurrence marker), at most `per_minute` times per context (the rest are counted and
//! logged), and a context whose RBAC forbids `pods/log` is remembered and left alone for
//! [`FORBIDDEN_PAUSE`] instead of being asked again on every crash. Lines that look like
//! credentials are masked before the text leaves this module.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use futures::AsyncReadExt as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::clients::Clients;
use crate::config::ContextFilter;
use crate::store::{IncidentRow, Op};

/// How long one fetch may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// How long a context that answered 403 for `pods/log` is left alone.
pub const FORBIDDEN_PAUSE: Duration = Duration::from_secs(3600);

/// Occurrences remembered as fetched; beyond this the oldest half is forgotten (a repeat
/// of a forgotten one is at worst fetched a second time).
const REMEMBERED: usize = 10_000;

/// What the `[crash_logs]` settings configure.
#[derive(Debug, Clone)]
pub struct CrashLogOptions {
    pub enabled: bool,
    /// `tailLines`: how many of the last lines to fetch.
    pub lines: u32,
    /// `limitBytes`: the most bytes kept.
    pub bytes: u32,
    /// Fetches per context in any minute.
    pub per_minute: u32,
    /// The contexts whose crash logs are fetched (all, unless excluded).
    pub contexts: ContextFilter,
}

impl Default for CrashLogOptions {
    fn default() -> Self {
        CrashLogOptions {
            enabled: true,
            lines: 50,
            bytes: 16 * 1024,
            per_minute: 30,
            contexts: ContextFilter::default(),
        }
    }
}

/// One fetch to make: which container of which pod, and which occurrence it is for.
#[derive(Debug, Clone, PartialEq)]
struct Wanted {
    context: Arc<str>,
    incident: String,
    marker: String,
    namespace: String,
    pod: String,
    container: String,
    /// The exit was of the previous run (the container restarted since), not the current.
    previous: bool,
}

/// The fetch a published row asks for: an open container exit of a pod, at an occurrence
/// not fetched yet.
fn wanted(row: &IncidentRow) -> Option<Wanted> {
    if row.object_kind != "Pod" || row.resolved_at.is_some() || row.exit_code.is_none() {
        return None;
    }
    Some(Wanted {
        context: Arc::from(row.context.as_str()),
        incident: row.id.clone(),
        marker: row.last_marker.clone()?,
        namespace: row.namespace.clone()?,
        pod: row.object_name.clone(),
        container: row.container.clone()?,
        // Detection reads a restarted container's exit from lastState (restartCount > 0)
        // and a container that is not restarted from its current state.
        previous: row.restart_count.unwrap_or(0) > 0,
    })
}

/// Runs the fetcher for rows from `rx` until the channel closes or `cancel` fires.
pub async fn run(
    opts: CrashLogOptions,
    mut rx: tokio::sync::broadcast::Receiver<Arc<IncidentRow>>,
    clients: Arc<Clients>,
    tx: tokio::sync::mpsc::Sender<Op>,
    cancel: CancellationToken,
) {
    let per_minute = NonZeroU32::new(opts.per_minute.max(1)).expect("at least one");
    let limiter: DefaultKeyedRateLimiter<Arc<str>> =
        RateLimiter::keyed(Quota::per_minute(per_minute));
    let forbidden: Arc<Mutex<HashMap<Arc<str>, Instant>>> = Arc::default();
    // Per incident, the occurrence last fetched, so that the row the fetch itself makes
    // the writer publish (and any other update of the same occurrence) fetches nothing.
    let mut fetched: HashMap<String, String> = HashMap::new();
    let mut limited: HashMap<Arc<str>, u64> = HashMap::new();
    let mut limited_since = Instant::now();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.try_join_next().is_some() {}
        let row = tokio::select! {
            _ = cancel.cancelled() => break,
            r = rx.recv() => match r {
                Ok(row) => row,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "the crash log fetcher fell behind; some crashes get no log");
                    continue;
                }
                Err(RecvError::Closed) => break,
            },
        };
        if row.resolved_at.is_some() {
            fetched.remove(&row.id);
            continue;
        }
        let Some(w) = wanted(&row) else { continue };
        if fetched.get(&w.incident) == Some(&w.marker) || !opts.contexts.allows(&w.context) {
            continue;
        }
        if forbidden
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&w.context)
            .is_some_and(|at| at.elapsed() < FORBIDDEN_PAUSE)
        {
            continue;
        }
        if limited_since.elapsed() >= Duration::from_secs(60) {
            for (context, skipped) in limited.drain() {
                tracing::warn!(context = %context, skipped, per_minute = opts.per_minute, "crash logs not fetched: over the per-context rate limit");
            }
            limited_since = Instant::now();
        }
        if limiter.check_key(&w.context).is_err() {
            *limited.entry(w.context.clone()).or_default() += 1;
            continue;
        }
        if fetched.len() >= REMEMBERED {
            // Incident ids are random-looking, so this drops an arbitrary half.
            let drop: Vec<String> = fetched.keys().take(REMEMBERED / 2).cloned().collect();
            for k in drop {
                fetched.remove(&k);
            }
        }
        fetched.insert(w.incident.clone(), w.marker.clone());
        let Some(client) = clients.get(&w.context) else {
            continue;
        };
        running.spawn(fetch_one(
            client,
            w,
            opts.clone(),
            tx.clone(),
            forbidden.clone(),
        ));
    }
    running.shutdown().await;
}

/// Fetches one log tail and sends it to the writer; logs why when it cannot.
async fn fetch_one(
    client: kube::Client,
    w: Wanted,
    opts: CrashLogOptions,
    tx: tokio::sync::mpsc::Sender<Op>,
    forbidden: Arc<Mutex<HashMap<Arc<str>, Instant>>>,
) {
    let fields = || {
        format!(
            "{}/{}/{} container {}",
            w.context, w.namespace, w.pod, w.container
        )
    };
    match tokio::time::timeout(DEADLINE, fetch(client, &w, &opts)).await {
        Ok(Ok(text)) => {
            let op = Op::CrashLog {
                context: w.context.clone(),
                incident: w.incident.clone(),
                marker: w.marker.clone(),
                log: mask(&text),
            };
            tracing::debug!(context = %w.context, incident = %w.incident, bytes = text.len(), "fetched a crash log");
            // The writer is gone only at shutdown.
            let _ = tx.send(op).await;
        }
        Ok(Err(kube::Error::Api(e))) if e.code == 403 => {
            forbidden
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(w.context.clone(), Instant::now());
            tracing::warn!(context = %w.context, pause_s = FORBIDDEN_PAUSE.as_secs(), error = %e.message, "crash logs are forbidden in this context (pods/log); not asking again for a while");
        }
        Ok(Err(e)) => {
            tracing::info!(context = %w.context, pod = %fields(), error = %crate::describe(&e), "cannot fetch a crash log");
        }
        Err(_) => {
            tracing::info!(context = %w.context, pod = %fields(), deadline_s = DEADLINE.as_secs(), "fetching a crash log timed out");
        }
    }
}

/// `GET …/pods/{name}/log?container=…&previous=…&tailLines=N&limitBytes=M`, read to at most
/// M bytes (whatever the server sends) and decoded leniently.
async fn fetch(
    client: kube::Client,
    w: &Wanted,
    opts: &CrashLogOptions,
) -> Result<String, kube::Error> {
    let api: Api<Pod> = Api::namespaced(client, &w.namespace);
    let params = LogParams {
        container: Some(w.container.clone()),
        previous: w.previous,
        tail_lines: Some(i64::from(opts.lines)),
        limit_bytes: Some(i64::from(opts.bytes)),
        ..LogParams::default()
    };
    let stream = api.log_stream(&w.pod, &params).await?;
    let mut bytes = Vec::new();
    stream
        .take(u64::from(opts.bytes))
        .read_to_end(&mut bytes)
        .await
        .map_err(kube::Error::ReadEvents)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// What a masked value is replaced with.
const MASK: &str = "***";

/// `key=value`, `key: value` and `"key": "value"` where the key names a credential.
static KEYED: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r#"(?i)([\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential)[\w.-]*["']?\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s,;&]+)"#,
    )
    .expect("the credential pattern compiles")
});

/// `Authorization: …` headers and bare bearer tokens.
static AUTHORIZATION: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r#"(?i)(authorization["']?\s*[=:]\s*)(.+)|(bearer\s+)([\w.~+/-]+=*)"#)
        .expect("the authorization pattern compiles")
});

/// AWS access key ids, user:password in URLs.
static OTHERS: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b|(://[^:/@\s]+:)[^@/\s]+(@)")
        .expect("the key pattern compiles")
});

/// The log with what looks like a credential replaced by `***`: values of keys named like
/// passwords, tokens, secrets and API keys, `Authorization` headers and bearer tokens, AWS
/// access key ids, passwords in URLs, and the body of PEM private keys.
pub fn mask(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut in_key = false;
    for line in log.split_inclusive('\n') {
        let (text, end) = match line.strip_suffix('\n') {
            Some(t) => (t, "\n"),
            None => (line, ""),
        };
        if text.contains("-----BEGIN") && text.contains("PRIVATE KEY") {
            in_key = true;
            out.push_str(text);
        } else if in_key {
            if text.contains("-----END") {
                in_key = false;
                out.push_str(text);
            } else {
                out.push_str(MASK);
            }
        } else {
            let t =
                AUTHORIZATION.replace_all(text, |c: &regex::Captures| match (c.get(1), c.get(3)) {
                    (Some(k), _) => format!("{}{MASK}", k.as_str()),
                    (None, Some(b)) => format!("{}{MASK}", b.as_str()),
                    _ => MASK.to_string(),
                });
            let t = KEYED.replace_all(&t, |c: &regex::Captures| format!("{}{MASK}", &c[1]));
            let t = OTHERS.replace_all(&t, |c: &regex::Captures| match (c.get(1), c.get(2)) {
                (Some(a), Some(b)) => format!("{}{MASK}{}", a.as_str(), b.as_str()),
                _ => MASK.to_string(),
            });
            out.push_str(&t);
        }
        out.push_str(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_masked_and_the_rest_kept() {
        let log = "\
starting shop v1.5
connecting with password=hunter2 user=shop
DB_PASSWORD: s3cr3t-Value
{\"api_key\": \"abc123\", \"level\": \"info\"}
GET /cart Authorization: Bearer eyJhbGciOi.x.y
retrying with token eyJ and Bearer abc.def-ghi
aws AKIAIOSFODNN7EXAMPLE
url postgres://kq:pa55word@db:5432/kq
-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEA
-----END RSA PRIVATE KEY-----
panic: index out of range [3] with length 3";
        let masked = mask(log);
        for secret in [
            "hunter2",
            "s3cr3t-Value",
            "abc123",
            "eyJhbGciOi",
            "abc.def-ghi",
            "AKIAIOSFODNN7EXAMPLE",
            "pa55word",
            "MIIEowIBAAKCAQEA",
        ] {
            assert!(!masked.contains(secret), "{secret} in:\n{masked}");
        }
        assert!(masked.contains("password=*** user=shop"), "{masked}");
        assert!(masked.contains("\"level\": \"info\""), "{masked}");
        assert!(masked.contains("postgres://kq:***@db:5432/kq"), "{masked}");
        assert!(masked.starts_with("starting shop v1.5\n"));
        assert!(masked.ends_with("panic: index out of range [3] with length 3"));
        assert_eq!(masked.lines().count(), log.lines().count());
        assert_eq!(mask(&masked), masked, "masking again changes nothing");
    }

    fn crash() -> IncidentRow {
        IncidentRow {
            id: "i".into(),
            context: "prod".into(),
            namespace: Some("shop".into()),
            object_kind: "Pod".into(),
            object_name: "web-1".into(),
            container: Some("app".into()),
            exit_code: Some(1),
            restart_count: Some(3),
            last_marker: Some("2026-12-01T10:00:00Z#3".into()),
            ..IncidentRow::default()
        }
    }

    #[test]
    fn only_open_container_exits_of_pods_are_fetched() {
        let w = wanted(&crash()).unwrap();
        assert!(w.previous);
        assert_eq!((w.pod.as_str(), w.container.as_str()), ("web-1", "app"));
        let mut never_restarted = crash();
        never_restarted.restart_count = Some(0);
        assert!(!wanted(&never_restarted).unwrap().previous);
        let mut waiting = crash();
        waiting.exit_code = None;
        assert!(wanted(&waiting).is_none(), "an image pull has no log");
        let mut ended = crash();
        ended.resolved_at = Some(1);
        assert!(wanted(&ended).is_none());
        let mut node = crash();
        node.object_kind = "Node".into();
        assert!(wanted(&node).is_none());
    }
}
