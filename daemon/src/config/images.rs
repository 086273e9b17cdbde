//! The `[images]` section of the config file and its `KQ_*` variables: image sizing's cache,
//! workers, TTLs and per-registry rate limits.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, env_number, env_switch, env_text, secs};
use crate::images::ImageOptions;

/// `[images]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ImagesFile {
    enabled: Option<bool>,
    workers: Option<usize>,
    cache: Option<PathBuf>,
    docker_config: Option<PathBuf>,
    tag_ttl_hours: Option<f64>,
    failure_ttl_minutes: Option<f64>,
    /// Requests per second to each registry host.
    rate_limit: Option<f64>,
    /// Requests per second to named registries (`"docker.io" = 1.0`).
    host_rate_limits: Option<HashMap<String, f64>>,
    /// Registries served over plain HTTP.
    insecure_registries: Option<Vec<String>>,
    default_platform: Option<String>,
    node_wait_secs: Option<f64>,
}

fn rate(name: &'static str, v: f64) -> Result<f64, ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(ConfigError::Value {
            name,
            reason: format!("{v} is not a positive number of requests per second"),
        })
    }
}

impl ImagesFile {
    pub(super) fn apply(self, o: &mut ImageOptions) -> Result<(), ConfigError> {
        if let Some(v) = self.enabled {
            o.enabled = v;
        }
        if let Some(v) = self.workers {
            o.workers = v.max(1);
        }
        if let Some(v) = self.cache {
            o.cache_path = v;
        }
        if let Some(v) = self.docker_config {
            o.docker_config = Some(v);
        }
        if let Some(v) = self.tag_ttl_hours {
            o.lookup.tag_ttl = secs("images.tag_ttl_hours", v * 3600.0)?;
        }
        if let Some(v) = self.failure_ttl_minutes {
            o.lookup.failure_ttl = secs("images.failure_ttl_minutes", v * 60.0)?;
        }
        if let Some(v) = self.rate_limit {
            o.registry.rate_per_sec = rate("images.rate_limit", v)?;
        }
        for (host, v) in self.host_rate_limits.unwrap_or_default() {
            // Limits apply to the host requests go to, so `docker.io` means Docker Hub's.
            let host = crate::images::reference::api_host(&host).to_string();
            o.registry
                .host_rates
                .insert(host, rate("images.host_rate_limits", v)?);
        }
        if let Some(v) = self.insecure_registries {
            o.registry.insecure = v;
        }
        if let Some(v) = self.default_platform {
            o.default_platform = v;
        }
        if let Some(v) = self.node_wait_secs {
            o.node_wait = secs("images.node_wait_secs", v)?;
        }
        Ok(())
    }
}

/// `KQ_IMAGES` (on/off), `KQ_IMAGE_CACHE`, `KQ_IMAGE_WORKERS`, `KQ_IMAGE_TAG_TTL_SECS`,
/// `KQ_REGISTRY_RATE_LIMIT`, `KQ_INSECURE_REGISTRIES` (comma-separated) and
/// `KQ_IMAGE_NODE_WAIT_SECS`.
pub(super) fn apply_env(o: &mut ImageOptions) -> Result<(), ConfigError> {
    if let Some(on) = env_switch("KQ_IMAGES") {
        o.enabled = on;
    }
    if let Some(v) = env_text("KQ_IMAGE_CACHE") {
        o.cache_path = v.into();
    }
    if let Some(v) = env_number::<f64>("KQ_IMAGE_WORKERS")? {
        o.workers = (v as usize).max(1);
    }
    if let Some(v) = env_number("KQ_IMAGE_TAG_TTL_SECS")? {
        o.lookup.tag_ttl = secs("KQ_IMAGE_TAG_TTL_SECS", v)?;
    }
    if let Some(v) = env_number("KQ_REGISTRY_RATE_LIMIT")? {
        o.registry.rate_per_sec = rate("KQ_REGISTRY_RATE_LIMIT", v)?;
    }
    if let Some(v) = env_text("KQ_INSECURE_REGISTRIES") {
        o.registry.insecure = v
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
    if let Some(v) = env_number("KQ_IMAGE_NODE_WAIT_SECS")? {
        o.node_wait = secs("KQ_IMAGE_NODE_WAIT_SECS", v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_images_section_sets_limits_and_refuses_nonsense() {
        let f: ImagesFile = toml::from_str(
            r#"
            workers = 2
            tag_ttl_hours = 1
            rate_limit = 5
            insecure_registries = ["127.0.0.1:5000"]
            [host_rate_limits]
            "docker.io" = 0.5
            "ghcr.io" = 3
            "#,
        )
        .unwrap();
        let mut o = ImageOptions::default();
        f.apply(&mut o).unwrap();
        assert_eq!(o.workers, 2);
        assert_eq!(o.lookup.tag_ttl.as_secs(), 3600);
        assert_eq!(o.registry.rate_per_sec, 5.0);
        assert_eq!(o.registry.host_rates["registry-1.docker.io"], 0.5);
        assert_eq!(o.registry.host_rates["ghcr.io"], 3.0);
        assert_eq!(o.registry.insecure, ["127.0.0.1:5000"]);
        let bad: ImagesFile = toml::from_str("rate_limit = 0").unwrap();
        assert!(bad.apply(&mut ImageOptions::default()).is_err());
        assert!(toml::from_str::<ImagesFile>("ratelimit = 1").is_err());
    }
}
