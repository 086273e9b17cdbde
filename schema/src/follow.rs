//! The follow requests: Flight `DoGet` tickets that stream as kqd writes. Any Flight
//! client can send them.
//!
//! - Incidents as kqd records them (`kq incidents --follow`, `.follow`): a protobuf `Any`
//!   with [`FOLLOW_INCIDENTS`] as its type URL and, as its value, UTF-8 lines `context=…`,
//!   `namespace=…`, `min_severity=…` (each optional).
//! - Commits (`.watch`, `kq watch`): [`FOLLOW_COMMITS`], with lines `table=…` naming the
//!   tables of interest (none: all). Each commit that wrote one of them streams one row,
//!   `tables`, the comma-separated names of the tables it wrote.

/// The message of the `UNAVAILABLE` status that ends a query or a follow stream because
/// kqd is stopping (a shutdown, not a failure of the query).
pub const SHUTTING_DOWN: &str = "kqd is shutting down";

/// The `Any` type URL of a follow request.
pub const FOLLOW_INCIDENTS: &str = "type.googleapis.com/kq.FollowIncidents";

/// The `Any` type URL of a commit follow request.
pub const FOLLOW_COMMITS: &str = "type.googleapis.com/kq.FollowCommits";

/// Which commits to stream: those that wrote one of `tables` (empty: every commit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowCommits {
    pub tables: Vec<String>,
}

impl FollowCommits {
    pub fn encode(&self) -> Vec<u8> {
        self.tables
            .iter()
            .map(|t| format!("table={t}\n"))
            .collect::<String>()
            .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<FollowCommits, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "the follow request is not UTF-8")?;
        let mut f = FollowCommits::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            match line.split_once('=') {
                Some(("table", t)) => f.tables.push(t.to_string()),
                _ => return Err(format!("bad commit follow request line {line:?}")),
            }
        }
        Ok(f)
    }

    /// Whether a commit that wrote `written` interests this follower.
    pub fn matches(&self, written: &[&str]) -> bool {
        self.tables.is_empty() || written.iter().any(|w| self.tables.iter().any(|t| t == w))
    }
}

/// Which incidents to stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowIncidents {
    pub context: Option<String>,
    pub namespace: Option<String>,
    /// critical, high, medium or low: that severity and the ones above it.
    pub min_severity: Option<String>,
}

impl FollowIncidents {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        for (k, v) in [
            ("context", &self.context),
            ("namespace", &self.namespace),
            ("min_severity", &self.min_severity),
        ] {
            if let Some(v) = v {
                out.push_str(&format!("{k}={}\n", v.replace('\n', " ")));
            }
        }
        out.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<FollowIncidents, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "the follow request is not UTF-8")?;
        let mut f = FollowIncidents::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("bad follow request line {line:?}"))?;
            let v = Some(v.to_string());
            match k {
                "context" => f.context = v,
                "namespace" => f.namespace = v,
                "min_severity" => f.min_severity = v,
                other => return Err(format!("unknown follow request field {other:?}")),
            }
        }
        if let Some(s) = &f.min_severity
            && !crate::incidents::SEVERITIES.contains(&s.as_str())
        {
            return Err(format!(
                "unknown severity {s:?}: use critical, high, medium or low"
            ));
        }
        Ok(f)
    }

    /// Whether an incident with these fields passes the filter.
    pub fn matches(&self, context: &str, namespace: Option<&str>, severity: &str) -> bool {
        self.context.as_deref().is_none_or(|c| c == context)
            && self
                .namespace
                .as_deref()
                .is_none_or(|n| Some(n) == namespace)
            && self.min_severity.as_deref().is_none_or(|m| {
                crate::incidents::severity_rank(severity) <= crate::incidents::severity_rank(m)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_filters() {
        let f = FollowIncidents {
            context: Some("prod".into()),
            namespace: None,
            min_severity: Some("high".into()),
        };
        assert_eq!(FollowIncidents::decode(&f.encode()).unwrap(), f);
        assert!(f.matches("prod", Some("web"), "critical"));
        assert!(f.matches("prod", None, "high"));
        assert!(!f.matches("prod", None, "medium"));
        assert!(!f.matches("dev", None, "critical"));
        assert!(FollowIncidents::decode(b"min_severity=urgent").is_err());
    }

    #[test]
    fn a_commit_request_round_trips_and_matches_its_tables() {
        let f = FollowCommits {
            tables: vec!["pods".into(), "containers".into()],
        };
        assert_eq!(FollowCommits::decode(&f.encode()).unwrap(), f);
        assert!(f.matches(&["changes", "pods"]));
        assert!(!f.matches(&["nodes"]));
        assert!(FollowCommits::default().matches(&["nodes"]));
        assert!(FollowCommits::decode(b"context=x").is_err());
    }
}
