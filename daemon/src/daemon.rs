//! Wires kqd together: store, one supervisor per context, the Flight SQL server, and an
//! orderly shutdown that flushes the last batch, checkpoints DuckDB and removes the socket.

use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::flight::KqFlightSql;
use crate::kubeconfig;
use crate::query::Engine;
use crate::store::{Op, Opened, Store};
use crate::watch;

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

/// Runs kqd until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let db_path = config.database_path();
    let Opened {
        store,
        ops: tx,
        writer,
        resync,
    } = Store::open(&db_path, config.store.clone())?;
    tracing::info!(path = %db_path.display(), "opened the inventory");

    let listener = match crate::socket::from_systemd() {
        Some(l) => {
            tracing::info!("using the socket passed by systemd");
            l
        }
        None => crate::socket::bind(&config.socket).await?,
    };
    tracing::info!(socket = %config.socket.display(), "serving Flight SQL");

    let paths = kubeconfig::kubeconfig_paths(&config.kubeconfigs);
    let loaded = kubeconfig::load(&paths);
    for (path, e) in &loaded.errors {
        tracing::error!(path = %path.display(), error = %e, "kubeconfig file skipped");
    }
    if loaded.contexts.is_empty() {
        tracing::warn!(files = ?paths, "no contexts found in the kubeconfig files");
    }
    remove_stale_contexts(&store, &tx, &loaded).await;

    let merged = Arc::new(loaded.merged);
    let watchers = shutdown.child_token();
    let sync_slots = Arc::new(tokio::sync::Semaphore::new(
        config.initial_sync_concurrency.max(1),
    ));
    let mut tasks = Vec::new();
    for spec in loaded.contexts {
        tracing::info!(context = %spec.info.name, server = %spec.info.server, "watching context");
        tasks.push(tokio::spawn(watch::supervise(
            spec,
            merged.clone(),
            tx.clone(),
            sync_slots.clone(),
            resync.clone(),
            watchers.clone(),
        )));
    }

    let engine = Arc::new(Engine::new(store.clone()));
    let service = FlightServiceServer::new(KqFlightSql::new(engine))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let stop = shutdown.clone();
    let serve = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(crate::socket::incoming(listener), async move {
            stop.cancelled().await
        });
    tokio::pin!(serve);
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
    watchers.cancel();
    for t in tasks {
        let _ = t.await;
    }
    drop(tx);
    if !writer_failed {
        let _ = writer_task.await;
    }
    let _ = std::fs::remove_file(&config.socket);
    drop(store);
    if writer_failed {
        return Err(RunError::WriterStopped(db_path));
    }
    served.map_err(|source| RunError::Serve {
        path: config.socket.clone(),
        source,
    })
}

/// Contexts recorded by an earlier run that the kubeconfig no longer has: drop their rows.
async fn remove_stale_contexts(
    store: &Store,
    tx: &tokio::sync::mpsc::Sender<Op>,
    loaded: &kubeconfig::Loaded,
) {
    let known: Vec<String> = match store.reader() {
        Ok(conn) => conn
            .prepare("SELECT name FROM contexts")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    for name in known {
        if !loaded.contexts.iter().any(|c| c.info.name == name) {
            tracing::info!(context = %name, "context left the kubeconfig; removing its rows");
            let _ = tx.send(Op::RemoveContext { name }).await;
        }
    }
}
