//! Registry credentials and challenges: `~/.docker/config.json` and pull secrets (the same
//! `auths` format), and the `WWW-Authenticate` header that starts the token flow. Secret
//! values live in memory only, and never print.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;

/// A username and password (or token) for one registry. Debug output hides both.
#[derive(Clone, PartialEq, Eq)]
pub struct Basic {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Basic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Basic(***)")
    }
}

/// Credentials by registry host (`docker.io`, `ghcr.io`, `127.0.0.1:5000`).
#[derive(Debug, Clone, Default)]
pub struct Credentials(HashMap<String, Basic>);

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl Credentials {
    /// Reads a Docker config file; a missing file means no credentials, a broken one is
    /// logged (without its contents) and ignored.
    pub fn load(path: &Path) -> Credentials {
        match std::fs::read(path) {
            Ok(bytes) => Credentials::parse(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "docker config unreadable; registries are asked anonymously");
                Credentials::default()
            }),
            Err(_) => Credentials::default(),
        }
    }

    /// Parses the `{"auths": {host: {"auth": base64(user:password)}}}` format that both
    /// `~/.docker/config.json` and `kubernetes.io/dockerconfigjson` secrets use.
    pub fn parse(bytes: &[u8]) -> Result<Credentials, String> {
        let cfg: DockerConfig = serde_json::from_slice(bytes).map_err(|e| {
            // Only where it broke: serde_json's messages can quote the offending value
            // (`invalid type: string "…"`), which here may be a password.
            let what = match e.classify() {
                serde_json::error::Category::Data => "unexpected value",
                serde_json::error::Category::Syntax => "invalid JSON",
                serde_json::error::Category::Eof => "truncated JSON",
                serde_json::error::Category::Io => "unreadable",
            };
            format!(
                "not a docker config: {what} at line {}, column {}",
                e.line(),
                e.column()
            )
        })?;
        let mut out = HashMap::new();
        for (key, entry) in cfg.auths {
            let basic = match (entry.auth, entry.username, entry.password) {
                (Some(a), _, _) if !a.is_empty() => {
                    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(a.trim()) else {
                        continue;
                    };
                    let Ok(text) = String::from_utf8(raw) else {
                        continue;
                    };
                    let Some((u, p)) = text.split_once(':') else {
                        continue;
                    };
                    Basic {
                        username: u.to_string(),
                        password: p.to_string(),
                    }
                }
                (_, Some(username), Some(password)) => Basic { username, password },
                _ => continue,
            };
            out.insert(host_of(&key), basic);
        }
        Ok(Credentials(out))
    }

    /// The credentials for a registry, if any.
    pub fn get(&self, registry: &str) -> Option<&Basic> {
        self.0.get(registry)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The registry an `auths` key names: keys may be URLs, and Docker Hub has several names.
fn host_of(key: &str) -> String {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        h => h.to_string(),
    }
}

/// How a registry asks to be authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Fetch a token from `realm` (Docker Hub, GHCR, Harbor…).
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    /// Send the credentials with every request.
    Basic,
}

impl Challenge {
    /// Parses a `WWW-Authenticate` header value.
    pub fn parse(header: &str) -> Option<Challenge> {
        let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    }
}

/// `key="value", key2="a,b"` into a map; commas inside quotes belong to the value.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, after) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_string());
        rest = after.trim_start_matches([',', ' ']);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_auths_by_host() {
        let cfg = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpzM2NyZXQ="},
            "ghcr.io": {"username": "bot", "password": "tok"},
            "broken.example": {"auth": "!!!"}}}"#;
        let c = Credentials::parse(cfg).unwrap();
        assert_eq!(c.get("docker.io").unwrap().username, "user");
        assert_eq!(c.get("docker.io").unwrap().password, "s3cret");
        assert_eq!(c.get("ghcr.io").unwrap().password, "tok");
        assert!(c.get("broken.example").is_none());
        assert!(
            !format!("{:?}", c).contains("s3cret"),
            "secrets never print"
        );
        // A malformed file's error says where, never what.
        for broken in [
            &br#"{"auths": {"ghcr.io": {"password": 7, "username": "s3cret"}}}"#[..],
            br#"{"auths": "s3cret"}"#,
            br#"{"auths": {"ghcr.io": {"auth": "s3cret"#,
        ] {
            let e = Credentials::parse(broken).unwrap_err();
            assert!(e.contains("line 1") && !e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn bearer_and_basic_challenges() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#;
        assert_eq!(
            Challenge::parse(h).unwrap(),
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull,push".into()),
            }
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
    }
}
