//! The query socket: a Unix socket in a 0700 directory, mode 0600, accepting only peers
//! with the daemon's own uid. Also takes a socket handed over by systemd.

mod authority;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

/// Errors preparing the socket, naming its path.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot create the socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the socket directory {path} belongs to uid {owner}, not to this user ({uid}); refusing to use it"
    )]
    NotOurs { path: PathBuf, owner: u32, uid: u32 },
    #[error("another kqd is already listening at {0}")]
    InUse(PathBuf),
    #[error("cannot listen at {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn my_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Creates the directory (0700) and binds the socket (0600), replacing a stale one.
pub async fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|source| SocketError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let meta = std::fs::metadata(dir).map_err(|source| SocketError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let owner = std::os::unix::fs::MetadataExt::uid(&meta);
    if owner != my_uid() {
        return Err(SocketError::NotOurs {
            path: dir.to_path_buf(),
            owner,
            uid: my_uid(),
        });
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        SocketError::Dir {
            path: dir.to_path_buf(),
            source,
        }
    })?;
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(SocketError::InUse(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        SocketError::Bind {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

/// A listener systemd passed (LISTEN_FDS, fd 3), if this process is its target.
pub fn from_systemd() -> Option<UnixListener> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() || fds < 1 {
        return None;
    }
    use std::os::fd::FromRawFd as _;
    // SAFETY: systemd's protocol hands this process fd 3 as a listening socket it owns; we
    // take ownership exactly once, here.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(3) };
    std_listener.set_nonblocking(true).ok()?;
    UnixListener::from_std(std_listener).ok()
}

/// What a request knows about its connection: `gone` fires once the client's connection
/// has closed, so work done for it can stop (request futures are not dropped by then).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub gone: CancellationToken,
}

/// A client connection that cancels its [`PeerInfo::gone`] token when it is dropped, and
/// whose bytes pass through [`authority::AuthorityFix`] on their way to h2.
pub struct PeerStream {
    inner: UnixStream,
    gone: CancellationToken,
    fix: authority::AuthorityFix,
    /// Rewritten bytes h2 has not read yet, from `ready_at` on.
    ready: Vec<u8>,
    ready_at: usize,
}

impl Drop for PeerStream {
    fn drop(&mut self) {
        self.gone.cancel();
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        PeerInfo {
            gone: self.gone.clone(),
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_at < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_at);
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                this.ready_at += n;
                if this.ready_at == this.ready.len() {
                    this.ready.clear();
                    this.ready_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.fix.is_passthrough() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut raw = [0u8; 16 * 1024];
            let mut raw = ReadBuf::new(&mut raw);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut raw))?;
            if raw.filled().is_empty() {
                // The end of the stream.
                return Poll::Ready(Ok(()));
            }
            this.fix.feed(raw.filled(), &mut this.ready)?;
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepted connections whose peer runs as our uid; others are closed and logged.
pub fn incoming(listener: UnixListener) -> impl Stream<Item = std::io::Result<PeerStream>> {
    let uid = my_uid();
    UnixListenerStream::new(listener).filter(move |conn| {
        let ok = match conn {
            Ok(s) => match s.peer_cred() {
                Ok(c) if c.uid() == uid => true,
                Ok(c) => {
                    tracing::warn!(peer_uid = c.uid(), "refused a connection from another user");
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "refused a connection whose peer cannot be identified");
                    false
                }
            },
            Err(_) => true,
        };
        futures::future::ready(ok)
    })
    .map(|conn| {
        conn.map(|inner| PeerStream {
            inner,
            gone: CancellationToken::new(),
            fix: authority::AuthorityFix::default(),
            ready: Vec::new(),
            ready_at: 0,
        })
    })
}
