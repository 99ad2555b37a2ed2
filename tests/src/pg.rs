//! A real PostgreSQL server for one test: Debian's `postgresql` package (installed by
//! `scripts/setup.sh`), `initdb` into a temporary folder, a free loopback port, stopped and
//! removed when dropped. PostgreSQL refuses to run as root, so as root it runs as the
//! `postgres` user the package creates.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian bookworm's PostgreSQL.
const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
const USER: &str = "recfleet";

#[derive(Debug)]
pub struct PgServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn bin(name: &str) -> PathBuf {
    let path = Path::new(BIN_DIR).join(name);
    assert!(path.exists(), "{} is missing: run `scripts/setup.sh` (make test does) to install postgresql", path.display());
    path
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program args…`, as the `postgres` user when this process is root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", "postgres", "--regid", "postgres", "--init-groups", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// As root, `path` goes to the `postgres` user, who runs the server.
fn give_to_server_user(path: &Path) {
    if is_root() {
        let mut chown = Command::new("chown");
        chown.arg("postgres:postgres").arg(path);
        run(chown, "chown");
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what} does not start: {e}"));
    assert!(out.status.success(), "{what} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// The server on `data` under `dir`, on `port`, logging to `dir/server.log` (appended).
fn spawn(dir: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log")).expect("the server log opens");
    give_to_server_user(&dir.join("server.log"));
    let mut postgres = as_server_user(&bin("postgres"));
    postgres
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string(), "-k"])
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "shared_buffers=16MB", "-c", "max_connections=50"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    postgres.spawn().expect("postgres starts")
}

impl PgServer {
    /// A new cluster with a superuser `recfleet` (trust on loopback) and a database `recfleet`,
    /// accepting connections when this returns.
    pub fn start() -> PgServer {
        Self::start_with(false)
    }

    /// The same, taking TCP connections over TLS only (a self-signed certificate), as RDS with
    /// `rds.force_ssl` does: a client that does not encrypt is refused.
    pub fn start_tls_only() -> PgServer {
        Self::start_with(true)
    }

    fn start_with(tls_only: bool) -> PgServer {
        let dir = tempfile::Builder::new().prefix("recfleet-pg").tempdir().expect("a temporary folder");
        give_to_server_user(dir.path());
        let data = dir.path().join("data");
        let mut initdb = as_server_user(&bin("initdb"));
        initdb.arg("-D").arg(&data).args(["-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync"]);
        run(initdb, "initdb");
        if tls_only {
            let mut openssl = Command::new("openssl");
            openssl.args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"]);
            openssl.arg(data.join("server.key")).arg("-out").arg(data.join("server.crt"));
            run(openssl, "openssl req");
            for file in ["server.key", "server.crt"] {
                give_to_server_user(&data.join(file));
            }
            std::fs::set_permissions(data.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            let mut conf = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
            std::io::Write::write_all(&mut conf, b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n").unwrap();
            std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n").unwrap();
        }
        let port = crate::free_port();
        let server = PgServer { child: spawn(dir.path(), port), port, dir };
        server.wait_ready();
        let mut createdb = Command::new(bin("createdb"));
        createdb.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER, USER]);
        run(createdb, "createdb");
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut ready = Command::new(bin("pg_isready"));
            ready.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, "-d", "postgres", "-q"]);
            if ready.status().is_ok_and(|s| s.success()) {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not accept connections within 30 s:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the server again on the same data and port, after `kill` (a database host that
    /// comes back), accepting connections when this returns.
    pub fn restart(&mut self) {
        self.child = spawn(self.dir.path(), self.port);
        self.wait_ready();
    }

    /// The URL of the `recfleet` database.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{USER}", self.port)
    }

    /// `sql` through `psql`, its rows as `|`-separated lines.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new(bin("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, "-d", USER, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("psql starts");
        assert!(out.status.success(), "psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server at once (SIGQUIT: no checkpoint), as a database host that goes away.
    pub fn kill(&mut self) {
        // SAFETY: a signal to the postgres process this server started and has not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGQUIT) };
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill();
        }
    }
}
