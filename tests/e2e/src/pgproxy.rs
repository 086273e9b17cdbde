//! A TCP proxy in front of PostgreSQL that reads the client's side of the wire protocol and
//! drops the connection at a chosen point: in the middle of a COPY, as a COMMIT is sent
//! (the server never sees it), or once the server committed but before the client hears.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Where to drop the next connection that gets there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// At the first CopyData message, before it reaches the server.
    MidCopy,
    /// At a `COMMIT` query, before it reaches the server.
    BeforeCommit,
    /// At a `COMMIT` query: sent to the server, which commits; its answer is not passed on.
    AfterCommit,
}

/// The proxy: listens on a loopback port until dropped.
pub struct PgProxy {
    pub port: u16,
    fault: Arc<Mutex<Option<Fault>>>,
    fired: Arc<Mutex<Vec<Fault>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PgProxy {
    /// Proxies to PostgreSQL on `upstream` (a loopback port).
    pub async fn start(upstream: u16) -> PgProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let fault = Arc::new(Mutex::new(None));
        let fired = Arc::new(Mutex::new(Vec::new()));
        let (f, d) = (fault.clone(), fired.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (f, d) = (f.clone(), d.clone());
                // Small protocol messages must not wait for Nagle's algorithm.
                let _ = client.set_nodelay(true);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = server.set_nodelay(true);
                        let _ = relay(client, server, f, d).await;
                    }
                });
            }
        });
        PgProxy {
            port,
            fault,
            fired,
            task,
        }
    }

    /// Arms a fault for the next connection that reaches its point.
    pub fn arm(&self, fault: Fault) {
        *self.fault.lock().unwrap() = Some(fault);
    }

    /// The faults that happened.
    pub fn fired(&self) -> Vec<Fault> {
        self.fired.lock().unwrap().clone()
    }

    /// The fault, if armed, is still waiting.
    pub fn armed(&self) -> bool {
        self.fault.lock().unwrap().is_some()
    }
}

/// Takes the armed fault when `here` is its point.
fn take(fault: &Mutex<Option<Fault>>, fired: &Mutex<Vec<Fault>>, here: &[Fault]) -> Option<Fault> {
    let mut f = fault.lock().unwrap();
    match *f {
        Some(x) if here.contains(&x) => {
            *f = None;
            fired.lock().unwrap().push(x);
            Some(x)
        }
        _ => None,
    }
}

/// What the server-to-client half does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Down {
    Pass,
    /// Stop at once.
    Stop,
    /// Read the server's next answer, drop it, and stop.
    Swallow,
}

async fn relay(
    mut client: TcpStream,
    server: TcpStream,
    fault: Arc<Mutex<Option<Fault>>>,
    fired: Arc<Mutex<Vec<Fault>>>,
) -> std::io::Result<()> {
    let (mut from_server, mut to_server) = server.into_split();
    let (mut from_client, mut to_client) = client.split();
    let (mode_tx, mut mode_rx) = tokio::sync::watch::channel(Down::Pass);
    let (swallowed_tx, swallowed_rx) = tokio::sync::oneshot::channel::<()>();
    let (mut swallowed_tx, mut swallowed_rx) = (Some(swallowed_tx), Some(swallowed_rx));
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                n = from_server.read(&mut buf) => {
                    let n = n?;
                    let mode = *mode_rx.borrow();
                    if n == 0 || mode == Down::Stop {
                        return Ok::<_, std::io::Error>(());
                    }
                    if mode == Down::Swallow {
                        if let Some(tx) = swallowed_tx.take() {
                            let _ = tx.send(());
                        }
                        return Ok(());
                    }
                    to_client.write_all(&buf[..n]).await?;
                }
                r = mode_rx.changed() => {
                    if r.is_err() || *mode_rx.borrow() == Down::Stop {
                        return Ok(());
                    }
                }
            }
        }
    };
    let up = async {
        // The startup message has no type byte: a length, then the rest.
        let len = from_client.read_u32().await?;
        let mut body = vec![0u8; len as usize - 4];
        from_client.read_exact(&mut body).await?;
        to_server.write_u32(len).await?;
        to_server.write_all(&body).await?;
        loop {
            let tag = from_client.read_u8().await?;
            let len = from_client.read_u32().await?;
            let mut body = vec![0u8; len as usize - 4];
            from_client.read_exact(&mut body).await?;
            let is_commit = tag == b'Q'
                && String::from_utf8_lossy(&body)
                    .trim_end_matches('\0')
                    .trim()
                    .eq_ignore_ascii_case("COMMIT");
            let here: &[Fault] = match tag {
                b'd' => &[Fault::MidCopy],
                _ if is_commit => &[Fault::BeforeCommit, Fault::AfterCommit],
                _ => &[],
            };
            let fault = take(&fault, &fired, here);
            if matches!(fault, Some(Fault::MidCopy | Fault::BeforeCommit)) {
                let _ = mode_tx.send(Down::Stop);
                return Ok::<_, std::io::Error>(());
            }
            if fault == Some(Fault::AfterCommit) {
                let _ = mode_tx.send(Down::Swallow);
            }
            to_server.write_u8(tag).await?;
            to_server.write_u32(len).await?;
            to_server.write_all(&body).await?;
            if fault == Some(Fault::AfterCommit) {
                // The server answered the COMMIT (so it committed); the client never hears.
                if let Some(rx) = swallowed_rx.take() {
                    let _ = rx.await;
                }
                return Ok(());
            }
        }
    };
    tokio::pin!(down, up);
    // Whichever half ends first ends the connection (both sockets close when dropped).
    tokio::select! {
        _ = &mut up => {}
        _ = &mut down => {}
    }
    Ok(())
}
