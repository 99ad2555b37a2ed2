//! Watching a meeting in progress for its end: the recipe's `ended_when` becoming visible, the
//! page logging `RECFLEET_END`, the page crashing or closing, the maximum duration, a stop
//! request, or the capture dying. Each end has its sub-code.
//!
//! This module decides *that* and *why* the recording ends; it must not stop anything itself.

use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::inspector::{EnableParams as InspectorEnable, EventTargetCrashed as EventRendererCrashed};
use chromiumoxide::cdp::browser_protocol::target::{EventTargetCrashed, EventTargetDestroyed};
use chromiumoxide::{Browser, Page};
use futures::StreamExt;
use recfleet_proto::{Recipe, SubCode};
use tokio_util::sync::CancellationToken;

use crate::capture::Capture;
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
    fn new(sub_code: SubCode, detail: impl Into<String>) -> Self {
        Self { sub_code, detail: detail.into() }
    }
}

/// What ends a recording besides the page itself.
#[derive(Debug)]
pub struct Limits<'a> {
    pub max_duration: Option<Duration>,
    pub shutdown: &'a CancellationToken,
    /// The sub-code a shutdown means here: a signal, or an API stop under a controller.
    pub stop_code: &'a crate::record::StopCode,
    /// Set (with the reason) when the disk cannot take more.
    pub disk_full: tokio::sync::watch::Receiver<Option<String>>,
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

/// Resolves when the meeting is over for the bot.
pub async fn until_end(browser: &Browser, page: &Page, recipe: Option<&Recipe>, capture: &mut Capture, limits: Limits<'_>) -> End {
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
    let max = async {
        match limits.max_duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(max);
    let js = page_js::probe(Target::None, None, recipe.and_then(|r| r.ended_when.as_deref()));
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silent = 0u32;
    let mut disk_full = limits.disk_full.clone();
    loop {
        tokio::select! {
            Ok(reason) = disk_full.wait_for(Option::is_some) => {
                return End::new(SubCode::DiskFull, reason.clone().unwrap_or_default());
            }
            _ = limits.shutdown.cancelled() => return End::new(limits.stop_code.get(), "asked to stop"),
            _ = &mut max => {
                let secs = limits.max_duration.map_or(0, |d| d.as_secs());
                return End::new(SubCode::MaxDuration, format!("reached max_duration_secs={secs}"));
            }
            Some(e) = crashed.next() => {
                return End::new(SubCode::PageCrashed, format!("the page's renderer crashed ({}, code {})", e.status, e.error_code));
            }
            Some(_) = renderer_crashed.next() => {
                return End::new(SubCode::PageCrashed, "the page's renderer crashed");
            }
            Some(_) = destroyed.next() => return End::new(SubCode::PageClosed, "the meeting page closed"),
            errors = capture.exited() => return End::new(SubCode::CaptureFailed, format!("ffmpeg stopped by itself: {errors}")),
            _ = tick.tick() => {
                match tokio::time::timeout(PROBE_TIMEOUT, page.evaluate(js.as_str())).await {
                    Ok(Ok(result)) => {
                        silent = 0;
                        let probe: Probe = result.into_value().unwrap_or_default();
                        if probe.ended {
                            return End::new(SubCode::MeetingEnded, "the recipe's ended_when is visible");
                        }
                        if probe.end_requested {
                            return End::new(SubCode::MeetingEnded, "the page logged RECFLEET_END");
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
                    return End::new(SubCode::PageCrashed, format!("the page stopped answering ({silent} probes in a row)"));
                }
            }
        }
    }
}
