//! Watching a meeting in progress for its end: the recipe's `ended_when` becoming visible, the
//! page logging `RECFLEET_END`, the page closing, the maximum duration, or a stop request. Each
//! end has its sub-code. A lost browser (its process gone, its renderer crashed, its page
//! frozen) and a dead encoder are not ends here: the caller may rejoin or restart.
//!
//! This module decides *that* and *why* the recording ends; it must not stop anything itself.

use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::inspector::{EnableParams as InspectorEnable, EventTargetCrashed as EventRendererCrashed};
use chromiumoxide::cdp::browser_protocol::target::{EventTargetCrashed, EventTargetDestroyed};
use futures::StreamExt;
use recfleet_proto::{Recipe, SubCode};
use tokio_util::sync::CancellationToken;

use crate::browser::Chromium;
use crate::capture::Capture;
use crate::child::describe_exit;
use crate::config::WATCH_INTERVAL;
use crate::page_js::{self, Probe, Target};

/// A probe of a live meeting page must answer this fast.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Consecutive unanswered probes (about 30 s) after which a page that is alive but frozen
/// counts as crashed. A busy page (a long script, a GC storm) is not ended early: a real crash
/// is reported by Chromium's `Target.targetCrashed` at once.
const MAX_SILENT_PROBES: u32 = 15;

/// Why the recording ended, and the details a person would want.
#[derive(Debug, Clone, PartialEq)]
pub struct End {
    pub sub_code: SubCode,
    pub detail: String,
}

impl End {
    pub fn new(sub_code: SubCode, detail: impl Into<String>) -> Self {
        Self { sub_code, detail: detail.into() }
    }
}

/// What the watch saw: the end of the recording, or a part lost while the meeting may go on
/// (the caller decides whether to rejoin or restart).
#[derive(Debug, Clone, PartialEq)]
pub enum Watched {
    End(End),
    BrowserLost {
        reason: String,
    },
    /// FFmpeg exited by itself; `reason` holds its last errors.
    CaptureLost {
        reason: String,
    },
}

impl Watched {
    fn lost(reason: impl Into<String>) -> Self {
        Watched::BrowserLost { reason: reason.into() }
    }

    fn end(sub_code: SubCode, detail: impl Into<String>) -> Self {
        Watched::End(End::new(sub_code, detail))
    }
}

/// What ends a recording besides the page itself.
#[derive(Debug)]
pub struct Limits<'a> {
    /// When `max_duration` runs out (counted from the first frame, across rejoins).
    pub max_until: Option<(tokio::time::Instant, Duration)>,
    pub shutdown: &'a CancellationToken,
    /// The sub-code a shutdown means here: a signal, or an API stop under a controller.
    pub stop_code: &'a crate::record::StopCode,
    /// Set (with the reason) when the disk cannot take more.
    pub disk_full: tokio::sync::watch::Receiver<Option<String>>,
}

impl Limits<'_> {
    /// Resolves when something other than the page ends the recording: a stop, the disk, the
    /// maximum duration. Also watched while the bot rejoins.
    pub async fn reached(&self) -> End {
        let mut disk_full = self.disk_full.clone();
        let max = async {
            match self.max_until {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Ok(reason) = disk_full.wait_for(Option::is_some) => End::new(SubCode::DiskFull, reason.clone().unwrap_or_default()),
            _ = self.shutdown.cancelled() => End::new(self.stop_code.get(), "asked to stop"),
            _ = max => {
                let secs = self.max_until.map_or(0, |(_, d)| d.as_secs());
                End::new(SubCode::MaxDuration, format!("reached max_duration_secs={secs}"))
            }
        }
    }
}

/// The events of one kind that `keep` accepts; a stream that never yields when the listener
/// cannot be had (the probes still catch the end, later).
fn listen<T>(
    listener: chromiumoxide::Result<chromiumoxide::listeners::EventStream<T>>,
    what: &str,
    keep: impl Fn(&T) -> bool + Send + 'static,
) -> futures::stream::BoxStream<'static, std::sync::Arc<T>>
where
    T: chromiumoxide::cdp::IntoEventKind + Unpin + Send + Sync + 'static,
{
    match listener {
        Ok(stream) => stream.filter(move |e| std::future::ready(keep(e))).boxed(),
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for {what}; relying on probes");
            futures::stream::pending().boxed()
        }
    }
}

/// The first reason the DevTools connection gave for breaking.
async fn connection_broke(lost: &mut tokio::sync::watch::Receiver<Option<String>>) -> String {
    match lost.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone().unwrap_or_default(),
        // The handler task is gone without a word: so is the connection.
        Err(_) => "the DevTools connection closed".into(),
    }
}

/// Resolves when the meeting is over for the bot, when its browser is lost (the browser
/// process exits, the DevTools connection breaks, the renderer crashes, or the page stops
/// answering), or when its encoder dies.
pub async fn until_end(chromium: &mut Chromium, recipe: Option<&Recipe>, capture: &mut Capture, limits: &Limits<'_>) -> Watched {
    let (browser, page) = (&chromium.browser, &chromium.page);
    let target = page.target_id().clone();
    let mut crashed = listen(browser.event_listener::<EventTargetCrashed>().await, "page crashes", {
        let target = target.clone();
        move |e: &EventTargetCrashed| e.target_id == target
    });
    let mut destroyed = listen(browser.event_listener::<EventTargetDestroyed>().await, "the page closing", move |e| e.target_id == target);
    // The page's own session reports its renderer crashing once the Inspector domain is on.
    let mut renderer_crashed = match page.execute(InspectorEnable::default()).await {
        Ok(_) => listen(page.event_listener::<EventRendererCrashed>().await, "renderer crashes", |_| true),
        Err(err) => {
            tracing::warn!(error = %err, "cannot enable the Inspector domain; relying on probes");
            futures::stream::pending().boxed()
        }
    };
    let mut lost = chromium.connection_lost();
    let js = page_js::probe(Target::None, None, recipe.and_then(|r| r.ended_when.as_deref()));
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silent = 0u32;
    loop {
        tokio::select! {
            end = limits.reached() => return Watched::End(end),
            Some(e) = crashed.next() => {
                return Watched::lost(format!("the page's renderer crashed ({}, code {})", e.status, e.error_code));
            }
            Some(_) = renderer_crashed.next() => return Watched::lost("the page's renderer crashed"),
            Some(_) = destroyed.next() => return Watched::end(SubCode::PageClosed, "the meeting page closed"),
            reason = connection_broke(&mut lost) => return Watched::lost(reason),
            errors = capture.exited() => return Watched::CaptureLost { reason: format!("ffmpeg stopped by itself: {errors}") },
            _ = tick.tick() => {
                if let Some(status) = chromium.child.try_exit() {
                    return Watched::lost(format!("the browser process exited ({})", describe_exit(status)));
                }
                // A probe of a dead browser would wait out its timeout: the broken connection
                // says so at once.
                let answer = tokio::select! {
                    answer = tokio::time::timeout(PROBE_TIMEOUT, page.evaluate(js.as_str())) => answer,
                    reason = connection_broke(&mut lost) => return Watched::lost(reason),
                };
                match answer {
                    Ok(Ok(result)) => {
                        silent = 0;
                        let probe: Probe = result.into_value().unwrap_or_default();
                        if probe.ended {
                            return Watched::end(SubCode::MeetingEnded, "the recipe's ended_when is visible");
                        }
                        if probe.end_requested {
                            return Watched::end(SubCode::MeetingEnded, "the page logged RECFLEET_END");
                        }
                        if probe.error_page {
                            // The meeting is gone from the page: rejoin it, as after a crash.
                            return Watched::lost("the browser's error page replaced the meeting (a refused or failed load)");
                        }
                    }
                    Ok(Err(err)) => {
                        silent += 1;
                        tracing::debug!(error = %err, silent, "probe failed");
                    }
                    Err(_) => {
                        silent += 1;
                        tracing::debug!(silent, "probe timed out");
                    }
                }
                if silent >= MAX_SILENT_PROBES {
                    return Watched::lost(format!("the page stopped answering ({silent} probes in a row)"));
                }
            }
        }
    }
}
