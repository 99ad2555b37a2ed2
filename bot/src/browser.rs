//! Chromium: launched through `std::process` on the bot's display and audio sink, then driven
//! over the DevTools protocol with chromiumoxide.
//!
//! Readiness is the "DevTools listening on ws://…" line on Chromium's stderr; the endpoint
//! listens on loopback only and on a port Chromium picks. The page is found by polling
//! `Browser::pages` (calling `fetch_targets` after `connect` makes `goto` hang, see
//! FIELD-NOTES). This module owns the browser process and the CDP connection; what to do on the
//! page is `join` and `watch`'s business.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::error::CdpError;
use chromiumoxide::{Browser, Handler, Page};
use futures::StreamExt;

use crate::child::{describe_exit, ChildError, Supervised};

/// Debian's real Chromium binary; `/usr/bin/chromium` is a wrapper that adds flags and hides
/// the pid.
pub const CHROMIUM_BIN: &str = "/usr/lib/chromium/chromium";
const PAGE_POLL: Duration = Duration::from_millis(25);

/// What Chromium needs to know to start.
#[derive(Debug, Clone)]
pub struct BrowserConfig {
    pub binary: PathBuf,
    pub width: u32,
    pub height: u32,
    pub user_data_dir: PathBuf,
    /// `/dev/shm` is too small for Chromium's shared memory (Fargate's cannot be sized; Docker's
    /// default is 64 MB): it uses files in /tmp instead.
    pub small_shm: bool,
    /// The egress proxy every request goes through (`egress`); loopback included.
    pub proxy: std::net::SocketAddr,
}

/// Below this, Chromium's renderer can run out of shared memory mid-meeting and crash.
pub const MIN_SHM_BYTES: u64 = 512 * 1024 * 1024;

/// Whether `/dev/shm` holds less than `MIN_SHM_BYTES` (or cannot be read).
pub fn shm_is_small() -> bool {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes into the struct it is given; the path is a NUL-terminated literal.
    let ok = unsafe { libc::statvfs(c"/dev/shm".as_ptr(), &mut st) } == 0;
    !ok || (st.f_blocks as u64).saturating_mul(st.f_frsize as u64) < MIN_SHM_BYTES
}

/// Pure: Chromium's command line.
pub fn chromium_args(cfg: &BrowserConfig) -> Vec<String> {
    let mut args: Vec<String> = [
        // Root in a container: the sandbox needs user namespaces the host may not give.
        "--no-sandbox",
        // A closed network: no calls home, or Chromium stalls trying.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--no-default-browser-check",
        "--disable-default-apps",
        "--disable-extensions",
        "--password-store=basic",
        "--use-mock-keychain",
        // Recording: the page fills the screen, plays sound, and is never throttled.
        "--kiosk",
        "--window-position=0,0",
        "--hide-scrollbars",
        "--noerrdialogs",
        "--disable-infobars",
        "--disable-session-crashed-bubble",
        "--disable-translate",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--disable-renderer-backgrounding",
        "--disable-background-timer-throttling",
        "--disable-backgrounding-occluded-windows",
        // WebRTC meetings on a closed network: loopback candidates, no mDNS.
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns,Translate,MediaRouter,OptimizationHints",
        // DevTools: loopback only, a port Chromium picks and names on stderr.
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "--lang=en-US",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Every request through the bot's egress proxy, which checks where it goes; `<-loopback>`
    // takes away Chromium's implicit bypass of localhost, so loopback is checked too.
    args.push(format!("--proxy-server=http://{}", cfg.proxy));
    args.push("--proxy-bypass-list=<-loopback>".into());
    args.push(format!("--window-size={},{}", cfg.width, cfg.height));
    args.push(format!("--user-data-dir={}", cfg.user_data_dir.display()));
    if cfg.small_shm {
        args.push("--disable-dev-shm-usage".into());
    }
    args.push("about:blank".into());
    args
}

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error(transparent)]
    Child(#[from] ChildError),
    #[error("cannot connect to Chromium's DevTools at {url}: {source}")]
    Connect { url: String, source: chromiumoxide::error::CdpError },
    #[error("Chromium opened no page within {0:?}")]
    NoPage(Duration),
    #[error("DevTools call {call} failed: {source}")]
    Cdp { call: &'static str, source: chromiumoxide::error::CdpError },
}

/// A running Chromium, its CDP connection and the one page the bot records.
#[derive(Debug)]
pub struct Chromium {
    pub child: Supervised,
    pub browser: Browser,
    pub page: Page,
    handler: tokio::task::JoinHandle<()>,
    /// Set, with the reason, once the DevTools connection is broken (the browser died).
    connection_lost: tokio::sync::watch::Receiver<Option<String>>,
}

impl Chromium {
    /// Starts Chromium on `display`, playing into `pulse_server`'s `sink`.
    pub async fn start(
        cfg: &BrowserConfig,
        display: &str,
        pulse_server: &str,
        sink: &str,
        ready_within: Duration,
    ) -> Result<Self, BrowserError> {
        let mut cmd = Command::new(&cfg.binary);
        cmd.args(chromium_args(cfg))
            .env("DISPLAY", display)
            .env("PULSE_SERVER", pulse_server)
            .env("PULSE_SINK", sink)
            .env("HOME", &cfg.user_data_dir)
            .env_remove("DBUS_SESSION_BUS_ADDRESS");
        let (tx, rx) = mpsc::channel::<String>();
        let hook = Box::new(move |line: &str| {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        });
        let mut child = Supervised::spawn("chromium", cmd, Some(hook))?;
        let started = Instant::now();
        let ws_url = loop {
            match rx.try_recv() {
                Ok(url) => break url,
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => {
                    let status = child.wait_exit(Duration::from_millis(500)).await;
                    return Err(ChildError::ExitedEarly {
                        name: "chromium",
                        status: status.map(describe_exit).unwrap_or_else(|| "stderr closed".into()),
                        detail: "no DevTools endpoint was announced".into(),
                    }
                    .into());
                }
            }
            if let Some(status) = child.try_exit() {
                return Err(ChildError::ExitedEarly {
                    name: "chromium",
                    status: describe_exit(status),
                    detail: "see the bot's debug log for its stderr".into(),
                }
                .into());
            }
            if started.elapsed() > ready_within {
                return Err(ChildError::NotReady {
                    name: "chromium",
                    waited_ms: started.elapsed().as_millis(),
                    detail: "no \"DevTools listening on\" line".into(),
                }
                .into());
            }
            tokio::time::sleep(PAGE_POLL).await;
        };
        let (browser, handler) = Browser::connect(ws_url.clone()).await.map_err(|source| BrowserError::Connect { url: ws_url, source })?;
        let (lost_tx, connection_lost) = tokio::sync::watch::channel(None);
        let handler = tokio::spawn(drive(handler, lost_tx));
        let page = loop {
            let pages = browser.pages().await.map_err(|source| BrowserError::Cdp { call: "pages", source })?;
            if let Some(page) = pages.into_iter().next() {
                break page;
            }
            if started.elapsed() > ready_within {
                handler.abort();
                return Err(BrowserError::NoPage(ready_within));
            }
            tokio::time::sleep(PAGE_POLL).await;
        };
        let chromium = Self { child, browser, page, handler, connection_lost };
        chromium.fix_viewport(cfg.width, cfg.height).await?;
        tracing::debug!(ready_ms = started.elapsed().as_millis() as u64, "chromium ready");
        Ok(chromium)
    }

    /// Kiosk mode on a bare X server leaves the viewport a pixel short of the window (1279x719
    /// for 1280x720); the capture covers the whole screen, so pin the viewport to it.
    async fn fix_viewport(&self, width: u32, height: u32) -> Result<(), BrowserError> {
        let size: (u32, u32) = self
            .page
            .evaluate("[window.innerWidth, window.innerHeight]")
            .await
            .and_then(|r| r.into_value().map_err(Into::into))
            .map_err(|source| BrowserError::Cdp { call: "Runtime.evaluate(viewport)", source })?;
        if size != (width, height) {
            tracing::debug!(got = ?size, want = ?(width, height), "pinning the viewport");
            let params = SetDeviceMetricsOverrideParams::new(width as i64, height as i64, 1.0, false);
            self.page.execute(params).await.map_err(|source| BrowserError::Cdp { call: "Emulation.setDeviceMetricsOverride", source })?;
        }
        Ok(())
    }

    /// Set, with the reason, once the DevTools connection breaks: a browser killed outright
    /// breaks it at once, before its exit can be read.
    pub fn connection_lost(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.connection_lost.clone()
    }

    /// Stops a browser that is being replaced: no polite close (it is dead or its page is),
    /// SIGTERM so it takes its helpers with it, SIGKILL after `grace`.
    pub async fn discard(mut self, grace: Duration) {
        self.handler.abort();
        let status = self.child.stop(libc::SIGTERM, grace).await;
        tracing::debug!(status = %describe_exit(status), "discarded the lost browser");
    }

    /// Closes the browser politely, then makes sure the process is gone.
    pub async fn shutdown(mut self, grace: Duration) {
        match tokio::time::timeout(grace, self.browser.close()).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::debug!(error = %err, "Browser.close failed; signalling instead"),
            Err(_) => tracing::debug!("Browser.close timed out; signalling instead"),
        }
        if self.child.wait_exit(grace).await.is_none() {
            self.child.stop(libc::SIGTERM, grace).await;
        }
        self.handler.abort();
    }
}

/// Polls chromiumoxide's handler. Its stream does not end when the connection does (a closed
/// socket leaves it pending, FIELD-NOTES), so a WebSocket error is the one sign of a dead browser
/// that arrives here: it is passed on through `lost`.
async fn drive(mut handler: Handler, lost: tokio::sync::watch::Sender<Option<String>>) {
    while let Some(event) = handler.next().await {
        match event {
            Err(CdpError::Ws(err)) => {
                tracing::debug!(error = %err, "devtools connection broke");
                report_lost(&lost, || format!("the DevTools connection broke ({err})"));
            }
            // Chromium 156 sends events this CDP revision cannot parse; those are harmless.
            Err(err) => tracing::trace!(error = %err, "devtools handler"),
            Ok(()) => {}
        }
    }
    report_lost(&lost, || "the DevTools connection closed".into());
    tracing::debug!("devtools connection closed");
}

/// The first reason given wins; later ones are the same death seen again.
fn report_lost(lost: &tokio::sync::watch::Sender<Option<String>>, reason: impl FnOnce() -> String) {
    lost.send_if_modified(|current| {
        if current.is_some() {
            return false;
        }
        *current = Some(reason());
        true
    });
}

/// Where Chromium keeps its profile for this bot. Each restart of the browser (`generation`
/// counts them from 0) gets a fresh one: the dead browser's lock and crash flags stay behind.
pub fn profile_dir(runtime_dir: &Path, generation: u32) -> PathBuf {
    match generation {
        0 => runtime_dir.join("chromium-profile"),
        n => runtime_dir.join(format!("chromium-profile-{n}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BrowserConfig {
        BrowserConfig {
            binary: CHROMIUM_BIN.into(),
            width: 1280,
            height: 720,
            user_data_dir: "/run/p".into(),
            small_shm: false,
            proxy: "127.0.0.1:3128".parse().unwrap(),
        }
    }

    #[test]
    fn args_carry_the_closed_network_flags() {
        let args = chromium_args(&cfg());
        for flag in [
            "--no-sandbox",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
        ] {
            assert!(args.iter().any(|a| a == flag), "missing {flag}");
        }
    }

    #[test]
    fn a_small_dev_shm_moves_shared_memory_to_tmp() {
        assert!(!chromium_args(&cfg()).iter().any(|a| a == "--disable-dev-shm-usage"));
        let small = BrowserConfig { small_shm: true, ..cfg() };
        assert!(chromium_args(&small).iter().any(|a| a == "--disable-dev-shm-usage"));
    }

    #[test]
    fn devtools_listens_on_loopback_only() {
        let args = chromium_args(&cfg());
        assert!(args.contains(&"--remote-debugging-address=127.0.0.1".to_string()));
        assert!(args.contains(&"--remote-debugging-port=0".to_string()));
        assert!(!args.iter().any(|a| a.contains("0.0.0.0")));
    }

    #[test]
    fn window_and_profile_follow_the_config() {
        let args = chromium_args(&cfg());
        assert!(args.contains(&"--window-size=1280,720".to_string()));
        assert!(args.contains(&"--user-data-dir=/run/p".to_string()));
        assert!(args.contains(&"--kiosk".to_string()));
        assert_eq!(args.last().unwrap(), "about:blank");
    }
}
