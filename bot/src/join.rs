//! Getting into the meeting: load the page, run the recipe's steps as a person would (real key
//! events, real mouse clicks), sit out the waiting room, and retry the whole attempt with a
//! reload and backoff when the page fails or a step times out.
//!
//! This module ends when the bot is in the call. It must not start the capture: recording
//! begins only after `join` returns, never in the lobby or the waiting room.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use chromiumoxide::cdp::browser_protocol::input::{DispatchKeyEventParams, DispatchKeyEventType};
use chromiumoxide::layout::Point;
use chromiumoxide::Page;
use recfleet_proto::recipe::substitute;
use recfleet_proto::{EventKind, Recipe, Step};

use crate::config::{JOIN_RETRY_MIN_DELAY, PAGE_LOAD_TIMEOUT};
use crate::journal::Journal;
use crate::page_js::{self, NavigationStatus, Probe, Target};

/// How often a waiting step asks the page again.
const STEP_POLL: Duration = Duration::from_millis(100);
/// One probe may take this long before the page counts as unresponsive.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the meeting page did not load from {url}: {reason}")]
    LoadFailed { url: String, reason: String },
    #[error("step {index} ({kind} {selector:?}) timed out after {secs} s")]
    StepTimedOut { index: usize, kind: &'static str, selector: String, secs: u64 },
    #[error("the page stopped answering: {0}")]
    PageUnresponsive(String),
    #[error("nobody admitted the bot from the waiting room within {0} s")]
    WaitingRoomTimeout(u64),
    #[error("the meeting had already ended")]
    MeetingEnded,
    #[error("the recipe does not fit this browser: {0}")]
    BadSelectors(String),
    #[error("the join outlasted its deadline of {0} s (--joining-deadline-secs)")]
    DeadlineExceeded(u64),
}

impl JoinError {
    /// A reload may fix these; the others would fail the same way again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, JoinError::LoadFailed { .. } | JoinError::StepTimedOut { .. } | JoinError::PageUnresponsive(_))
    }
}

/// Who the bot is in the meeting.
#[derive(Debug, Clone)]
pub struct Identity {
    pub bot_name: String,
    pub recording_id: String,
}

/// Makes sure every selector of the recipe compiles in this browser, before any attempt.
pub async fn check_selectors(page: &Page, recipe: &Recipe) -> Result<(), JoinError> {
    let bad: Vec<(String, String)> = evaluate(page, &page_js::compile_selectors(&recipe.selectors())).await?;
    if bad.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = bad.into_iter().map(|(place, msg)| format!("{place}: {msg}")).collect();
    Err(JoinError::BadSelectors(list.join("; ")))
}

/// Joins with up to `attempts` attempts, each a fresh load of `url`.
pub async fn join(
    page: &Page,
    url: &str,
    recipe: Option<&Recipe>,
    who: &Identity,
    attempts: u32,
    journal: &Journal,
) -> Result<(), JoinError> {
    let attempt = AtomicU32::new(0);
    let once = || async {
        let n = attempt.fetch_add(1, Ordering::SeqCst) + 1;
        let result = join_once(page, url, recipe, who, n, journal).await;
        if let Err(err) = &result {
            journal.record(EventKind::JoinAttemptFailed { attempt: n, error: err.to_string() });
        }
        result
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(JOIN_RETRY_MIN_DELAY)
        .with_factor(2.0)
        .with_max_times(attempts.saturating_sub(1) as usize)
        .with_jitter();
    once.retry(backoff)
        .sleep(tokio::time::sleep)
        .when(JoinError::is_retryable)
        .notify(|err, delay| tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "join attempt failed"))
        .await?;
    journal.record(EventKind::Joined);
    Ok(())
}

async fn join_once(
    page: &Page,
    url: &str,
    recipe: Option<&Recipe>,
    who: &Identity,
    attempt: u32,
    journal: &Journal,
) -> Result<(), JoinError> {
    load(page, url).await?;
    journal.record(EventKind::PageLoaded { url: url.to_string(), attempt });
    let Some(recipe) = recipe else { return Ok(()) };
    let mut gate = Gate { recipe, journal, announced: false };
    for (index, step) in recipe.steps.iter().enumerate() {
        let step_started = Instant::now();
        let probe = gate.wait_for(page, target_of(step), index, step).await?;
        let found_ms = step_started.elapsed().as_millis() as u64;
        act(page, step, &probe, who).await?;
        tracing::debug!(step = index, kind = step.kind(), found_ms, done_ms = step_started.elapsed().as_millis() as u64, "join step");
    }
    // The last step may land in a waiting room that shows a moment later: sit it out.
    if recipe.waiting_room_when.is_some() {
        gate.wait_for(page, Target::None, recipe.steps.len(), &Step::WaitFor { selector: String::new(), timeout_secs: None }).await?;
    }
    Ok(())
}

/// What a step waits for before it acts.
fn target_of(step: &Step) -> Target<'_> {
    match step {
        Step::Fill { selector, .. } | Step::Click { selector, .. } => Target::Clickable(selector),
        Step::WaitFor { selector, .. } => Target::Visible(selector),
    }
}

/// Does what a step says to the element its probe found.
async fn act(page: &Page, step: &Step, probe: &Probe, who: &Identity) -> Result<(), JoinError> {
    match step {
        Step::Click { .. } => click(page, probe).await,
        Step::Fill { text, .. } => {
            click(page, probe).await?;
            evaluate::<bool>(page, page_js::SELECT_FOCUSED_TEXT).await?;
            type_text(page, &substitute(text, &who.bot_name, &who.recording_id)).await
        }
        Step::WaitFor { .. } => Ok(()),
    }
}

/// Leaves the call with the recipe's `leave` steps, as a person would. The caller bounds it in
/// time: a page that spins in its click handler never answers the click.
pub async fn leave(page: &Page, recipe: &Recipe, who: &Identity) -> Result<(), JoinError> {
    for (index, step) in recipe.leave.iter().enumerate() {
        let (limit, started) = (Duration::from_secs(step.timeout_secs()), Instant::now());
        let js = page_js::probe(target_of(step), None, None);
        let probe = loop {
            let probe: Probe = evaluate(page, &js).await?;
            if probe.target_found() {
                break probe;
            }
            if started.elapsed() > limit {
                let (kind, selector) = (step.kind(), step.selector().to_string());
                return Err(JoinError::StepTimedOut { index, kind, selector, secs: limit.as_secs() });
            }
            tokio::time::sleep(STEP_POLL).await;
        };
        act(page, step, &probe, who).await?;
    }
    Ok(())
}

/// Loads the meeting page and tells an error page (HTTP 4xx/5xx, a network error) from it.
async fn load(page: &Page, url: &str) -> Result<(), JoinError> {
    let failed = |reason: String| JoinError::LoadFailed { url: url.to_string(), reason };
    match tokio::time::timeout(PAGE_LOAD_TIMEOUT, page.goto(url)).await {
        Err(_) => return Err(failed(format!("no load event within {} s", PAGE_LOAD_TIMEOUT.as_secs()))),
        Ok(Err(err)) => return Err(failed(err.to_string())),
        Ok(Ok(_)) => {}
    }
    let nav: NavigationStatus = evaluate(page, page_js::NAVIGATION_STATUS).await?;
    if nav.href.starts_with("chrome-error://") {
        return Err(failed("network error (Chromium showed its error page)".into()));
    }
    if nav.status >= 400 {
        return Err(failed(format!("HTTP {}", nav.status)));
    }
    Ok(())
}

/// Waits for step targets while honouring the standing conditions: the waiting room suspends a
/// step's clock (it has its own), and an ended meeting ends the join.
struct Gate<'a> {
    recipe: &'a Recipe,
    journal: &'a Journal,
    announced: bool,
}

impl Gate<'_> {
    async fn wait_for(&mut self, page: &Page, target: Target<'_>, index: usize, step: &Step) -> Result<Probe, JoinError> {
        let step_limit = Duration::from_secs(step.timeout_secs());
        let room_limit = Duration::from_secs(self.recipe.waiting_room_timeout_secs);
        let js = page_js::probe(target, self.recipe.waiting_room_when.as_deref(), self.recipe.ended_when.as_deref());
        let mut step_started = Instant::now();
        let mut room_started: Option<Instant> = None;
        loop {
            let probe: Probe = evaluate(page, &js).await?;
            if probe.ended || probe.end_requested {
                return Err(JoinError::MeetingEnded);
            }
            if probe.waiting {
                let since = *room_started.get_or_insert_with(Instant::now);
                if !self.announced {
                    self.announced = true;
                    self.journal.record(EventKind::WaitingRoom);
                }
                if since.elapsed() > room_limit {
                    return Err(JoinError::WaitingRoomTimeout(room_limit.as_secs()));
                }
            } else {
                if room_started.take().is_some() {
                    // Admitted: the step's clock starts again.
                    step_started = Instant::now();
                }
                let done = match target {
                    Target::None => true,
                    _ => probe.target_found(),
                };
                if done {
                    return Ok(probe);
                }
                if step_started.elapsed() > step_limit {
                    return Err(JoinError::StepTimedOut {
                        index,
                        kind: step.kind(),
                        selector: step.selector().to_string(),
                        secs: step_limit.as_secs(),
                    });
                }
            }
            tokio::time::sleep(STEP_POLL).await;
        }
    }
}

async fn click(page: &Page, probe: &Probe) -> Result<(), JoinError> {
    let (x, y) = probe.click_point().ok_or_else(|| JoinError::PageUnresponsive("no point to click".into()))?;
    page.click(Point { x, y }).await.map_err(|e| JoinError::PageUnresponsive(format!("click: {e}")))?;
    Ok(())
}

/// Types `text` into the focused element as real key events, one character at a time, so that
/// the page's `keydown`/`input` handlers run as they would for a person.
async fn type_text(page: &Page, text: &str) -> Result<(), JoinError> {
    for c in text.chars() {
        let key = c.to_string();
        let down = DispatchKeyEventParams::builder()
            .r#type(DispatchKeyEventType::KeyDown)
            .key(key.clone())
            .text(key.clone())
            .unmodified_text(key.clone())
            .build()
            .expect("type is set");
        let up = DispatchKeyEventParams::builder().r#type(DispatchKeyEventType::KeyUp).key(key).build().expect("type is set");
        for event in [down, up] {
            page.execute(event).await.map_err(|e| JoinError::PageUnresponsive(format!("key event: {e}")))?;
        }
    }
    Ok(())
}

/// Evaluates `js` and decodes its value, within `PROBE_TIMEOUT`.
pub async fn evaluate<T: serde::de::DeserializeOwned>(page: &Page, js: &str) -> Result<T, JoinError> {
    let result = tokio::time::timeout(PROBE_TIMEOUT, page.evaluate(js))
        .await
        .map_err(|_| JoinError::PageUnresponsive(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())))?
        .map_err(|e| JoinError::PageUnresponsive(e.to_string()))?;
    result.into_value().map_err(|e| JoinError::PageUnresponsive(format!("unexpected answer: {e}")))
}
