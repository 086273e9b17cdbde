//! The incident hook (`on_incident`): a command run for each new incident at or above a
//! severity, with the incident as JSON on stdin and as `KQ_INCIDENT_*` variables, and
//! `{field}` in its arguments replaced by the incident's fields. It listens to the rows the
//! writer publishes after commit, so it never blocks the writer; each run is its own task
//! with a deadline, so a hook that hangs delays nothing; at most `per_minute` run in any
//! minute, and the rest are counted and logged once the minute is over.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio::sync::broadcast::error::RecvError;

use crate::store::IncidentRow;

/// How long a hook may run before it is killed.
const DEADLINE: Duration = Duration::from_secs(30);

/// What `on_incident` and friends configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOptions {
    /// The command and its arguments; none: no hook.
    pub command: Vec<String>,
    /// critical, high, medium or low: incidents of that severity and above.
    pub min_severity: String,
    /// Runs allowed in any 60 s.
    pub per_minute: u32,
}

impl Default for HookOptions {
    fn default() -> Self {
        HookOptions {
            command: Vec::new(),
            min_severity: "high".to_string(),
            per_minute: 10,
        }
    }
}

/// Whether a published row is a new incident (not a repeat, an update or its end).
fn is_new(row: &IncidentRow) -> bool {
    row.occurrences == 1 && row.resolved_at.is_none() && row.first_seen == row.last_seen
}

/// The incident's fields by name, as the JSON, the variables and `{field}` use them.
fn fields(row: &IncidentRow) -> Vec<(&'static str, Option<String>)> {
    let ts = |t: i64| {
        jiff::Timestamp::from_microsecond(t)
            .map(|t| t.to_string())
            .ok()
    };
    vec![
        ("id", Some(row.id.clone())),
        ("context", Some(row.context.clone())),
        ("cluster_id", row.cluster_id.clone()),
        ("namespace", row.namespace.clone()),
        ("object_kind", Some(row.object_kind.clone())),
        ("object_name", Some(row.object_name.clone())),
        ("object_uid", Some(row.object_uid.clone())),
        ("controller", row.controller.clone()),
        ("container", row.container.clone()),
        ("node", row.node.clone()),
        ("type", Some(row.typ.clone())),
        ("severity", Some(row.severity.clone())),
        ("reason", row.reason.clone()),
        ("exit_code", row.exit_code.map(|c| c.to_string())),
        ("signal", row.signal.clone()),
        ("message", row.message.clone()),
        ("restart_count", row.restart_count.map(|c| c.to_string())),
        ("first_seen", ts(row.first_seen)),
    ]
}

/// The incident as one JSON object (absent fields as null, numbers as numbers).
pub fn incident_json(row: &IncidentRow) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, v) in fields(row) {
        let value = match (k, v) {
            (_, None) => serde_json::Value::Null,
            ("exit_code" | "restart_count", Some(n)) => n
                .parse::<i64>()
                .map_or(serde_json::Value::String(n), serde_json::Value::from),
            (_, Some(s)) => serde_json::Value::String(s),
        };
        m.insert(k.to_string(), value);
    }
    serde_json::Value::Object(m)
}

/// `{field}` in `arg` replaced by the incident's field (empty when it has none).
fn expand(arg: &str, fields: &[(&'static str, Option<String>)]) -> String {
    let mut out = arg.to_string();
    for (k, v) in fields {
        out = out.replace(&format!("{{{k}}}"), v.as_deref().unwrap_or(""));
    }
    out
}

/// Runs the hook for incidents from `rx` until the channel closes.
pub async fn run(opts: HookOptions, mut rx: tokio::sync::broadcast::Receiver<Arc<IncidentRow>>) {
    if opts.command.is_empty() {
        return;
    }
    let rank = kq_schema::incidents::severity_rank(&opts.min_severity);
    let mut window: VecDeque<Instant> = VecDeque::new();
    let mut suppressed = 0u64;
    let mut suppressed_since: Option<Instant> = None;
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.try_join_next().is_some() {}
        let row = match rx.recv().await {
            Ok(row) => row,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(skipped = n, "the incident hook fell behind; skipped some");
                continue;
            }
            // The writer is gone: let the hooks still running finish (each has a deadline).
            Err(RecvError::Closed) => {
                while running.join_next().await.is_some() {}
                return;
            }
        };
        if !is_new(&row) || kq_schema::incidents::severity_rank(&row.severity) > rank {
            continue;
        }
        let now = Instant::now();
        while window
            .front()
            .is_some_and(|t| now - *t >= Duration::from_secs(60))
        {
            window.pop_front();
        }
        if let Some(since) = suppressed_since
            && now - since >= Duration::from_secs(60)
        {
            tracing::warn!(
                suppressed,
                per_minute = opts.per_minute,
                "the incident hook was not run for some incidents: over its rate limit"
            );
            suppressed = 0;
            suppressed_since = None;
        }
        if window.len() >= opts.per_minute as usize {
            suppressed += 1;
            suppressed_since.get_or_insert(now);
            continue;
        }
        window.push_back(now);
        running.spawn(run_one(opts.command.clone(), row));
    }
}

/// Runs the hook once for one incident, killing it at the deadline; logs how it ended.
async fn run_one(command: Vec<String>, row: Arc<IncidentRow>) {
    let fields = fields(&row);
    let argv: Vec<String> = command.iter().map(|a| expand(a, &fields)).collect();
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in &fields {
        cmd.env(
            format!("KQ_INCIDENT_{}", k.to_uppercase()),
            v.as_deref().unwrap_or(""),
        );
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(command = %argv[0], error = %e, "the incident hook did not start");
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let mut json = incident_json(&row).to_string();
        json.push('\n');
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(json.as_bytes()).await;
    }
    match tokio::time::timeout(DEADLINE, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => {
            tracing::debug!(incident = %row.id, "the incident hook ran");
        }
        Ok(Ok(out)) => tracing::warn!(
            incident = %row.id,
            command = %argv[0],
            status = %out.status,
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "the incident hook failed"
        ),
        Ok(Err(e)) => tracing::warn!(incident = %row.id, error = %e, "the incident hook failed"),
        // Dropping the child (kill_on_drop) kills it.
        Err(_) => tracing::warn!(
            incident = %row.id,
            command = %argv[0],
            deadline_s = DEADLINE.as_secs(),
            "the incident hook ran past its deadline and was killed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> IncidentRow {
        IncidentRow {
            id: "i-1".into(),
            context: "prod".into(),
            cluster_id: None,
            namespace: Some("shop".into()),
            object_kind: "Pod".into(),
            object_name: "web-1".into(),
            object_uid: "u".into(),
            controller: None,
            container: Some("app".into()),
            node: None,
            typ: "crash".into(),
            severity: "high".into(),
            reason: Some("Error".into()),
            exit_code: Some(1),
            signal: None,
            message: None,
            restart_count: Some(1),
            cpu_request_m: None,
            cpu_limit_m: None,
            memory_request_bytes: None,
            memory_limit_bytes: None,
            first_seen: 1_700_000_000_000_000,
            last_seen: 1_700_000_000_000_000,
            occurrences: 1,
            resolved_at: None,
            problem: "p".into(),
            last_marker: None,
            reported_count: 0,
            last_log: None,
        }
    }

    #[test]
    fn placeholders_are_the_incidents_fields() {
        let f = fields(&row());
        assert_eq!(
            expand(
                "kq: {severity} {type} {context}/{namespace}/{object_name}",
                &f
            ),
            "kq: high crash prod/shop/web-1"
        );
        assert_eq!(expand("{signal}|{nope}", &f), "|{nope}");
        let json = incident_json(&row());
        assert_eq!(json["exit_code"], 1);
        assert_eq!(json["signal"], serde_json::Value::Null);
        assert_eq!(json["first_seen"], "2023-11-14T22:13:20Z");
    }

    #[tokio::test]
    async fn at_most_per_minute_runs_and_the_rest_are_only_counted() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("ran");
        let opts = HookOptions {
            command: vec![
                "sh".into(),
                "-c".into(),
                format!("echo $KQ_INCIDENT_ID >> {}", log.display()),
            ],
            min_severity: "high".into(),
            per_minute: 2,
        };
        let (tx, rx) = tokio::sync::broadcast::channel(16);
        let hook = tokio::spawn(run(opts, rx));
        for i in 0..5 {
            let mut r = row();
            r.id = format!("i-{i}");
            tx.send(Arc::new(r)).unwrap();
        }
        // Below the severity: never run.
        let mut low = row();
        low.severity = "low".into();
        tx.send(Arc::new(low)).unwrap();
        drop(tx);
        // The hook task ends once the runs it started have.
        hook.await.unwrap();
        let ran = std::fs::read_to_string(&log).unwrap_or_default();
        let mut ids: Vec<&str> = ran.lines().collect();
        ids.sort();
        assert_eq!(ids, ["i-0", "i-1"]);
    }

    #[test]
    fn only_a_first_occurrence_is_new() {
        assert!(is_new(&row()));
        let mut again = row();
        again.occurrences = 2;
        again.last_seen += 1;
        assert!(!is_new(&again));
        let mut ended = row();
        ended.resolved_at = Some(ended.last_seen + 1);
        assert!(!is_new(&ended));
    }
}
