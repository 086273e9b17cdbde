//! One image lookup through the cache: a tag's digest from the cache or a `HEAD`, then the
//! size of that digest for the node's platform from the cache or, only when the digest is
//! new, a manifest `GET` (the request Docker Hub counts as a pull).

use std::time::Duration;

use super::auth::Basic;
use super::cache::{Cache, Failure, TagEntry};
use super::manifest::{self, Manifest};
use super::reference::ImageRef;
use super::registry::{Registry, RegistryError};

/// How long answers are trusted.
#[derive(Debug, Clone)]
pub struct LookupOptions {
    /// A tag's digest is asked again after this long (tags move).
    pub tag_ttl: Duration,
    /// A not-found or unauthorized answer is remembered this long.
    pub failure_ttl: Duration,
    /// A transient failure (unreachable, 5xx, 429 after every retry) is retried after this.
    pub retry_after_failure: Duration,
}

impl Default for LookupOptions {
    fn default() -> Self {
        LookupOptions {
            tag_ttl: Duration::from_secs(24 * 3600),
            failure_ttl: Duration::from_secs(3600),
            retry_after_failure: Duration::from_secs(300),
        }
    }
}

/// What to look up: a canonical reference, for a node platform, with the pod's pull secret
/// for that registry when it has one.
#[derive(Debug, Clone)]
pub struct Job {
    pub reference: String,
    pub image: ImageRef,
    pub platform: String,
    pub pull_secret: Option<Basic>,
}

/// A sized image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizedImage {
    /// The digest the reference names (a multi-arch index's own digest).
    pub digest: String,
    pub size_bytes: i64,
    pub platform: String,
    /// Unix seconds.
    pub fetched_at: i64,
    pub expires_at: i64,
}

/// How a lookup ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sized(SizedImage),
    /// Not sized: why, and when to try again (unix seconds).
    Failed {
        error: String,
        fetched_at: i64,
        retry_at: i64,
    },
}

/// Resolves one job at `now` (unix seconds).
pub async fn resolve(
    registry: &Registry,
    cache: &Cache,
    opts: &LookupOptions,
    job: &Job,
    now: i64,
) -> Outcome {
    // A remembered failure is not repeated, unless this time there are credentials: the
    // failure may be an anonymous refusal that a pod's pull secret now answers.
    if let Some(f) = cache
        .failure(&job.reference, now)
        .filter(|_| job.pull_secret.is_none())
    {
        return Outcome::Failed {
            error: f.error,
            fetched_at: f.fetched_at,
            retry_at: f.expires_at,
        };
    }
    match sized(registry, cache, opts, job, now).await {
        Ok(s) => {
            cache.clear_failure(&job.reference);
            Outcome::Sized(s)
        }
        Err(e) => {
            let ttl = if e.is_lasting() {
                opts.failure_ttl
            } else {
                opts.retry_after_failure
            };
            let f = Failure {
                error: e.to_string(),
                fetched_at: now,
                expires_at: now + ttl.as_secs() as i64,
            };
            if e.is_lasting() {
                cache.put_failure(&job.reference, &f);
            }
            Outcome::Failed {
                error: f.error,
                fetched_at: now,
                retry_at: f.expires_at,
            }
        }
    }
}

async fn sized(
    registry: &Registry,
    cache: &Cache,
    opts: &LookupOptions,
    job: &Job,
    now: i64,
) -> Result<SizedImage, RegistryError> {
    let secret = job.pull_secret.as_ref();
    let ttl = opts.tag_ttl.as_secs() as i64;
    let (digest, fetched_at, expires_at) = match &job.image.digest {
        // A digest reference names its manifest already: nothing to resolve.
        Some(d) => (d.clone(), now, now + ttl),
        None => match cache.tag(&job.reference, now) {
            Some(t) => (t.digest, t.fetched_at, t.expires_at),
            None => {
                let digest = registry.head_digest(&job.image, secret).await?;
                let entry = TagEntry {
                    digest,
                    fetched_at: now,
                    expires_at: now + ttl,
                };
                cache.put_tag(&job.reference, &entry);
                (entry.digest, now, entry.expires_at)
            }
        },
    };
    let size_bytes = match cache.size(&digest, &job.platform) {
        Some(s) => s,
        None => size_of(registry, cache, job, &digest, now).await?,
    };
    Ok(SizedImage {
        digest,
        size_bytes,
        platform: job.platform.clone(),
        fetched_at,
        expires_at,
    })
}

/// The size of a digest not in the cache: its manifest, or for an index the manifest of the
/// job's platform. Each digest is fetched once; an index's entries are kept too, so another
/// platform of the same index costs one GET, not two.
async fn size_of(
    registry: &Registry,
    cache: &Cache,
    job: &Job,
    digest: &str,
    now: i64,
) -> Result<i64, RegistryError> {
    let mut entries = cache.entries(digest);
    if entries.is_empty() {
        match fetch(registry, job, digest).await? {
            Manifest::Image { size_bytes } => {
                cache.put_size(digest, "", size_bytes, now);
                return Ok(size_bytes);
            }
            Manifest::Index(e) => {
                cache.put_entries(digest, &e);
                entries = e;
            }
        }
    }
    let entry = manifest::select(&entries, &job.platform).ok_or_else(|| {
        RegistryError::NotFound(format!(
            "{} has no manifest for {} (it has {})",
            job.reference,
            job.platform,
            entries
                .iter()
                .map(|e| e.platform.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let size = match cache.size(&entry.digest, "") {
        Some(s) => s,
        None => match fetch(registry, job, &entry.digest).await? {
            Manifest::Image { size_bytes } => {
                cache.put_size(&entry.digest, "", size_bytes, now);
                size_bytes
            }
            Manifest::Index(_) => {
                return Err(RegistryError::Failed(format!(
                    "{}: an index inside an index",
                    job.reference
                )));
            }
        },
    };
    cache.put_size(digest, &job.platform, size, now);
    Ok(size)
}

/// One manifest (the GET Docker Hub counts as a pull), parsed.
async fn fetch(registry: &Registry, job: &Job, digest: &str) -> Result<Manifest, RegistryError> {
    let body = registry
        .manifest(&job.image, digest, job.pull_secret.as_ref())
        .await?;
    manifest::parse(&body).map_err(RegistryError::Failed)
}
