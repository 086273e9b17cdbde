//! Image sizes: every image a pod uses, sized from node status when a node reports it and
//! from its registry otherwise. Pods and nodes arrive as [`Sighting`]s (forwarded by the
//! store writer); one coordinator de-duplicates them across all contexts and feeds one
//! queue served by a fixed pool of workers; results go back to the writer as
//! [`ImageFound`] ops. See `lookup` for the cache and `registry` for the HTTP side.

mod auth;
mod cache;
mod coordinator;
mod lookup;
mod manifest;
pub mod reference;
mod registry;
mod secrets;
mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use crate::clients::Clients;
pub use auth::{Basic, Credentials};
pub use cache::Cache;
pub use coordinator::spawn;
pub use lookup::{Job, LookupOptions, Outcome, SizedImage, resolve};
pub use reference::ImageRef;
pub use registry::{Registry, RegistryError, RegistryOptions, install_tls_provider};
pub use status::RegistryStatus;

/// What a pod or a node tells about images.
#[derive(Debug, Clone)]
pub enum Sighting {
    /// A pod's images (canonical references), with what a lookup needs: the node it runs on
    /// (for the platform) and its pull secrets.
    Pod {
        context: Arc<str>,
        namespace: String,
        node: Option<String>,
        pull_secrets: Vec<String>,
        refs: Vec<String>,
    },
    /// A node's platform (`os/arch`, when its status says) and the images it holds
    /// (`status.images`).
    Node {
        context: Arc<str>,
        node: String,
        platform: Option<String>,
        images: Vec<NodeImage>,
    },
    /// Every node of a context has been listed: images no node reports go to registries.
    NodesListed { context: Arc<str> },
    /// No container uses these references any more: they are not looked up again.
    Unused { refs: Vec<String> },
}

/// One entry of `node.status.images`: the names it goes by, and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeImage {
    /// Canonical references, tag and digest forms.
    pub names: Vec<String>,
    pub size_bytes: i64,
}

/// A row of `images`, and the references (`image_refs`) that name it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFound {
    pub image: String,
    pub name: String,
    pub registry: String,
    pub repository: String,
    pub digest: Option<String>,
    pub size_bytes: Option<i64>,
    pub source: Option<&'static str>,
    pub platform: Option<String>,
    /// Unix seconds.
    pub fetched_at: i64,
    pub expires_at: Option<i64>,
    pub error: Option<String>,
    pub refs: Vec<String>,
}

/// Settings of image sizing.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Size images at all.
    pub enabled: bool,
    /// Lookups running at once, across every registry.
    pub workers: usize,
    /// The SQLite cache; `$XDG_CACHE_HOME/kq/images.sqlite` by default.
    pub cache_path: PathBuf,
    /// Where `~/.docker/config.json` is.
    pub docker_config: Option<PathBuf>,
    /// The platform assumed for pods whose node is unknown.
    pub default_platform: String,
    /// How long a context's images wait for its nodes to be listed before registries are
    /// asked (nodes report most images, at no cost).
    pub node_wait: Duration,
    pub lookup: LookupOptions,
    pub registry: RegistryOptions,
}

impl Default for ImageOptions {
    fn default() -> Self {
        let cache_dir = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"));
        ImageOptions {
            enabled: true,
            workers: 4,
            cache_path: cache_dir.join("kq/images.sqlite"),
            docker_config: std::env::var_os("DOCKER_CONFIG")
                .map(|d| PathBuf::from(d).join("config.json"))
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
                }),
            default_platform: "linux/amd64".to_string(),
            node_wait: Duration::from_secs(30),
            lookup: LookupOptions::default(),
            registry: RegistryOptions::default(),
        }
    }
}
