//! The real `recfleet serve` binary as a child process, as a supervisor (systemd, Docker, ECS)
//! runs it: flags in, signals to stop it, its exit status out. Every controller of one test
//! carries the test's tag in its environment, which its bots inherit, so whatever a failed test
//! leaves running is found and killed when the guard drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The environment variable that tags a test's controllers and bots.
pub const TAG_VAR: &str = "RECFLEET_TEST_SERVE_TAG";

/// What the tests' controllers allow: their meetings, receivers and S3 are on loopback or a
/// Docker network's gateway (a private address). A test of the policy passes `--allow-networks`,
/// which wins over this.
pub const ALLOW_NETWORKS: (&str, &str) = ("RECFLEET_ALLOW_NETWORKS", "loopback,private");

/// Kills every process carrying `tag` when dropped.
#[derive(Debug)]
pub struct Tag(pub String);

impl Tag {
    pub fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Tag(format!("s{}-{n}", std::process::id()))
    }

    /// The tagged processes now: (pid, name).
    pub fn processes(&self) -> Vec<(u32, String)> {
        crate::procs::tagged(TAG_VAR, &self.0, 0.0)
    }
}

impl Default for Tag {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Tag {
    fn drop(&mut self) {
        for (pid, _) in self.processes() {
            // SAFETY: SIGKILL to a process this test started (it carries the test's tag).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// One `recfleet serve` process.
#[derive(Debug)]
pub struct ServeProcess {
    child: Child,
    pub base: String,
    pub port: u16,
    pub log: PathBuf,
}

impl ServeProcess {
    /// Starts `recfleet serve --listen 127.0.0.1:<port> <args>`, its stderr (and its bots') in
    /// `log`, and waits until `/healthz` answers.
    pub fn start<S: AsRef<std::ffi::OsStr>>(tag: &Tag, port: u16, log: &Path, args: &[S]) -> Self {
        Self::start_on(tag, std::net::Ipv4Addr::LOCALHOST.into(), port, log, args)
    }

    /// The same, listening on `ip` (a Docker network's gateway, which containers reach).
    pub fn start_on<S: AsRef<std::ffi::OsStr>>(tag: &Tag, ip: std::net::IpAddr, port: u16, log: &Path, args: &[S]) -> Self {
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("the log file opens");
        let child = Command::new(crate::binary("recfleet"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("{ip}:{port}"))
            .args(args)
            .env(TAG_VAR, &tag.0)
            .env(ALLOW_NETWORKS.0, ALLOW_NETWORKS.1)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("recfleet serve starts");
        let serve = Self { child, base: format!("http://{ip}:{port}"), port, log: log.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect((ip, port)).is_err() {
            assert!(Instant::now() < deadline, "recfleet serve did not listen within 30 s; log:\n{}", serve.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
    }

    /// Waits for the exit, at most `limit`; `None` if it is still running then.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small client of the REST API with one key.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, key: &str) -> Self {
        Self { base: base.to_string(), key: key.to_string(), http: reqwest::Client::new() }
    }

    /// (status, headers, body as JSON or `Null`).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.key);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        (status, headers, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, _, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// The sum of a metric's samples on `/metrics` (every label set).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.http.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap();
        text.lines().filter(|l| l.split(['{', ' ']).next() == Some(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }

    /// Polls `path` until `check` holds, failing the test after `limit`.
    pub async fn wait_for(&self, what: &str, limit: Duration, path: &str, mut check: impl FnMut(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let (status, _, v) = self.call(reqwest::Method::GET, path, None).await;
            if status == 200 && check(&v) {
                return v;
            }
            assert!(started.elapsed() < limit, "{what} not reached within {limit:?}; last: {status} {v:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
