//! A real PgBouncer in front of a test [`Postgres`], pooling in transaction mode as teams
//! run it: Debian's `pgbouncer` on a free loopback port, as `postgres` when the tests run
//! as root (it refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pg::{Postgres, free_port, pg_command, server_dir};

/// A running PgBouncer; killed when dropped.
pub struct PgBouncer {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

/// Where Debian puts `pgbouncer`, which is not on a normal user's `PATH`.
fn bin_dir() -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/usr/local/bin"]
        .into_iter()
        .map(PathBuf::from)
        .find(|d| d.join("pgbouncer").exists())
        .expect("pgbouncer is installed (apt install pgbouncer)")
}

impl PgBouncer {
    /// Pools `pg`'s database `postgres` for any number of clients over at most `servers`
    /// server connections, handing one to a client for one transaction at a time.
    pub fn transaction_pool(pg: &Postgres, servers: u32) -> PgBouncer {
        let dir = server_dir("kq-pgbouncer-");
        let port = free_port();
        let d = dir.path().display();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]
postgres = host=127.0.0.1 port={pg_port} dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {d}/userlist.txt
pool_mode = transaction
default_pool_size = {servers}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 100
logfile = {d}/pgbouncer.log
pidfile = {d}/pgbouncer.pid
",
                pg_port = pg.port,
            ),
        )
        .expect("write pgbouncer.ini");
        std::fs::write(dir.path().join("userlist.txt"), "\"postgres\" \"\"\n")
            .expect("write userlist.txt");
        let child = pg_command(&bin_dir(), "pgbouncer", None)
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer starts");
        let bouncer = PgBouncer { dir, port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen on {port}:\n{}",
                bouncer.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bouncer
    }

    /// The URL of database `postgres` through the pool.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// What PgBouncer logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }

    fn pid(dir: &Path) -> Option<i32> {
        std::fs::read_to_string(dir.join("pgbouncer.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // `runuser` may stand between this process and PgBouncer: signal PgBouncer itself.
        if let Some(pid) = PgBouncer::pid(self.dir.path()) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
