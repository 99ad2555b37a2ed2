//! The browser's only way out over HTTP (WebRTC's UDP media goes around it, docs/SECURITY.md):
//! an HTTP proxy inside the bot, on loopback, that Chromium must use
//! for every request (`--proxy-server`, loopback not bypassed): navigations, redirects (each hop
//! is a new request), iframes, subresources, `fetch`, and WebSockets (Chromium tunnels those
//! with `CONNECT`). Each request's host is resolved here and every address checked against the
//! address policy (`recfleet_proto::address`); the connection then goes to the checked address,
//! so DNS that changes between the check and the connection (rebinding) cannot get through.
//!
//! A refused plain-HTTP request is answered `204 No Content`, which makes a navigation stay
//! where it was (the meeting page) and leaves an iframe or an image empty; a refused `CONNECT`
//! (HTTPS, WSS) is answered 403, which the browser shows as a failed load. Each refusal is
//! logged (the first per host at warn) and sent to subscribers (the recording's timeline).
//!
//! Hand-written on hyper, as hyper's own proxy example is: the proxies on crates.io are built to
//! intercept TLS, which this must not do.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use recfleet_proto::address::{NetworkPolicy, Refusal, Target};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

type Body = BoxBody<Bytes, hyper::Error>;

/// Headers that belong to one hop (RFC 9110 §7.6.1), not passed on.
const HOP_BY_HOP: [&str; 7] = ["proxy-connection", "proxy-authorization", "connection", "keep-alive", "te", "trailer", "upgrade"];

/// One refused request: where it wanted to go and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `host:port` as the browser asked for it.
    pub target: String,
    pub reason: Refusal,
    /// The address it resolved to, when the refusal came after DNS.
    pub resolved: Option<std::net::IpAddr>,
}

/// The running proxy. Dropping it stops it.
#[derive(Debug)]
pub struct Egress {
    pub addr: SocketAddr,
    refusals: broadcast::Sender<Refused>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What every connection of the proxy shares.
#[derive(Debug)]
struct Shared {
    policy: NetworkPolicy,
    refusals: broadcast::Sender<Refused>,
    /// Targets already warned about: a page that asks a thousand times logs once.
    warned: Mutex<std::collections::HashSet<String>>,
}

impl Egress {
    /// Listens on a free loopback port.
    pub async fn start(policy: NetworkPolicy) -> std::io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (refusals, _) = broadcast::channel(256);
        let shared = Arc::new(Shared { policy, refusals: refusals.clone(), warned: Mutex::default() });
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // Out of descriptors, most likely: wait rather than spin.
                        tracing::warn!(error = %err, "the egress proxy cannot accept a connection");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                    let served = hyper::server::conn::http1::Builder::new()
                        .preserve_header_case(true)
                        .title_case_headers(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                    if let Err(err) = served {
                        tracing::trace!(error = %err, "a browser connection to the egress proxy ended");
                    }
                });
            }
        });
        tracing::debug!(%addr, ?policy, "egress proxy listening");
        Ok(Egress { addr, refusals, task })
    }

    /// Refusals from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Refused> {
        self.refusals.subscribe()
    }
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Empty::<Bytes>::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp
}

/// How long one connection to a checked address may take to open.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Destinations warned about per proxy; past it, refusals are logged at debug only, so a page
/// that asks for thousands of addresses cannot flood the log (or the controller's).
const MAX_WARNED: usize = 32;

/// The addresses `host` (as the request names it: `[::1]` with brackets) may be reached at on
/// `port`, all checked; or why not.
async fn resolve(policy: NetworkPolicy, host: &str, port: u16) -> Result<Vec<SocketAddr>, Option<Refused>> {
    let url = format!("http://{host}/");
    let parsed = url::Url::parse(&url).map_err(|_| None)?;
    // `host:port` as the URL parser writes it (`[::ffff:a9fe:a9fe]:80`), the port always said.
    let target = format!("{}:{port}", parsed.host_str().unwrap_or(host));
    let refused = |reason, resolved| Some(Refused { target: target.clone(), reason, resolved });
    match policy.check_url(&url, &["http"]) {
        Err(recfleet_proto::address::UrlRefusal::Address(reason)) => Err(refused(reason, None)),
        Err(_) => Err(None),
        Ok(Target::Ip(ip)) => Ok(vec![SocketAddr::new(ip, port)]),
        Ok(Target::Name(name)) => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port)).await.map_err(|_| None)?.collect();
            if let Some((ip, reason)) = policy.first_refused(addrs.iter().map(SocketAddr::ip)) {
                return Err(refused(reason, Some(ip)));
            }
            Ok(addrs)
        }
    }
}

/// The first of `addrs` that takes a connection.
async fn connect(addrs: &[SocketAddr]) -> Option<TcpStream> {
    for addr in addrs {
        if let Ok(Ok(stream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            return Some(stream);
        }
    }
    None
}

fn report(shared: &Shared, refused: Refused) {
    let first = {
        let mut warned = shared.warned.lock().expect("not poisoned");
        warned.len() < MAX_WARNED && warned.insert(refused.target.clone())
    };
    if first {
        tracing::warn!(target_host = %refused.target, resolved = ?refused.resolved, reason = refused.reason.as_str(),
            "the browser was refused a request by the address policy: {}", refused.reason);
    } else {
        tracing::debug!(target_host = %refused.target, reason = refused.reason.as_str(), "refused again");
    }
    let _ = shared.refusals.send(refused);
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, hyper::Error> {
    if req.method() == Method::CONNECT {
        return Ok(tunnel(&shared, req).await);
    }
    let Some(host) = req.uri().host().map(str::to_string) else {
        return Ok(empty(StatusCode::BAD_REQUEST));
    };
    if req.uri().scheme_str() != Some("http") {
        return Ok(empty(StatusCode::BAD_REQUEST));
    }
    let addrs = match resolve(shared.policy, &host, req.uri().port_u16().unwrap_or(80)).await {
        Ok(addrs) => addrs,
        Err(Some(refused)) => {
            let reason = refused.reason.as_str();
            report(&shared, refused);
            let mut resp = empty(StatusCode::NO_CONTENT);
            resp.headers_mut().insert("x-recfleet-refused", hyper::header::HeaderValue::from_static(reason));
            return Ok(resp);
        }
        Err(None) => return Ok(empty(StatusCode::BAD_GATEWAY)),
    };
    let Some(stream) = connect(&addrs).await else { return Ok(empty(StatusCode::BAD_GATEWAY)) };
    let (mut sender, conn) = match hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .title_case_headers(true)
        .handshake(TokioIo::new(stream))
        .await
    {
        Ok(pair) => pair,
        Err(_) => return Ok(empty(StatusCode::BAD_GATEWAY)),
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (mut parts, body) = req.into_parts();
    parts.uri = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").parse().expect("a path parses as a URI");
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(resp) => Ok(resp.map(|b| b.boxed())),
        Err(_) => Ok(empty(StatusCode::BAD_GATEWAY)),
    }
}

/// `CONNECT host:port`: checked, connected, then bytes both ways (TLS end to end).
async fn tunnel(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    // `CONNECT host:port` always names its port: 443 for HTTPS and WSS, 80 for a plain `ws://`.
    let (Some(host), Some(port)) = (req.uri().host().map(str::to_string), req.uri().port_u16()) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let addrs = match resolve(shared.policy, &host, port).await {
        Ok(addrs) => addrs,
        Err(Some(refused)) => {
            report(shared, refused);
            return empty(StatusCode::FORBIDDEN);
        }
        Err(None) => return empty(StatusCode::BAD_GATEWAY),
    };
    let Some(mut upstream) = connect(&addrs).await else { return empty(StatusCode::BAD_GATEWAY) };
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(upgraded), &mut upstream).await;
            }
            Err(err) => tracing::debug!(error = %err, "a tunnel was not upgraded"),
        }
    });
    empty(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A raw HTTP/1.1 exchange through the proxy: the status line and the rest.
    async fn ask(proxy: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    }

    async fn origin() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\norigin").await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn allowed_requests_go_through_and_refused_ones_get_no_content() {
        let port = origin().await;
        let open = Egress::start(NetworkPolicy::LOCAL).await.unwrap();
        let answer = ask(open.addr, &format!("GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n")).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("origin"), "{answer}");

        let strict = Egress::start(NetworkPolicy::default()).await.unwrap();
        let mut refusals = strict.subscribe();
        for (request, status) in [
            (format!("GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"), "HTTP/1.1 204"),
            (format!("GET http://localhost:{port}/x HTTP/1.1\r\nHost: localhost\r\n\r\n"), "HTTP/1.1 204"),
            (format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"), "HTTP/1.1 403"),
        ] {
            let answer = ask(strict.addr, &request).await;
            assert!(answer.starts_with(status), "{request:?} -> {answer}");
            assert!(!answer.contains("origin"), "the origin was reached: {answer}");
            assert_eq!(refusals.recv().await.unwrap().reason, Refusal::Loopback);
        }
        let metadata = ask(open.addr, "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n").await;
        assert!(
            metadata.starts_with("HTTP/1.1 204") && metadata.to_ascii_lowercase().contains("x-recfleet-refused: metadata"),
            "{metadata}"
        );
    }

    #[tokio::test]
    async fn a_tunnel_carries_bytes_both_ways() {
        let port = origin().await;
        let proxy = Egress::start(NetworkPolicy::LOCAL).await.unwrap();
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n").as_bytes()).await.unwrap();
        let mut buf = vec![0; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut rest = String::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_string(&mut rest)).await.unwrap().unwrap();
        assert!(rest.ends_with("origin"), "{rest}");
    }
}
