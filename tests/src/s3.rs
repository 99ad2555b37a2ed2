//! Real S3-compatible servers for the tests, and a TCP proxy the tests can cut:
//!
//! - moto's server (PyPI `moto[server]`): speaks S3, checks no signatures;
//! - s3s-fs (crates.io, 0.14.1): checks every request's signature, and presigned GETs.
//!
//! `scripts/setup.sh` installs both; a missing one fails the test loudly. Each server gets a
//! free loopback port and dies with its handle.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub const ACCESS_KEY: &str = "recfleettestkey";
pub const SECRET_KEY: &str = "recfleet-test-secret-key-0123456789";
pub const REGION: &str = "us-east-1";

/// A running S3-compatible server.
#[derive(Debug)]
pub struct S3Server {
    _child: Child,
    pub endpoint: String,
    pub addr: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

async fn wait_listening(addr: SocketAddr, child: &mut Child, what: &str) {
    let started = Instant::now();
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start ({status})");
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{what} did not listen on {addr} within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl S3Server {
    /// moto's server on a free port.
    pub async fn moto() -> S3Server {
        let port = crate::free_port();
        let mut child = Command::new(crate::tool("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start moto_server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(addr, &mut child, "moto_server").await;
        S3Server { _child: child, endpoint: format!("http://{addr}"), addr, _dir: None }
    }

    /// s3s-fs on a free loopback port, serving a temporary folder, checking signatures.
    pub async fn s3s_fs() -> S3Server {
        Self::s3s_fs_on("127.0.0.1".parse().unwrap()).await
    }

    /// s3s-fs on a free port of `ip` (a Docker network's gateway, for bots in containers).
    pub async fn s3s_fs_on(ip: std::net::IpAddr) -> S3Server {
        let port = std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(crate::tool("s3s-fs"))
            .args(["--host", &ip.to_string(), "--port", &port.to_string(), "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start s3s-fs");
        let addr = SocketAddr::new(ip, port);
        wait_listening(addr, &mut child, "s3s-fs").await;
        S3Server { _child: child, endpoint: format!("http://{addr}"), addr, _dir: Some(dir) }
    }
}

/// The AWS settings that point the SDK (in this process and in every bot it starts) at
/// `endpoint`.
pub fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ("AWS_REGION", REGION.into()),
        ("AWS_ENDPOINT_URL", endpoint.into()),
        // No profile files or instance metadata lookups on a test machine.
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_CONFIG_FILE", "/dev/null".into()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
    ]
}

/// Sets `aws_env` in this process; child processes inherit it. Each test binary of nextest is
/// its own process, so this touches no other test.
pub fn use_endpoint(endpoint: &str) {
    for (k, v) in aws_env(endpoint) {
        // SAFETY (edition 2021: safe fn): set before the SDK or any other thread reads it.
        std::env::set_var(k, v);
    }
}

/// A TCP proxy in front of a server. `cut(true)` drops every open connection and refuses new
/// ones (they are accepted and closed at once) until `cut(false)`.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    cut_tx: watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let (cut_tx, cut_rx) = watch::channel(false);
        let flag = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                if flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Proxy { addr, cut, cut_tx }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        let _ = self.cut_tx.send(cut);
    }
}

/// A client of the test's store, path-style, for checking what landed.
pub async fn store(bucket: &str, prefix: &str) -> recfleet_storage::Store {
    let url: recfleet_storage::StoreUrl =
        if prefix.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{prefix}") }.parse().unwrap();
    let opts = recfleet_storage::StoreOptions { path_style: true, ..Default::default() };
    recfleet_storage::Store::open(&url, &opts).await.unwrap()
}

/// Creates `bucket` on the server the environment points at.
pub async fn create_bucket(bucket: &str) {
    match store(bucket, "").await {
        recfleet_storage::Store::S3(s) => s.create_bucket().await.expect("create the test bucket"),
        recfleet_storage::Store::Fs(_) => unreachable!("an s3:// URL"),
    }
}
