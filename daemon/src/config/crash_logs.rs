//! The `[crash_logs]` section of the config file and its `KQ_*` variables: whether kqd
//! fetches a crashed container's last log lines, how many, and where not.

use serde::Deserialize;

use super::{ConfigError, ContextFilter, env_number, env_switch};
use crate::incidents::crash_log::CrashLogOptions;

/// `[crash_logs]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CrashLogsFile {
    enabled: Option<bool>,
    lines: Option<u32>,
    bytes: Option<u32>,
    per_minute: Option<u32>,
    /// Globs of contexts whose crash logs are fetched (all when empty).
    include_contexts: Option<Vec<String>>,
    /// Globs of contexts whose crash logs are never fetched.
    exclude_contexts: Option<Vec<String>>,
}

fn positive(name: &'static str, v: u32) -> Result<u32, ConfigError> {
    if v == 0 {
        return Err(ConfigError::Value {
            name,
            reason: "must be at least 1 (set enabled = false to fetch nothing)".into(),
        });
    }
    Ok(v)
}

impl CrashLogsFile {
    pub(super) fn apply(self, o: &mut CrashLogOptions) -> Result<(), ConfigError> {
        if let Some(v) = self.enabled {
            o.enabled = v;
        }
        if let Some(v) = self.lines {
            o.lines = positive("crash_logs.lines", v)?;
        }
        if let Some(v) = self.bytes {
            o.bytes = positive("crash_logs.bytes", v)?;
        }
        if let Some(v) = self.per_minute {
            o.per_minute = positive("crash_logs.per_minute", v)?;
        }
        if self.include_contexts.is_some() || self.exclude_contexts.is_some() {
            o.contexts = ContextFilter::new(
                self.include_contexts.unwrap_or_default(),
                self.exclude_contexts.unwrap_or_default(),
            )?;
        }
        Ok(())
    }
}

/// `KQ_CRASH_LOGS` (on/off), `KQ_CRASH_LOG_LINES` and `KQ_CRASH_LOG_BYTES`.
pub(super) fn apply_env(o: &mut CrashLogOptions) -> Result<(), ConfigError> {
    if let Some(on) = env_switch("KQ_CRASH_LOGS") {
        o.enabled = on;
    }
    if let Some(n) = env_number("KQ_CRASH_LOG_LINES")? {
        o.lines = positive("KQ_CRASH_LOG_LINES", n)?;
    }
    if let Some(n) = env_number("KQ_CRASH_LOG_BYTES")? {
        o.bytes = positive("KQ_CRASH_LOG_BYTES", n)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_sets_limits_and_contexts_and_refuses_nonsense() {
        let f: CrashLogsFile = toml::from_str(
            r#"
            lines = 20
            bytes = 4096
            exclude_contexts = ["prod-*"]
            "#,
        )
        .unwrap();
        let mut o = CrashLogOptions::default();
        f.apply(&mut o).unwrap();
        assert!(o.enabled);
        assert_eq!((o.lines, o.bytes, o.per_minute), (20, 4096, 30));
        assert!(o.contexts.allows("dev") && !o.contexts.allows("prod-eu"));
        let zero: CrashLogsFile = toml::from_str("lines = 0").unwrap();
        assert!(zero.apply(&mut CrashLogOptions::default()).is_err());
        assert!(toml::from_str::<CrashLogsFile>("line = 1").is_err());
    }
}
