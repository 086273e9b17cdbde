//! Wires kqd together: store, one supervisor per context, the Flight SQL server, and an
//! orderly shutdown that flushes the last batch, checkpoints DuckDB and removes the socket.

use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigSource};
use crate::fleet::Fleet;
use crate::flight::KqFlightSql;
use crate::kubeconfig;
use crate::query::Engine;
use crate::reload;
use crate::store::{Op, Opened, Store};

/// How long clients still reading a response get once kqd begins to stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why kqd could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Socket(#[from] crate::socket::SocketError),
    #[error("the store writer for {0} stopped unexpectedly; see the log above")]
    WriterStopped(std::path::PathBuf),
    #[error("query server on {path}: {source}")]
    Serve {
        path: std::path::PathBuf,
        source: tonic::transport::Error,
    },
}

/// Runs kqd until `shutdown` fires. `source` is read again on SIGHUP.
pub async fn run(
    config: Config,
    source: ConfigSource,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    crate::private::restrict_umask();
    let db_path = config.database_path();
    let Opened {
        store,
        ops: tx,
        writer,
        resync,
        outbox,
    } = Store::open(
        &db_path,
        crate::store::StoreOptions {
            mirror: config.postgres_url.is_some(),
            ..config.store.clone()
        },
    )?;
    tracing::info!(path = %db_path.display(), "opened the inventory");

    // A socket systemd passed stays systemd's: kqd neither binds nor removes it.
    let (listener, bound) = match crate::socket::from_systemd() {
        Some(l) => {
            tracing::info!("using the socket passed by systemd");
            (l, false)
        }
        None => (crate::socket::bind(&config.socket).await?, true),
    };
    tracing::info!(socket = %config.socket.display(), "serving Flight SQL");

    let watchers = shutdown.child_token();
    if !config.hook.command.is_empty() {
        tracing::info!(command = %config.hook.command[0], min_severity = %config.hook.min_severity, "running a hook for new incidents");
        tokio::spawn(crate::incidents::hook::run(
            config.hook.clone(),
            store.follow_incidents(),
        ));
    }
    let clients = Arc::new(crate::clients::Clients::default());
    if config.crash_logs.enabled {
        tokio::spawn(crate::incidents::crash_log::run(
            config.crash_logs.clone(),
            store.follow_incidents(),
            clients.clone(),
            tx.clone(),
            watchers.clone(),
        ));
    } else {
        tracing::info!("crash logs are off");
    }
    let images = start_images(&config, &tx, &clients, &watchers).await;
    let mut mirror =
        crate::mirror::Control::new(store.clone(), tx.clone(), outbox, watchers.clone());
    mirror.apply(&config).await;
    let mut fleet = Fleet::new(
        tx.clone(),
        store.clone(),
        resync,
        &config,
        watchers.clone(),
        clients,
    );
    fleet.apply(&config).await;
    let reloader = tokio::spawn(follow_changes(
        fleet,
        mirror,
        config.clone(),
        source,
        watchers.clone(),
    ));

    let engine = Engine::new(store.clone(), shutdown.clone());
    let service = FlightServiceServer::new(KqFlightSql::new(engine))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let stop = shutdown.clone();
    let graceful = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(crate::socket::incoming(listener), async move {
            stop.cancelled().await
        });
    // Queries and followers end when kqd stops; a client that stops reading mid-response
    // gets `SHUTDOWN_GRACE`, then its connection is closed.
    let stop = shutdown.clone();
    let serve = async move {
        tokio::select! {
            r = graceful => r,
            _ = async {
                stop.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!(
                    grace_secs = SHUTDOWN_GRACE.as_secs(),
                    "clients still connected after the grace period; closing their connections"
                );
                Ok(())
            }
        }
    };
    tokio::pin!(serve);
    // The socket listens already (bound above, or passed by systemd).
    crate::notify::ready();
    crate::notify::spawn_watchdog(tx.clone(), watchers.clone());
    let mut writer_task = tokio::task::spawn_blocking(move || writer.join());
    // The writer only ends once every sender is gone; ending earlier means it failed, and
    // kqd stops (non-zero) rather than keep serving a store that no longer moves.
    let (served, writer_failed) = tokio::select! {
        r = &mut serve => (r, false),
        _ = &mut writer_task => {
            tracing::error!("the store writer stopped unexpectedly; shutting down");
            shutdown.cancel();
            ((&mut serve).await, true)
        }
    };

    tracing::info!("shutting down: stopping watchers and flushing the last batch");
    crate::notify::stopping();
    watchers.cancel();
    let _ = reloader.await;
    if let Some(t) = images {
        let _ = t.await;
    }
    drop(tx);
    if !writer_failed {
        let _ = writer_task.await;
    }
    if bound {
        let _ = std::fs::remove_file(&config.socket);
    }
    drop(store);
    if writer_failed {
        return Err(RunError::WriterStopped(db_path));
    }
    served.map_err(|source| RunError::Serve {
        path: config.socket.clone(),
        source,
    })
}

/// Starts image sizing when it is on, and tells the writer where to send what pods and nodes
/// say about images. A registry client that cannot be built turns sizing off, not kqd.
async fn start_images(
    config: &Config,
    tx: &tokio::sync::mpsc::Sender<Op>,
    clients: &Arc<crate::clients::Clients>,
    cancel: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    if !config.images.enabled {
        tracing::info!("image sizing is off");
        return None;
    }
    match crate::images::spawn(
        config.images.clone(),
        tx.clone(),
        Some(clients.clone()),
        cancel.clone(),
    ) {
        Ok((sightings, task)) => {
            let _ = tx.send(Op::ImageSightings(sightings)).await;
            Some(task)
        }
        Err(e) => {
            tracing::error!(error = %e, "image sizing cannot start; images stay unsized");
            None
        }
    }
}

/// Keeps the fleet and the mirror in step with the kubeconfig files (watched) and the
/// config (SIGHUP) until `stop` fires, then stops every context and the mirror.
async fn follow_changes(
    mut fleet: Fleet,
    mut mirror: crate::mirror::Control,
    mut config: Config,
    source: ConfigSource,
    stop: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP; config reloads need a restart");
            None
        }
    };
    let start_watch = |config: &Config| {
        let paths = kubeconfig::kubeconfig_paths(&config.kubeconfigs);
        match reload::watch(&paths) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the kubeconfig files; reload with SIGHUP");
                None
            }
        }
    };
    let mut files = start_watch(&config);
    let contents = |config: &Config| {
        reload::Contents::read(&kubeconfig::kubeconfig_paths(&config.kubeconfigs))
    };
    let mut applied = contents(&config);
    loop {
        let changed = async {
            match files.as_mut() {
                Some(w) => w.changed.recv().await,
                None => std::future::pending().await,
            }
        };
        let hangup = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = changed => {
                // A save that wrote the same bytes (or a change undone within the debounce)
                // leaves every context as it is.
                let now = contents(&config);
                if now == applied {
                    tracing::debug!("a kubeconfig file was rewritten unchanged; not reloading");
                    continue;
                }
                applied = now;
                tracing::info!("a kubeconfig file changed; reloading");
            }
            _ = hangup => {
                tracing::info!("SIGHUP: reloading the config");
                match source.load() {
                    Ok(c) => config = c,
                    Err(e) => {
                        tracing::error!(error = %e, "the config is invalid; keeping the previous one");
                        continue;
                    }
                }
                // The config may name other kubeconfig files, or another database.
                applied = contents(&config);
                mirror.apply(&config).await;
            }
        }
        fleet.apply(&config).await;
        // Symlinks may point elsewhere now, and SIGHUP may have changed the file list.
        files = start_watch(&config);
    }
    fleet.stop().await;
    mirror.stop().await;
}

/// `kqd --check-config`: prints the config's kubeconfig files, the contexts they define
/// (and whether the globs select them) and every error; returns the exit status.
pub fn check_config(config: &Config) -> i32 {
    let paths = kubeconfig::kubeconfig_paths(&config.kubeconfigs);
    let loaded = kubeconfig::load(&paths);
    println!("data: {}", config.database_path().display());
    println!("socket: {}", config.socket.display());
    let mut mirror_ok = true;
    let instance = config.mirror_instance.clone().unwrap_or_default();
    // `--check-config` only looks: it claims no instance.
    if let Some(cfg) = crate::mirror::MirrorConfig::from_config(config, instance, String::new()) {
        let u = &cfg.url;
        let checked = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| vec![format!("cannot start a runtime: {e}")])
            .and_then(|rt| rt.block_on(crate::mirror::check(&cfg)));
        let target = format!(
            "postgres mirror {} (schema {})",
            crate::config::redact_url(u),
            config.postgres_schema
        );
        match checked {
            Ok(ok) => println!("{target}: ok, {ok}"),
            Err(problems) => {
                mirror_ok = false;
                for p in problems {
                    println!("{target}: error: {p}");
                }
            }
        }
    }
    for p in &paths {
        let state = match loaded.errors.iter().find(|(e, _)| e == p) {
            Some((_, e)) => format!("error: {e}"),
            None if p.exists() => "ok".to_string(),
            None => "missing (picked up when created)".to_string(),
        };
        println!("kubeconfig {}: {state}", p.display());
    }
    for c in &loaded.contexts {
        let watched = if config.contexts.allows(&c.info.name) {
            "watched"
        } else {
            "excluded by the context globs"
        };
        println!(
            "context {}: {} ({}, from {})",
            c.info.name, c.info.server, watched, c.info.source_file
        );
    }
    if loaded.contexts.is_empty() {
        println!("no contexts found");
    }
    i32::from(!loaded.errors.is_empty() || !mirror_ok)
}
