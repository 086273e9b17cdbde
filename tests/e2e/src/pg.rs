//! A real PostgreSQL server for tests: `initdb` and `pg_ctl` on a free loopback port in a
//! temporary directory (as the `postgres` user when the tests run as root, since initdb
//! refuses root), with `psql` to look inside.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A running server; stopped (immediately) and removed when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    /// With TLS: the CA that signed the server's certificate (for 127.0.0.1 and localhost).
    pub ca: Option<PathBuf>,
    /// The server's processes run at this nice value (`None`: the caller's).
    nice: Option<i32>,
}

/// Where `initdb`, `pg_ctl` and `psql` are: `PG_BIN`, else Debian's newest, else `PATH`.
fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PG_BIN") {
        return PathBuf::from(p);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().unwrap_or_default()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs a PostgreSQL program, as `postgres` when root, at `nice` when given (what it
/// starts inherits it).
pub(crate) fn pg_command(bin: &Path, program: &str, nice: Option<i32>) -> Command {
    let exe = if bin.as_os_str().is_empty() {
        PathBuf::from(program)
    } else {
        bin.join(program)
    };
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if is_root() {
        argv.extend(["runuser", "-u", "postgres", "--"].map(Into::into));
    }
    if let Some(n) = nice {
        argv.extend(["nice".into(), "-n".into(), n.to_string().into()]);
    }
    argv.push(exe.into_os_string());
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

/// A temporary directory for a server that [`pg_command`] runs: the `postgres` user's
/// when the tests run as root.
pub(crate) fn server_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    if is_root() {
        let status = Command::new("chown")
            .arg("postgres:")
            .arg(dir.path())
            .status()
            .expect("chown runs");
        assert!(status.success(), "chown {}", dir.path().display());
    }
    dir
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    /// A fresh cluster, started, with trust authentication on loopback.
    pub fn start() -> Postgres {
        Postgres::start_with(false, None)
    }

    /// Like [`Postgres::start`], every server process at nice value `nice`. kq-bench uses
    /// it to stand in for a team's server on another machine: on a shared two-core host a
    /// server at kqd's own priority takes a third of the CPU while it loads, and that is
    /// not what kqd's figures should measure.
    pub fn start_niced(nice: i32) -> Postgres {
        Postgres::start_with(false, Some(nice))
    }

    /// Like [`Postgres::start`], serving TLS too, with a certificate from a CA of its own
    /// (made with `openssl`).
    pub fn start_tls() -> Postgres {
        Postgres::start_with(true, None)
    }

    fn start_with(tls: bool, nice: Option<i32>) -> Postgres {
        let dir = server_dir("kq-pg-");
        let bin = pg_bin();
        let data = dir.path().join("data");
        let out = pg_command(&bin, "initdb", None)
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .arg("-D")
            .arg(&data)
            .stdout(Stdio::null())
            .output()
            .expect("initdb runs (install postgresql)");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ca = tls.then(|| make_certificates(dir.path()));
        let pg = Postgres {
            port: free_port(),
            dir,
            bin,
            ca,
            nice,
        };
        pg.start_again();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server (again, on the same port) and waits until it accepts connections.
    pub fn start_again(&self) {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            self.port,
            self.dir.path().display()
        );
        if self.ca.is_some() {
            let d = self.dir.path().display();
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key"
            ));
        }
        let out = pg_command(&self.bin, "pg_ctl", self.nice)
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-o", &opts, "-w", "start"])
            .stdout(Stdio::null())
            .output()
            .expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// Stops the server, dropping every connection.
    pub fn stop(&self) {
        let out = pg_command(&self.bin, "pg_ctl", None)
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .output()
            .expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The URL of database `postgres` as the superuser.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs SQL through `psql` (unaligned, tuples only, stopping at the first error):
    /// its output, or its error.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-X",
                "-A",
                "-t",
            ])
            .args([
                "-v",
                "ON_ERROR_STOP=1",
                "-p",
                &self.port.to_string(),
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("psql runs");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Like [`Postgres::psql`], panicking on an error.
    pub fn sql(&self, sql: &str) -> String {
        self.psql(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .trim_end()
            .to_string()
    }

    /// Everything in the database, as `pg_dump` writes it.
    pub fn dump(&self) -> Vec<u8> {
        let out = Command::new(self.bin.join("pg_dump"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-p", &self.port.to_string()])
            .output()
            .expect("pg_dump runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

/// A CA and a server certificate it signed for 127.0.0.1 and localhost, in `dir`, the key
/// readable by the server only; returns the CA's path.
fn make_certificates(dir: &Path) -> PathBuf {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=kq-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    if is_root() {
        let status = Command::new("chown")
            .args(["postgres:", "server.key", "server.crt"])
            .current_dir(dir)
            .status()
            .expect("chown runs");
        assert!(status.success());
    }
    dir.join("ca.crt")
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = pg_command(&self.bin, "pg_ctl", None)
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A column as both sides can print it the same way in JSON: timestamps as Unix
/// microseconds, everything else as itself.
fn json_expr(name: &str, sql_type: &str, postgres: bool) -> String {
    let q = format!("\"{name}\"");
    match (sql_type, postgres) {
        ("TIMESTAMPTZ", false) => format!("epoch_us({q})"),
        ("TIMESTAMPTZ", true) => format!("(extract(epoch from {q}) * 1000000)::bigint"),
        _ => q,
    }
}

/// A JSON document with its keys in one order, for comparing.
fn canonical(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    v.to_string()
}

/// One table's rows as canonical JSON, sorted, from DuckDB (through kq) and from
/// PostgreSQL; `filter` restricts both (the same SQL on each side).
async fn rows_both(
    env: &crate::Env,
    socket: &Path,
    pg: &Postgres,
    schema: &str,
    instance: &str,
    t: &kq_schema::Table,
    filter: &str,
) -> Result<(Vec<String>, Vec<String>), String> {
    let duck_fields: Vec<String> = t
        .columns
        .iter()
        .map(|c| format!("\"{}\" := {}", c.name, json_expr(c.name, c.sql_type, false)))
        .collect();
    let sql = format!(
        "SELECT to_json(struct_pack({}))::VARCHAR AS j FROM {} WHERE true {filter}",
        duck_fields.join(", "),
        t.name
    );
    let o = env.kq_at(socket, &["-c", &sql, "--format", "jsonl"]).await;
    if !o.status.success() {
        return Err(format!(
            "{}: {}",
            t.name,
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let mut here: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l).unwrap();
            canonical(row["j"].as_str().expect("j is text"))
        })
        .collect();
    let pg_fields: Vec<String> = t
        .columns
        .iter()
        .map(|c| format!("'{}', {}", c.name, json_expr(c.name, c.sql_type, true)))
        .collect();
    let sql = format!(
        "SELECT json_build_object({})::text FROM \"{schema}\".\"{}\" WHERE instance = '{instance}' {filter}",
        pg_fields.join(", "),
        t.name
    );
    let mut there: Vec<String> = pg
        .psql(&sql)
        .map_err(|e| format!("{}: {e}", t.name))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(canonical)
        .collect();
    here.sort();
    there.sort();
    Ok((here, there))
}

/// Compares every mirrored table of a kqd (on `socket`, as `instance`) in PostgreSQL with DuckDB's, row
/// by row and column by column; returns the differences (empty when the mirror is exact).
/// `skip` leaves tables out (those a test changes on one side on purpose). `objects` is
/// compared in slices by uid, so that no one result is large.
pub async fn mirror_differences(
    env: &crate::Env,
    socket: &Path,
    pg: &Postgres,
    schema: &str,
    instance: &str,
    skip: &[&str],
) -> Vec<String> {
    let mut out = Vec::new();
    for m in kq_daemon::mirror::tables::all() {
        let t = m.table;
        if skip.contains(&t.name) {
            continue;
        }
        let filters: Vec<String> = if t.name == "objects" {
            "0123456789abcdef-"
                .chars()
                .map(|c| match c {
                    '-' => "AND lower(left(uid, 1)) NOT IN ('0','1','2','3','4','5','6','7','8','9','a','b','c','d','e','f')".to_string(),
                    c => format!("AND lower(left(uid, 1)) = '{c}'"),
                })
                .collect()
        } else {
            vec![String::new()]
        };
        for filter in filters {
            let (here, there) = match rows_both(env, socket, pg, schema, instance, t, &filter).await
            {
                Ok(r) => r,
                Err(e) => {
                    out.push(e);
                    continue;
                }
            };
            if here != there {
                let only_here: Vec<&String> = here.iter().filter(|r| !there.contains(r)).collect();
                let only_there: Vec<&String> = there.iter().filter(|r| !here.contains(r)).collect();
                out.push(format!(
                    "{} {filter}: {} rows in DuckDB, {} in PostgreSQL; only in DuckDB: {:?}; only in PostgreSQL: {:?}",
                    t.name,
                    here.len(),
                    there.len(),
                    only_here.iter().take(2).collect::<Vec<_>>(),
                    only_there.iter().take(2).collect::<Vec<_>>()
                ));
            }
        }
    }
    out
}
