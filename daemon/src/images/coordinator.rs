//! The coordinator: one task that knows every image reference in use, across all contexts.
//! It answers from node reports when it can, holds a context's images until its nodes are
//! listed, queues each remaining reference once for the worker pool, and looks a tag up
//! again when its answer expires.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    Cache, Clients, Credentials, ImageFound, ImageOptions, ImageRef, Job, NodeImage, Outcome,
    Registry, Sighting, resolve,
};
use crate::store::Op;

/// What the coordinator knows of one reference.
struct Known {
    image: ImageRef,
    /// The context and node of the first pod seen using it (for the platform).
    context: Arc<str>,
    node: Option<String>,
    /// Every set of pull secrets pods using it name, wherever they are.
    secrets: Vec<SecretSource>,
    state: State,
    since: Instant,
    /// The last registry answer that sized it, kept through later transient failures.
    last: Option<ImageFound>,
    /// Whether the last lookup failed.
    failed: bool,
    /// A pod brought new pull secrets while a lookup was under way.
    new_secrets: bool,
}

/// Pull secrets named by the pods of one namespace.
#[derive(Debug, Clone, PartialEq)]
struct SecretSource {
    context: Arc<str>,
    namespace: String,
    names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Waiting for its context's nodes to be listed.
    Waiting,
    /// In the queue or with a worker.
    Queued,
    /// Answered by a registry; asked again at this unix second.
    Until(i64),
    /// A node reports it.
    Node,
}

/// An image as node status reports it.
#[derive(Debug, Clone, PartialEq)]
struct NodeSized {
    image: String,
    name: String,
    digest: Option<String>,
    size_bytes: i64,
    platform: String,
}

/// A queued lookup and where its worker may find credentials.
struct Work {
    job: Job,
    secrets: Vec<SecretSource>,
}

/// Starts the coordinator and its workers. Returns the channel that takes sightings and
/// the coordinator's task, which ends when `cancel` fires or every sender is gone.
pub fn spawn(
    opts: ImageOptions,
    ops: mpsc::Sender<Op>,
    secrets: Option<Arc<Clients>>,
    cancel: CancellationToken,
) -> Result<(mpsc::UnboundedSender<Sighting>, JoinHandle<()>), String> {
    let creds = opts
        .docker_config
        .as_deref()
        .map(Credentials::load)
        .unwrap_or_default();
    let registry = Arc::new(Registry::new(opts.registry.clone(), creds)?);
    let cache = Arc::new(Cache::open(&opts.cache_path));
    tracing::info!(cache = %cache.path.display(), workers = opts.workers, "image sizing on");
    let (sightings_tx, sightings) = mpsc::unbounded_channel();
    let (jobs_tx, jobs) = mpsc::unbounded_channel::<Work>();
    let (results_tx, results) = mpsc::unbounded_channel();
    let jobs = Arc::new(Mutex::new(jobs));
    for _ in 0..opts.workers.max(1) {
        let (jobs, results, registry, cache, secrets, cancel, lookup) = (
            jobs.clone(),
            results_tx.clone(),
            registry.clone(),
            cache.clone(),
            secrets.clone(),
            cancel.clone(),
            opts.lookup.clone(),
        );
        tokio::spawn(async move {
            loop {
                let work = tokio::select! {
                    w = async { jobs.lock().await.recv().await } => w,
                    _ = cancel.cancelled() => return,
                };
                let Some(mut work) = work else { return };
                if let Some(s) = &secrets {
                    for src in &work.secrets {
                        work.job.pull_secret = s
                            .credentials(
                                &src.context,
                                &src.namespace,
                                &src.names,
                                &work.job.image.registry,
                            )
                            .await;
                        if work.job.pull_secret.is_some() {
                            break;
                        }
                    }
                }
                // A lookup cut short by shutdown is simply dropped: the cache only ever holds
                // whole answers, and nothing reaches the inventory half-done.
                let outcome = tokio::select! {
                    o = resolve(&registry, &cache, &lookup, &work.job, now()) => o,
                    _ = cancel.cancelled() => return,
                };
                if results.send((work.job.reference, outcome)).is_err() {
                    return;
                }
            }
        });
    }
    let mut c = Coordinator {
        opts,
        ops,
        registry,
        registries_written: None,
        jobs: jobs_tx,
        refs: HashMap::new(),
        nodes: HashMap::new(),
        platforms: HashMap::new(),
        listed: HashSet::new(),
        names: HashMap::new(),
    };
    let task = tokio::spawn(async move { c.run(sightings, results, cancel).await });
    Ok((sightings_tx, task))
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

struct Coordinator {
    opts: ImageOptions,
    ops: mpsc::Sender<Op>,
    registry: Arc<Registry>,
    /// The generation of registry statuses last written to `registries`.
    registries_written: Option<u64>,
    jobs: mpsc::UnboundedSender<Work>,
    refs: HashMap<String, Known>,
    /// Node-reported images by every name they go by.
    nodes: HashMap<String, NodeSized>,
    /// Node platforms, `os/arch`, by context and node name.
    platforms: HashMap<(Arc<str>, String), String>,
    /// Contexts whose nodes have been listed.
    listed: HashSet<Arc<str>>,
    /// The best name of each image: its first tag reference, else a digest reference.
    names: HashMap<String, String>,
}

impl Coordinator {
    async fn run(
        &mut self,
        mut sightings: mpsc::UnboundedReceiver<Sighting>,
        mut results: mpsc::UnboundedReceiver<(String, Outcome)>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let found = tokio::select! {
                _ = cancel.cancelled() => return,
                s = sightings.recv() => match s {
                    Some(s) => self.sighting(s),
                    None => return,
                },
                Some((reference, outcome)) = results.recv() => self.result(reference, outcome),
                _ = tick.tick() => {
                    self.tick();
                    if self.write_registries().await.is_err() {
                        return;
                    }
                    Vec::new()
                }
            };
            for f in found {
                if self.ops.send(Op::Image(Box::new(f))).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Rewrites `registries` when a registry's status changed since the last time.
    async fn write_registries(&mut self) -> Result<(), mpsc::error::SendError<Op>> {
        if self.registries_written == Some(self.registry.status_generation()) {
            return Ok(());
        }
        let (generation, all) = self.registry.statuses();
        self.ops.send(Op::Registries(all)).await?;
        self.registries_written = Some(generation);
        Ok(())
    }

    fn sighting(&mut self, s: Sighting) -> Vec<ImageFound> {
        let mut found = Vec::new();
        match s {
            Sighting::Pod {
                context,
                namespace,
                node,
                pull_secrets,
                refs,
            } => {
                let source = (!pull_secrets.is_empty()).then(|| SecretSource {
                    context: context.clone(),
                    namespace,
                    names: pull_secrets,
                });
                for r in refs {
                    if let Some(k) = self.refs.get_mut(&r) {
                        // Another pod names pull secrets for a known image: a lookup that
                        // failed, perhaps for want of them, is tried again with them.
                        if let Some(src) = &source
                            && !k.secrets.contains(src)
                        {
                            k.secrets.push(src.clone());
                            match k.state {
                                State::Until(_) if k.failed => self.queue(&r),
                                State::Queued => k.new_secrets = true,
                                _ => {}
                            }
                        }
                        continue;
                    }
                    let Ok(image) = ImageRef::parse(&r) else {
                        continue;
                    };
                    self.refs.insert(
                        r.clone(),
                        Known {
                            image,
                            context: context.clone(),
                            node: node.clone(),
                            secrets: source.iter().cloned().collect(),
                            state: State::Waiting,
                            since: Instant::now(),
                            last: None,
                            failed: false,
                            new_secrets: false,
                        },
                    );
                    if let Some(f) = self.node_reported(&r) {
                        found.push(f);
                    } else if self.listed.contains(&context) {
                        self.queue(&r);
                    }
                }
            }
            Sighting::Node {
                context,
                node,
                platform,
                images,
            } => {
                let platform = platform.unwrap_or_else(|| self.opts.default_platform.clone());
                self.platforms.insert((context, node), platform.clone());
                for im in images {
                    for name in self.learn(&im, &platform) {
                        if self.refs.contains_key(&name)
                            && let Some(f) = self.node_reported(&name)
                        {
                            found.push(f);
                        }
                    }
                }
            }
            Sighting::NodesListed { context } => {
                self.listed.insert(context.clone());
                let waiting: Vec<String> = self
                    .refs
                    .iter()
                    .filter(|(_, k)| k.state == State::Waiting && k.context == context)
                    .map(|(r, _)| r.clone())
                    .collect();
                for r in waiting {
                    self.queue(&r);
                }
            }
            Sighting::Unused { refs } => {
                // A lookup in flight for one of them finishes, and its answer is dropped.
                for r in refs {
                    self.refs.remove(&r);
                }
            }
        }
        found
    }

    /// Records a node image under each of its names; returns the names that are new or
    /// changed, so that unchanged node updates cost nothing further.
    fn learn(&mut self, im: &NodeImage, platform: &str) -> Vec<String> {
        let parsed: Vec<(String, ImageRef)> = im
            .names
            .iter()
            .filter_map(|n| ImageRef::parse(n).ok().map(|r| (n.clone(), r)))
            .collect();
        let Some((first, first_ref)) = parsed.first() else {
            return Vec::new();
        };
        let digest = parsed.iter().find_map(|(_, r)| r.digest.clone());
        let image = match &digest {
            Some(d) => first_ref.identity(d),
            None => first.clone(),
        };
        let name = parsed
            .iter()
            .find(|(_, r)| r.is_tag())
            .map_or_else(|| image.clone(), |(n, _)| n.clone());
        let entry = NodeSized {
            image,
            name,
            digest,
            size_bytes: im.size_bytes,
            platform: platform.to_string(),
        };
        let mut changed = Vec::new();
        for (n, _) in parsed {
            if self.nodes.get(&n) != Some(&entry) {
                self.nodes.insert(n.clone(), entry.clone());
                changed.push(n);
            }
        }
        changed
    }

    /// The `images` row of a reference a node reports, if one does.
    fn node_reported(&mut self, reference: &str) -> Option<ImageFound> {
        let n = self.nodes.get(reference)?.clone();
        let known = self.refs.get_mut(reference)?;
        known.state = State::Node;
        let (registry, repository) = (known.image.registry.clone(), known.image.repository.clone());
        let name = self.best_name(&n.image, &n.name);
        Some(ImageFound {
            image: n.image,
            name,
            registry,
            repository,
            digest: n.digest,
            size_bytes: Some(n.size_bytes),
            source: Some("node"),
            platform: Some(n.platform),
            fetched_at: now(),
            expires_at: None,
            error: None,
            refs: vec![reference.to_string()],
        })
    }

    /// The name an image is shown by: the first tag reference seen for it.
    fn best_name(&mut self, image: &str, candidate: &str) -> String {
        let is_tag = |n: &str| ImageRef::parse(n).is_ok_and(|r| r.is_tag());
        let e = self
            .names
            .entry(image.to_string())
            .or_insert_with(|| candidate.to_string());
        if !is_tag(e.as_str()) && is_tag(candidate) {
            *e = candidate.to_string();
        }
        e.clone()
    }

    fn queue(&mut self, reference: &str) {
        let Some(k) = self.refs.get_mut(reference) else {
            return;
        };
        k.state = State::Queued;
        k.new_secrets = false;
        let platform = k
            .node
            .as_ref()
            .and_then(|n| self.platforms.get(&(k.context.clone(), n.clone())))
            .cloned()
            .unwrap_or_else(|| self.opts.default_platform.clone());
        let _ = self.jobs.send(Work {
            job: Job {
                reference: reference.to_string(),
                image: k.image.clone(),
                platform,
                pull_secret: None,
            },
            secrets: k.secrets.clone(),
        });
    }

    fn result(&mut self, reference: String, outcome: Outcome) -> Vec<ImageFound> {
        let Some(k) = self.refs.get(&reference) else {
            return Vec::new();
        };
        // A node reported the image while the registry was being asked: the node wins.
        if k.state == State::Node {
            return Vec::new();
        }
        let (image, last) = (k.image.clone(), k.last.clone());
        let failed = matches!(outcome, Outcome::Failed { .. });
        let (found, until) = match outcome {
            Outcome::Sized(s) => {
                let id = image.identity(&s.digest);
                let name = self.best_name(&id, &reference);
                let until = s.expires_at;
                let found = ImageFound {
                    image: id,
                    name,
                    registry: image.registry.clone(),
                    repository: image.repository.clone(),
                    digest: Some(s.digest),
                    size_bytes: Some(s.size_bytes),
                    source: Some("registry"),
                    platform: Some(s.platform),
                    fetched_at: s.fetched_at,
                    expires_at: Some(s.expires_at),
                    error: None,
                    refs: vec![reference.clone()],
                };
                if let Some(k) = self.refs.get_mut(&reference) {
                    k.last = Some(found.clone());
                }
                (found, until)
            }
            Outcome::Failed {
                error,
                fetched_at,
                retry_at,
            } => {
                tracing::info!(image = %reference, error = %error, "image not sized");
                let found = match last {
                    // What was learnt stays; the row says the refresh failed.
                    Some(last) => ImageFound {
                        error: Some(error),
                        ..last
                    },
                    None => ImageFound {
                        image: image
                            .digest
                            .as_deref()
                            .map_or_else(|| reference.clone(), |d| image.identity(d)),
                        name: reference.clone(),
                        registry: image.registry.clone(),
                        repository: image.repository.clone(),
                        digest: image.digest.clone(),
                        size_bytes: None,
                        source: None,
                        platform: None,
                        fetched_at,
                        expires_at: Some(retry_at),
                        error: Some(error),
                        refs: vec![reference.clone()],
                    },
                };
                (found, retry_at)
            }
        };
        if let Some(k) = self.refs.get_mut(&reference) {
            k.state = State::Until(until);
            k.failed = failed;
            if failed && k.new_secrets {
                self.queue(&reference);
            }
        }
        vec![found]
    }

    /// Starts the lookups that are due: images whose context's nodes never got listed, and
    /// answers that expired.
    fn tick(&mut self) {
        let now = now();
        let wait = self.opts.node_wait;
        let due: Vec<String> = self
            .refs
            .iter()
            .filter(|(_, k)| match k.state {
                State::Waiting => k.since.elapsed() >= wait,
                State::Until(t) => t <= now,
                State::Queued | State::Node => false,
            })
            .map(|(r, _)| r.clone())
            .collect();
        for r in due {
            self.queue(&r);
        }
    }
}
