//! kqd's configuration: defaults, then `~/.config/kq/config.toml`, then `KQ_*` variables,
//! then command-line flags; one struct passed explicitly to everything that needs it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::images::ImageOptions;
use crate::incidents::crash_log::CrashLogOptions;
use crate::incidents::hook::HookOptions;
use crate::rows::Kind;

mod crash_logs;
mod images;
use crate::store::StoreOptions;

/// Errors reading the configuration, naming the file or variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("environment variable {name} is invalid: {reason}")]
    Env { name: &'static str, reason: String },
    #[error("setting {name} is invalid: {reason}")]
    Value { name: &'static str, reason: String },
}

/// Everything kqd needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Kubeconfig files, in merge order. Empty means `$KUBECONFIG`, else `~/.kube/config`.
    pub kubeconfigs: Vec<PathBuf>,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub log_level: String,
    pub store: StoreOptions,
    /// Contexts that may run their initial list at the same time.
    pub initial_sync_concurrency: usize,
    /// Which contexts to watch: names matching any include glob (all when empty) and no
    /// exclude glob.
    pub contexts: ContextFilter,
    /// Keep a removed context's rows, marked `state = 'removed'`, instead of deleting them.
    pub keep_removed_contexts: bool,
    /// Which kinds (tables) to watch.
    pub kinds: Arc<KindFilter>,
    /// Where the PostgreSQL mirror writes (`postgres://…`); no mirror without it.
    pub postgres_url: Option<String>,
    /// The mirror's PostgreSQL schema (`kq`).
    pub postgres_schema: String,
    /// The mirror's instance id; by default one made once and kept in the data directory.
    pub mirror_instance: Option<String>,
    /// Mirror `objects` (every object's JSON, most of the bytes).
    pub mirror_objects: bool,
    /// A PostgreSQL role (made by the database's owner) that gets read access to the
    /// mirror's schema, its tables and views, and those it adds later: for dashboards.
    pub mirror_read_role: Option<String>,
    /// Image sizing: cache, workers, TTLs, registry rate limits.
    pub images: ImageOptions,
    /// The command run for each new incident (`on_incident`).
    pub hook: HookOptions,
    /// Fetching a crashed container's last log lines (`[crash_logs]`).
    pub crash_logs: CrashLogOptions,
}

/// A `postgres://` URL with its password replaced, for printing.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn postgres_url(name: &'static str, v: String) -> Result<String, ConfigError> {
    if v.starts_with("postgres://") || v.starts_with("postgresql://") {
        Ok(v)
    } else {
        Err(ConfigError::Value {
            name,
            reason: format!("{} is not a postgres:// URL", redact_url(&v)),
        })
    }
}

/// A name the mirror writes into PostgreSQL (a schema, an instance id): letters, digits,
/// `_`, `-` and `.`, so that it needs no quoting anywhere it is shown.
fn identifier(name: &'static str, v: String) -> Result<String, ConfigError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(v)
    } else {
        Err(ConfigError::Value {
            name,
            reason: format!("{v:?} must be 1 to 63 letters, digits, '_', '-' or '.'"),
        })
    }
}

/// A hook command: empty (no hook) or a program and its arguments.
fn hook_command(name: &'static str, c: Vec<String>) -> Result<Vec<String>, ConfigError> {
    if c.first().is_some_and(|p| p.trim().is_empty()) {
        return Err(ConfigError::Value {
            name,
            reason: "the first element must name the program to run".into(),
        });
    }
    Ok(c)
}

fn severity(name: &'static str, s: String) -> Result<String, ConfigError> {
    if kq_schema::incidents::SEVERITIES.contains(&s.as_str()) {
        Ok(s)
    } else {
        Err(ConfigError::Value {
            name,
            reason: format!("{s:?} is not one of critical, high, medium, low"),
        })
    }
}

/// The kinds to watch, by table name (`pods`, `deployments`…; `objects` stands for every
/// resource without a typed table). All by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KindFilter {
    /// Only these; empty means all.
    pub only: Vec<String>,
    pub exclude: Vec<String>,
}

impl KindFilter {
    pub fn new(only: Vec<String>, exclude: Vec<String>) -> Result<KindFilter, ConfigError> {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.table()).collect();
        for k in only.iter().chain(&exclude) {
            if !known.contains(&k.as_str()) {
                return Err(ConfigError::Value {
                    name: "kinds/exclude_kinds",
                    reason: format!(
                        "unknown kind {k:?}; kinds are table names: {}",
                        known.join(", ")
                    ),
                });
            }
        }
        Ok(KindFilter { only, exclude })
    }

    /// Whether the kind with this table is watched.
    pub fn allows(&self, table: &str) -> bool {
        (self.only.is_empty() || self.only.iter().any(|k| k == table))
            && !self.exclude.iter().any(|k| k == table)
    }
}

/// Where the config comes from: the file and the command-line flags that override it.
/// SIGHUP reads it again.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The config file given on the command line; else the default one, when it exists.
    pub file: Option<PathBuf>,
    pub kubeconfigs: Vec<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub log_level: Option<String>,
}

impl ConfigSource {
    /// Defaults, then the file, then `KQ_*` variables, then the flags.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut c = Config::load(self.file.as_deref())?;
        if !self.kubeconfigs.is_empty() {
            c.kubeconfigs = self.kubeconfigs.clone();
        }
        if let Some(d) = &self.data_dir {
            c.data_dir = d.clone();
        }
        if let Some(s) = &self.socket {
            c.socket = s.clone();
        }
        if let Some(l) = &self.log_level {
            c.log_level = l.clone();
        }
        Ok(c)
    }
}

/// Include and exclude globs over context names.
#[derive(Debug, Clone, Default)]
pub struct ContextFilter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    include_set: globset::GlobSet,
    exclude_set: globset::GlobSet,
}

impl ContextFilter {
    pub fn new(include: Vec<String>, exclude: Vec<String>) -> Result<ContextFilter, ConfigError> {
        let set = |globs: &[String]| -> Result<globset::GlobSet, ConfigError> {
            let mut b = globset::GlobSetBuilder::new();
            for g in globs {
                b.add(globset::Glob::new(g).map_err(|e| ConfigError::Value {
                    name: "include_contexts/exclude_contexts",
                    reason: format!("{g:?}: {e}"),
                })?);
            }
            b.build().map_err(|e| ConfigError::Value {
                name: "include_contexts/exclude_contexts",
                reason: e.to_string(),
            })
        };
        Ok(ContextFilter {
            include_set: set(&include)?,
            exclude_set: set(&exclude)?,
            include,
            exclude,
        })
    }

    /// Whether kqd watches the context `name`.
    pub fn allows(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include_set.is_match(name))
            && !self.exclude_set.is_match(name)
    }
}

/// The TOML file's shape; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    kubeconfig: Option<Vec<PathBuf>>,
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    log_level: Option<String>,
    batch_max: Option<usize>,
    batch_bytes: Option<String>,
    record_diffs: Option<bool>,
    batch_interval_ms: Option<u64>,
    memory_limit: Option<String>,
    checkpoint_threshold: Option<String>,
    initial_sync_concurrency: Option<usize>,
    image_pull_grace_secs: Option<f64>,
    pending_timeout_secs: Option<f64>,
    healthy_after_secs: Option<f64>,
    include_contexts: Option<Vec<String>>,
    exclude_contexts: Option<Vec<String>>,
    keep_removed_contexts: Option<bool>,
    kinds: Option<Vec<String>>,
    exclude_kinds: Option<Vec<String>>,
    changes_retention_days: Option<f64>,
    events_retention_days: Option<f64>,
    incidents_retention_days: Option<f64>,
    postgres_url: Option<String>,
    postgres_schema: Option<String>,
    mirror_instance: Option<String>,
    mirror_objects: Option<bool>,
    mirror_read_role: Option<String>,
    images: Option<images::ImagesFile>,
    crash_logs: Option<crash_logs::CrashLogsFile>,
    on_incident: Option<Vec<String>>,
    on_incident_min_severity: Option<String>,
    on_incident_per_minute: Option<u32>,
}

/// Seconds (fractions allowed) as a duration; negative or non-finite values are refused.
fn secs(name: &'static str, v: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(v).map_err(|e| ConfigError::Value {
        name,
        reason: e.to_string(),
    })
}

/// A size as DuckDB writes one ("256MB", "1.5 GiB", "4096"): KB, MB, GB and TB are powers
/// of 1000, KiB to TiB powers of 1024, no unit is bytes.
fn size(name: &'static str, v: &str) -> Result<u64, ConfigError> {
    let refuse = || ConfigError::Value {
        name,
        reason: format!("{v:?} is not a size such as \"256MB\" or \"1GiB\""),
    };
    let t = v.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| refuse())?;
    let unit = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" | "byte" | "bytes" => 1u64,
        "kb" => 1000,
        "mb" => 1000_u64.pow(2),
        "gb" => 1000_u64.pow(3),
        "tb" => 1000_u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(refuse()),
    };
    Ok((number * unit as f64) as u64)
}

/// A `KQ_*` variable's value, unless it is unset or empty.
fn env_text(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A `KQ_*` variable read as a number.
fn env_number<T: std::str::FromStr>(name: &'static str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    env_text(name)
        .map(|v| {
            v.trim().parse::<T>().map_err(|e| ConfigError::Env {
                name,
                reason: e.to_string(),
            })
        })
        .transpose()
}

/// A `KQ_*` on/off variable: `0`, `false`, `no` and `off` are off, anything else on.
fn env_switch(name: &str) -> Option<bool> {
    env_text(name).map(|v| {
        !matches!(
            v.to_ascii_lowercase().as_str(),
            "0" | "false" | "no" | "off"
        )
    })
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kubeconfigs: Vec::new(),
            data_dir: kq_schema::paths::default_data_dir(),
            socket: kq_schema::paths::default_socket(),
            log_level: "info".to_string(),
            store: StoreOptions::default(),
            // One initial list per core: listing is parse-bound, and each list in flight holds
            // a page of objects, so more at once only raises peak memory.
            initial_sync_concurrency: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(1, 4),
            contexts: ContextFilter::default(),
            keep_removed_contexts: false,
            kinds: Arc::default(),
            postgres_url: None,
            postgres_schema: "kq".to_string(),
            mirror_instance: None,
            mirror_objects: true,
            mirror_read_role: None,
            images: ImageOptions::default(),
            hook: HookOptions::default(),
            crash_logs: CrashLogOptions::default(),
        }
    }
}

impl Config {
    /// Defaults, then the config file (`path`, or the default one when it exists), then
    /// `KQ_*` variables.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let default_file = kq_schema::paths::default_config_file();
        let file = match path {
            Some(p) => Some(p.to_path_buf()),
            None => default_file.exists().then_some(default_file),
        };
        if let Some(p) = file {
            let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?;
            let f: FileConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: p.clone(),
                source,
            })?;
            c.apply_file(f)?;
        }
        c.apply_env()?;
        Ok(c)
    }

    fn apply_file(&mut self, f: FileConfig) -> Result<(), ConfigError> {
        if f.include_contexts.is_some() || f.exclude_contexts.is_some() {
            self.contexts = ContextFilter::new(
                f.include_contexts.unwrap_or_default(),
                f.exclude_contexts.unwrap_or_default(),
            )?;
        }
        if let Some(k) = f.keep_removed_contexts {
            self.keep_removed_contexts = k;
        }
        if f.kinds.is_some() || f.exclude_kinds.is_some() {
            self.kinds = Arc::new(KindFilter::new(
                f.kinds.unwrap_or_default(),
                f.exclude_kinds.unwrap_or_default(),
            )?);
        }
        if let Some(u) = f.postgres_url {
            self.postgres_url = Some(postgres_url("postgres_url", u)?);
        }
        if let Some(s) = f.postgres_schema {
            self.postgres_schema = identifier("postgres_schema", s)?;
        }
        if let Some(i) = f.mirror_instance {
            self.mirror_instance = Some(identifier("mirror_instance", i)?);
        }
        if let Some(o) = f.mirror_objects {
            self.mirror_objects = o;
        }
        if let Some(r) = f.mirror_read_role {
            self.mirror_read_role = Some(identifier("mirror_read_role", r)?);
        }
        if let Some(c) = f.on_incident {
            self.hook.command = hook_command("on_incident", c)?;
        }
        if let Some(s) = f.on_incident_min_severity {
            self.hook.min_severity = severity("on_incident_min_severity", s)?;
        }
        if let Some(n) = f.on_incident_per_minute {
            self.hook.per_minute = n;
        }
        if let Some(i) = f.images {
            i.apply(&mut self.images)?;
        }
        if let Some(c) = f.crash_logs {
            c.apply(&mut self.crash_logs)?;
        }
        if let Some(d) = f.changes_retention_days {
            self.store.changes_retention = secs("changes_retention_days", d * 86_400.0)?;
        }
        if let Some(d) = f.incidents_retention_days {
            self.store.incidents_retention = secs("incidents_retention_days", d * 86_400.0)?;
        }
        if let Some(d) = f.events_retention_days {
            self.store.events_retention = secs("events_retention_days", d * 86_400.0)?;
        }
        let inc = &mut self.store.incidents;
        if let Some(v) = f.image_pull_grace_secs {
            inc.image_pull_grace = secs("image_pull_grace_secs", v)?;
        }
        if let Some(v) = f.pending_timeout_secs {
            inc.pending_timeout = secs("pending_timeout_secs", v)?;
        }
        if let Some(v) = f.healthy_after_secs {
            inc.healthy_after = secs("healthy_after_secs", v)?;
        }
        if let Some(k) = f.kubeconfig {
            self.kubeconfigs = k;
        }
        if let Some(d) = f.data_dir {
            self.data_dir = d;
        }
        if let Some(s) = f.socket {
            self.socket = s;
        }
        if let Some(l) = f.log_level {
            self.log_level = l;
        }
        if let Some(d) = f.record_diffs {
            self.store.diffs = d;
        }
        if let Some(n) = f.batch_max {
            self.store.batch_max = n.max(1);
        }
        if let Some(b) = f.batch_bytes {
            self.store.batch_bytes = size("batch_bytes", &b)?.max(1) as usize;
        }
        if let Some(ms) = f.batch_interval_ms {
            self.store.batch_interval = Duration::from_millis(ms);
        }
        if let Some(m) = f.memory_limit {
            self.store.memory_limit = m;
        }
        if let Some(c) = f.checkpoint_threshold {
            self.store.checkpoint_threshold = size("checkpoint_threshold", &c)?;
        }
        if let Some(n) = f.initial_sync_concurrency {
            self.initial_sync_concurrency = n.max(1);
        }
        Ok(())
    }

    fn apply_env(&mut self) -> Result<(), ConfigError> {
        let var = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty());
        if let Some(v) = var("KQ_KUBECONFIG") {
            self.kubeconfigs = std::env::split_paths(&v).collect();
        }
        if let Some(v) = var("KQ_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = var("KQ_SOCKET") {
            self.socket = v.into();
        }
        if let Some(v) = var("KQ_LOG_LEVEL") {
            self.log_level = v.to_string_lossy().into_owned();
        }
        if let Some(v) = var("KQ_BATCH_INTERVAL_MS") {
            let ms = v.to_string_lossy().parse().map_err(|e| ConfigError::Env {
                name: "KQ_BATCH_INTERVAL_MS",
                reason: format!("{e}"),
            })?;
            self.store.batch_interval = Duration::from_millis(ms);
        }
        let float = |name: &'static str| -> Result<Option<Duration>, ConfigError> {
            let Some(v) = var(name) else { return Ok(None) };
            let v: f64 = v.to_string_lossy().parse().map_err(|e| ConfigError::Env {
                name,
                reason: format!("{e}"),
            })?;
            secs(name, v).map(Some)
        };
        let list = |name: &str| -> Option<Vec<String>> {
            var(name).map(|v| {
                v.to_string_lossy()
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
        };
        let (include, exclude) = (list("KQ_INCLUDE_CONTEXTS"), list("KQ_EXCLUDE_CONTEXTS"));
        if include.is_some() || exclude.is_some() {
            self.contexts = ContextFilter::new(
                include.unwrap_or_else(|| self.contexts.include.clone()),
                exclude.unwrap_or_else(|| self.contexts.exclude.clone()),
            )?;
        }
        if let Some(v) = var("KQ_POSTGRES_URL") {
            self.postgres_url = Some(postgres_url(
                "KQ_POSTGRES_URL",
                v.to_string_lossy().into_owned(),
            )?);
        }
        if let Some(v) = var("KQ_POSTGRES_SCHEMA") {
            self.postgres_schema =
                identifier("KQ_POSTGRES_SCHEMA", v.to_string_lossy().into_owned())?;
        }
        if let Some(v) = var("KQ_MIRROR_INSTANCE") {
            self.mirror_instance = Some(identifier(
                "KQ_MIRROR_INSTANCE",
                v.to_string_lossy().into_owned(),
            )?);
        }
        if let Some(v) = var("KQ_MIRROR_READ_ROLE") {
            self.mirror_read_role = Some(identifier(
                "KQ_MIRROR_READ_ROLE",
                v.to_string_lossy().into_owned(),
            )?);
        }
        if let Some(v) = var("KQ_ON_INCIDENT") {
            // A JSON array, as the config file's list: ["notify-send", "kq: {type}"].
            let c: Vec<String> =
                serde_json::from_str(&v.to_string_lossy()).map_err(|e| ConfigError::Env {
                    name: "KQ_ON_INCIDENT",
                    reason: format!("not a JSON array of strings: {e}"),
                })?;
            self.hook.command = hook_command("KQ_ON_INCIDENT", c)?;
        }
        if let Some(v) = var("KQ_ON_INCIDENT_MIN_SEVERITY") {
            self.hook.min_severity = severity(
                "KQ_ON_INCIDENT_MIN_SEVERITY",
                v.to_string_lossy().into_owned(),
            )?;
        }
        if let Some(n) = env_number("KQ_ON_INCIDENT_PER_MINUTE")? {
            self.hook.per_minute = n;
        }
        if let Some(n) = env_number::<usize>("KQ_BATCH_MAX")? {
            self.store.batch_max = n.max(1);
        }
        if let Some(v) = env_text("KQ_BATCH_BYTES") {
            // The same sizes as the file's `batch_bytes`, refused as a variable.
            let bytes = size("KQ_BATCH_BYTES", &v).map_err(|e| match e {
                ConfigError::Value { name, reason } => ConfigError::Env { name, reason },
                other => other,
            })?;
            self.store.batch_bytes = bytes.max(1) as usize;
        }
        if let Some(n) = env_number::<usize>("KQ_INITIAL_SYNC_CONCURRENCY")? {
            self.initial_sync_concurrency = n.max(1);
        }
        if let Some(on) = env_switch("KQ_RECORD_DIFFS") {
            self.store.diffs = on;
        }
        if let Some(v) = var("KQ_KEEP_REMOVED_CONTEXTS") {
            self.keep_removed_contexts = matches!(
                v.to_string_lossy().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes"
            );
        }
        let inc = &mut self.store.incidents;
        if let Some(d) = float("KQ_IMAGE_PULL_GRACE_SECS")? {
            inc.image_pull_grace = d;
        }
        if let Some(d) = float("KQ_PENDING_TIMEOUT_SECS")? {
            inc.pending_timeout = d;
        }
        if let Some(d) = float("KQ_INCIDENTS_RETENTION_DAYS")? {
            self.store.incidents_retention = d * 86_400;
        }
        if let Some(d) = float("KQ_HEALTHY_AFTER_SECS")? {
            inc.healthy_after = d;
        }
        images::apply_env(&mut self.images)?;
        crash_logs::apply_env(&mut self.crash_logs)
    }

    /// The DuckDB file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("kq.duckdb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_is_checked_and_printed_without_its_password() {
        assert_eq!(
            redact_url("postgres://kq:s3cret@db.example:5432/kq"),
            "postgres://kq:***@db.example:5432/kq"
        );
        assert!(postgres_url("postgres_url", "mysql://x".into()).is_err());
        let err = postgres_url("postgres_url", "https://u:pw@h".into()).unwrap_err();
        assert!(!err.to_string().contains("pw"), "{err}");
    }

    #[test]
    fn a_files_batch_bytes_is_a_size_and_anything_else_is_refused() {
        let apply = |line: &str| {
            let mut c = Config::default();
            c.apply_file(toml::from_str(line).unwrap())
                .map(|()| c.store.batch_bytes)
        };
        assert_eq!(Config::default().store.batch_bytes, 4 << 20);
        assert_eq!(apply("batch_bytes = \"8MiB\"").unwrap(), 8 << 20);
        let err = apply("batch_bytes = \"lots\"").unwrap_err().to_string();
        assert!(err.contains("batch_bytes"), "{err}");
    }

    #[test]
    fn context_and_kind_filters() {
        let f = ContextFilter::new(vec!["prod-*".into()], vec!["*-eu".into()]).unwrap();
        assert!(f.allows("prod-us"));
        assert!(!f.allows("prod-eu"));
        assert!(!f.allows("dev"));
        assert!(ContextFilter::default().allows("anything"));
        let k = KindFilter::new(vec![], vec!["secrets".into()]).unwrap();
        assert!(k.allows("pods") && !k.allows("secrets"));
        assert!(
            KindFilter::new(vec!["pod".into()], vec![]).is_err(),
            "kinds are table names"
        );
    }

    #[test]
    fn sizes_are_read_as_duckdb_writes_them_and_anything_else_is_refused() {
        let ok = |v| size("checkpoint_threshold", v).unwrap();
        assert_eq!(ok("256MB"), 256_000_000);
        assert_eq!(ok("1.5 GiB"), 3 << 29);
        assert_eq!(ok("64mib"), 64 << 20);
        assert_eq!(ok("4096"), 4096);
        for bad in ["", "MB", "256 megs", "-1MB", "1PB"] {
            let err = size("checkpoint_threshold", bad).unwrap_err().to_string();
            assert!(
                err.contains("checkpoint_threshold") && err.contains("256MB"),
                "{bad}: {err}"
            );
        }
    }
}
