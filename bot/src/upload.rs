//! The uploader: every closed segment goes to the object store at once, in order, while the
//! capture goes on. The capture never waits for it: segments are handed over through a channel
//! and the spool keeps them on disk until the recording is over.
//!
//! Each file's state is appended to a local journal (`upload.jsonl`), so a restarted uploader
//! (`recfleet-bot upload`) resumes where the last one stopped. Failed requests are retried with
//! exponential backoff and jitter for as long as the recording lasts; at the end the backlog
//! drains within a deadline and whatever could not be stored is reported by name. After each
//! stored segment the store's `index.m3u8` (EVENT, then VOD) and `manifest.json` list exactly
//! the segments that are in the store, so the recording is watchable while it goes on.
//!
//! This module moves files to the store and keeps the journal; it must not decide when the
//! recording ends (it only says when its backlog outgrew the disk budget).

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use recfleet_media::{playlist_text, EVENTS, INIT_SEGMENT, MANIFEST, PLAYLIST};
use recfleet_proto::{Manifest, ManifestSegment, UploadStats};
use recfleet_storage::{recording_key, ObjectStore, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::handoff::Control;
use crate::journal::Reporter;

pub const JOURNAL: &str = "upload.jsonl";
/// Backlog the bot may hold on disk while the store is unreachable.
pub const DEFAULT_DISK_BUDGET_MB: u64 = 2048;
/// The recording stops before the spool's file system has less than this free.
pub const DEFAULT_MIN_FREE_MB: u64 = 256;
/// How long the backlog gets to drain once the recording is over.
pub const DEFAULT_DRAIN_SECS: u64 = 30;
const RETRY_MIN_DELAY: Duration = Duration::from_millis(250);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(4);
/// The store's playlist and manifest are rewritten at least every this many stored files
/// while a backlog drains, and whenever the backlog is empty.
const PUBLISH_EVERY: u32 = 5;

/// Where and how much.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    pub store: Store,
    pub recording_id: String,
    pub disk_budget_bytes: u64,
    pub min_free_bytes: u64,
    pub drain_deadline: Duration,
    /// A successor's start: the store's manifest as its predecessor left it, which this
    /// uploader extends rather than replaces.
    pub seed: Option<Manifest>,
    /// A successor's: the segments its predecessor stored after that, listed too.
    pub link: Option<Arc<crate::handoff::HandoffLink>>,
}

/// One line of the journal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
enum JournalLine {
    Closed {
        segment: ManifestSegment,
        /// Unix time in ms, for benchmarks and post-mortems.
        #[serde(default)]
        at_ms: u64,
    },
    Stored {
        name: String,
        lag_ms: Option<u64>,
        #[serde(default)]
        at_ms: u64,
    },
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What an earlier uploader of this folder did, read back from its journal.
#[derive(Debug, Default)]
struct Replayed {
    /// Stored files, in the order they were stored.
    stored: Vec<ManifestSegment>,
    names: HashSet<String>,
}

fn replay(path: &Path) -> Replayed {
    let Ok(text) = std::fs::read_to_string(path) else { return Replayed::default() };
    let mut closed: std::collections::HashMap<String, ManifestSegment> = Default::default();
    let mut out = Replayed::default();
    for line in text.lines() {
        // A line cut short by a crash is the last one; it is skipped.
        match serde_json::from_str::<JournalLine>(line) {
            Ok(JournalLine::Closed { segment, .. }) => {
                closed.insert(segment.name.clone(), segment);
            }
            Ok(JournalLine::Stored { name, .. }) => {
                if let Some(seg) = closed.get(&name) {
                    if out.names.insert(name) {
                        out.stored.push(seg.clone());
                    }
                }
            }
            Err(_) => {}
        }
    }
    out
}

#[derive(Debug)]
struct JournalFile {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl JournalFile {
    fn open(path: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        if let Err(err) = &file {
            tracing::warn!(error = %err, path = %path.display(), "cannot open the upload journal; uploads go on without it");
        }
        Self { path, file: Mutex::new(file.ok()) }
    }

    fn append(&self, line: &JournalLine) {
        let mut text = serde_json::to_string(line).expect("journal lines serialize");
        text.push('\n');
        let mut file = self.file.lock().expect("journal lock");
        if let Some(f) = file.as_mut() {
            if let Err(err) = f.write_all(text.as_bytes()).and_then(|()| f.sync_data()) {
                tracing::warn!(error = %err, path = %self.path.display(), "cannot append to the upload journal");
            }
        }
    }
}

/// A file waiting for the store.
#[derive(Debug, Clone)]
struct Item {
    segment: ManifestSegment,
    closed_at: Instant,
    /// Segments and the init are listed in the store's manifest; the MP4 is not.
    listed: bool,
}

#[derive(Debug, Default)]
struct Progress {
    stats: UploadStats,
    lags: Vec<u64>,
}

impl Progress {
    fn snapshot(&self) -> UploadStats {
        let mut stats = self.stats.clone();
        let mut lags = self.lags.clone();
        lags.sort_unstable();
        let pick = |q: f64| (!lags.is_empty()).then(|| lags[((lags.len() - 1) as f64 * q).round() as usize]);
        stats.lag_ms_p50 = pick(0.5);
        stats.lag_ms_p99 = pick(0.99);
        stats.lag_ms_max = lags.last().copied();
        stats
    }
}

/// The running uploader of one recording.
#[derive(Debug)]
pub struct Uploader {
    dir: PathBuf,
    cfg: UploadConfig,
    tx: mpsc::UnboundedSender<Item>,
    progress: Arc<Mutex<Progress>>,
    journal: Arc<JournalFile>,
    already: HashSet<String>,
    finishing: watch::Sender<Option<Instant>>,
    control: mpsc::UnboundedSender<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl Uploader {
    /// Starts uploading the recording in `dir`. Files its journal says are stored are not sent
    /// again.
    pub fn start(dir: &Path, cfg: UploadConfig, reporter: Arc<dyn Reporter>) -> Uploader {
        let journal_path = dir.join(JOURNAL);
        let earlier = replay(&journal_path);
        let journal = Arc::new(JournalFile::open(journal_path));
        let progress = Arc::new(Mutex::new(Progress::default()));
        progress.lock().expect("progress lock").stats.stored = earlier.stored.len() as u64;
        let (tx, rx) = mpsc::unbounded_channel();
        let (finishing, finishing_rx) = watch::channel(None);
        let mut manifest = cfg.seed.clone().unwrap_or_else(|| Manifest { recording_id: cfg.recording_id.clone(), ..Manifest::default() });
        for seg in &earlier.stored {
            add_to_manifest(&mut manifest, seg);
        }
        let worker = Worker {
            dir: dir.to_path_buf(),
            store: cfg.store.clone(),
            recording_id: cfg.recording_id.clone(),
            journal: journal.clone(),
            progress: progress.clone(),
            reporter,
            manifest,
            finishing: finishing_rx,
            link: cfg.link.clone(),
            seeded: cfg.seed.as_ref().map(|m| m.generations.clone()).unwrap_or_default(),
            paused: false,
        };
        let (control, control_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(tracing::Instrument::in_current_span(worker.run(rx, control_rx)));
        Uploader { dir: dir.to_path_buf(), cfg, tx, progress, journal, already: earlier.names, finishing, control, task }
    }

    /// Where a handoff asks this uploader to stop (or go on) writing the store's manifest.
    pub fn control(&self) -> mpsc::UnboundedSender<Control> {
        self.control.clone()
    }

    /// True when an earlier uploader already stored `name`.
    pub fn is_stored(&self, name: &str) -> bool {
        self.already.contains(name)
    }

    /// Hands a closed segment (or `init.mp4`) over; returns at once.
    pub fn closed(&self, segment: &ManifestSegment) {
        if self.already.contains(&segment.name) {
            return;
        }
        self.journal.append(&JournalLine::Closed { segment: segment.clone(), at_ms: now_ms() });
        self.enqueue(Item { segment: segment.clone(), closed_at: Instant::now(), listed: true });
    }

    fn enqueue(&self, item: Item) {
        {
            let mut p = self.progress.lock().expect("progress lock");
            p.stats.backlog += 1;
            p.stats.backlog_bytes += item.segment.bytes;
            p.stats.peak_backlog = p.stats.peak_backlog.max(p.stats.backlog);
        }
        if self.tx.send(item).is_err() {
            tracing::error!("the uploader stopped early; the file stays on disk");
        }
    }

    pub fn stats(&self) -> UploadStats {
        self.progress.lock().expect("progress lock").snapshot()
    }

    /// Why the recording must stop to protect the disk, if it must: the backlog outgrew the
    /// budget, or the file system is nearly full.
    pub fn disk_check(&self) -> Option<String> {
        let backlog = self.progress.lock().expect("progress lock").stats.backlog_bytes;
        disk_check(&self.dir, backlog, self.cfg.disk_budget_bytes, self.cfg.min_free_bytes)
    }

    /// Sends the last files (`extra`, e.g. the MP4), lets the backlog drain within the
    /// deadline, writes the store's final playlist and manifest, and says what was left.
    pub async fn finish(self, extra: &[&str]) -> UploadStats {
        for name in extra {
            let path = self.dir.join(name);
            match recfleet_media::hash_file(&path) {
                Ok((bytes, sha256)) => {
                    let segment = recfleet_media::describe(name, 0.0, bytes, sha256);
                    self.journal.append(&JournalLine::Closed { segment: segment.clone(), at_ms: now_ms() });
                    self.enqueue(Item { segment, closed_at: Instant::now(), listed: false });
                }
                Err(err) => tracing::warn!(error = %err, file = %path.display(), "cannot read a file to upload"),
            }
        }
        let deadline = Instant::now() + self.cfg.drain_deadline;
        let _ = self.finishing.send(Some(deadline));
        drop(self.tx);
        let backlog = self.progress.lock().expect("progress lock").stats.backlog;
        if backlog > 0 {
            tracing::info!(backlog, deadline_secs = self.cfg.drain_deadline.as_secs(), "draining the upload backlog");
        }
        if let Err(err) = self.task.await {
            tracing::error!(error = %err, "the uploader failed");
        }
        let stats = self.progress.lock().expect("progress lock").snapshot();
        if stats.not_uploaded.is_empty() {
            tracing::info!(stored = stats.stored, lag_ms_p50 = ?stats.lag_ms_p50, "everything is in the store");
        } else {
            tracing::error!(
                left = stats.not_uploaded.len(),
                first = %stats.not_uploaded[0],
                dir = %self.dir.display(),
                "the store did not take everything in time; the rest stays on disk (`recfleet-bot upload` resumes)"
            );
        }
        stats
    }
}

/// Uploads what `dir` holds that its journal says is not stored yet: the segments its playlist
/// lists, then `recording.mp4` when there is one. For a folder a dead bot or an expired drain
/// deadline left behind.
pub async fn resume(
    dir: &Path,
    recording_id: &str,
    settings: &crate::config::UploadSettings,
    min_free_bytes: u64,
) -> Result<UploadStats, crate::RecordError> {
    let opts = recfleet_storage::StoreOptions { path_style: settings.path_style, ..Default::default() };
    let store = Store::open(&settings.store, &opts).await.map_err(|e| crate::RecordError::Store(e.to_string()))?;
    // Extended, not replaced: after a handoff the store's manifest lists the other bot's part.
    let seed = match store.get(&recording_key(recording_id, MANIFEST)).await {
        Ok(Some(bytes)) => serde_json::from_slice::<Manifest>(&bytes).ok(),
        _ => None,
    };
    let cfg = UploadConfig {
        store,
        recording_id: recording_id.to_string(),
        disk_budget_bytes: settings.disk_budget_bytes,
        min_free_bytes,
        drain_deadline: settings.drain_deadline,
        seed,
        link: None,
    };
    let (_, closed) = crate::spool::Spool::reopen(dir, recording_id)
        .map_err(|e| crate::RecordError::OutDir { path: dir.to_path_buf(), reason: e.to_string() })?;
    let uploader = Uploader::start(dir, cfg, Arc::new(crate::journal::Silent));
    let mut sent = 0;
    for seg in &closed {
        if !uploader.is_stored(&seg.name) {
            uploader.closed(seg);
            sent += 1;
        }
    }
    let mp4 = recfleet_media::MP4;
    let extra: &[&str] = if dir.join(mp4).exists() { &[mp4] } else { &[] };
    tracing::info!(dir = %dir.display(), closed = closed.len(), to_send = sent, mp4 = !extra.is_empty(), "resuming the upload");
    Ok(uploader.finish(extra).await)
}

/// Pure except for `statvfs`: the reason to stop, if any.
pub fn disk_check(dir: &Path, backlog_bytes: u64, budget_bytes: u64, min_free_bytes: u64) -> Option<String> {
    const MB: u64 = 1024 * 1024;
    if backlog_bytes > budget_bytes {
        return Some(format!("the upload backlog ({} MB) outgrew the disk budget ({} MB)", backlog_bytes / MB, budget_bytes / MB));
    }
    match free_bytes(dir) {
        Some(free) if free < min_free_bytes => {
            Some(format!("only {} MB free on the spool's disk (minimum {} MB)", free / MB, min_free_bytes / MB))
        }
        _ => None,
    }
}

/// Bytes available to an unprivileged writer on `dir`'s file system.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value for it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and outlives the call; `st` is a valid out pointer.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)]
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Lists a stored file once, segments in number order.
fn add_to_manifest(manifest: &mut Manifest, seg: &ManifestSegment) {
    if recfleet_media::is_init(&seg.name) {
        manifest.add_init(seg.clone());
    } else if recfleet_media::sequence_of(&seg.name).is_some() {
        manifest.segments.retain(|s| s.name != seg.name);
        let at = manifest.segments.partition_point(|s| s.sequence < seg.sequence);
        manifest.segments.insert(at, seg.clone());
    }
}

/// Pure: a predecessor's capture generations, then this bot's, in order of their first segment.
pub fn merge_generations(
    earlier: &[recfleet_proto::CaptureGeneration],
    own: Vec<recfleet_proto::CaptureGeneration>,
) -> Vec<recfleet_proto::CaptureGeneration> {
    let mut all: Vec<_> = earlier.iter().filter(|g| !own.iter().any(|o| o.init == g.init)).cloned().collect();
    all.extend(own);
    all.sort_by_key(|g| g.first_sequence);
    all
}

/// The task that talks to the store.
#[derive(Debug)]
struct Worker {
    dir: PathBuf,
    store: Store,
    recording_id: String,
    journal: Arc<JournalFile>,
    progress: Arc<Mutex<Progress>>,
    reporter: Arc<dyn Reporter>,
    /// What the store holds, as its manifest lists it.
    manifest: Manifest,
    finishing: watch::Receiver<Option<Instant>>,
    /// A successor's: its predecessor's inherited segments.
    link: Option<Arc<crate::handoff::HandoffLink>>,
    /// A successor's: the predecessor's capture generations, as the store's manifest had them.
    seeded: Vec<recfleet_proto::CaptureGeneration>,
    /// A successor owns the store's manifest now: files still go up, the manifest does not.
    paused: bool,
}

fn backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN_DELAY)
        .with_max_delay(RETRY_MAX_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Item>, mut control: mpsc::UnboundedReceiver<Control>) {
        let mut queue: VecDeque<Item> = VecDeque::new();
        let mut delays = backoff();
        let mut failing_since: Option<Instant> = None;
        let mut unpublished = 0u32;
        let mut closed = false;
        loop {
            while let Ok(c) = control.try_recv() {
                self.on_control(c, &mut control).await;
            }
            while let Ok(item) = rx.try_recv() {
                queue.push_back(item);
            }
            if queue.is_empty() && unpublished > 0 {
                match self.publish(false).await {
                    Ok(()) => unpublished = 0,
                    Err(err) => tracing::debug!(error = %err, "cannot update the store's playlist yet"),
                }
            }
            if queue.is_empty() {
                if closed {
                    break;
                }
                tokio::select! {
                    item = rx.recv() => match item {
                        Some(item) => queue.push_back(item),
                        None => closed = true,
                    },
                    Some(c) = control.recv() => self.on_control(c, &mut control).await,
                }
                continue;
            }
            if self.past_deadline() {
                break;
            }
            let item = queue.front().expect("not empty").clone();
            let key = recording_key(&self.recording_id, &item.segment.name);
            match self.store.put_file(&key, &self.dir.join(&item.segment.name)).await {
                Ok(()) => {
                    queue.pop_front();
                    delays = backoff();
                    if let Some(since) = failing_since.take() {
                        tracing::info!(after_secs = since.elapsed().as_secs(), "the store is reachable again");
                    }
                    self.stored(&item);
                    unpublished += 1;
                    // A restarted capture's init is published at once, with the generations:
                    // a recovery must know where its segments begin.
                    let restarted = item.segment.name != INIT_SEGMENT && recfleet_media::is_init(&item.segment.name);
                    if (unpublished >= PUBLISH_EVERY || restarted) && self.publish(false).await.is_ok() {
                        unpublished = 0;
                    }
                }
                Err(err) => {
                    self.progress.lock().expect("progress lock").stats.failed_attempts += 1;
                    if failing_since.is_none() {
                        failing_since = Some(Instant::now());
                        tracing::warn!(error = %err, code = err.code(), file = %item.segment.name, "cannot reach the store; recording goes on to disk and uploads will retry");
                    } else {
                        tracing::debug!(error = %err, file = %item.segment.name, "upload retry failed");
                    }
                    let delay = delays.next().unwrap_or(RETRY_MAX_DELAY);
                    self.sleep_until_deadline(delay).await;
                }
            }
        }
        // Whatever is left could not be stored in time.
        while let Ok(item) = rx.try_recv() {
            queue.push_back(item);
        }
        let left: Vec<String> = queue.iter().map(|i| i.segment.name.clone()).collect();
        let complete = left.is_empty();
        // The final playlist and manifest, retried like the files (bounded by the deadline).
        let mut delays = backoff();
        loop {
            match self.publish(complete).await {
                Ok(()) => break,
                Err(err) if self.past_deadline() => {
                    tracing::warn!(error = %err, "cannot write the store's final playlist and manifest");
                    break;
                }
                Err(_) => self.sleep_until_deadline(delays.next().unwrap_or(RETRY_MAX_DELAY)).await,
            }
        }
        self.progress.lock().expect("progress lock").stats.not_uploaded = left;
    }

    /// A handoff's request: the last manifest this bot writes (retried once), then no upload
    /// until the request is sent (`Go`), so the segments stored after it are reported after
    /// it; or the manifest back in this bot's hands.
    async fn on_control(&mut self, c: Control, control: &mut mpsc::UnboundedReceiver<Control>) {
        match c {
            Control::Flush(answer) => {
                let mut written = self.publish(false).await;
                if let Err(err) = &written {
                    tracing::warn!(error = %err, "cannot write the store's manifest before the handoff; retrying once");
                    written = self.publish(false).await;
                }
                if let Err(err) = written {
                    tracing::warn!(error = %err, "the store did not take the manifest: no handoff");
                    let _ = answer.send(None);
                    return;
                }
                self.paused = true;
                if answer.send(Some(self.manifest.segments.last().map_or(0, |s| s.sequence))).is_err() {
                    self.paused = false;
                    return;
                }
                match tokio::time::timeout(crate::handoff::HOLD_TIMEOUT, control.recv()).await {
                    Ok(Some(Control::Resume)) => self.paused = false,
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => tracing::warn!("the handoff request was not confirmed; uploading on"),
                }
            }
            Control::Go => {}
            Control::Pause => self.paused = true,
            Control::Resume => self.paused = false,
        }
    }

    fn past_deadline(&self) -> bool {
        self.finishing.borrow().is_some_and(|d| Instant::now() >= d)
    }

    async fn sleep_until_deadline(&self, delay: Duration) {
        let until = match *self.finishing.borrow() {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()).min(delay),
            None => delay,
        };
        let mut finishing = self.finishing.clone();
        // A deadline set while sleeping shortens the sleep.
        tokio::select! {
            _ = tokio::time::sleep(until) => {}
            _ = finishing.changed() => {}
        }
    }

    fn stored(&mut self, item: &Item) {
        let lag_ms = item.closed_at.elapsed().as_millis() as u64;
        self.journal.append(&JournalLine::Stored { name: item.segment.name.clone(), lag_ms: Some(lag_ms), at_ms: now_ms() });
        let stats = {
            let mut p = self.progress.lock().expect("progress lock");
            p.stats.stored += 1;
            p.stats.backlog = p.stats.backlog.saturating_sub(1);
            p.stats.backlog_bytes = p.stats.backlog_bytes.saturating_sub(item.segment.bytes);
            if item.listed && !recfleet_media::is_init(&item.segment.name) {
                p.lags.push(lag_ms);
            }
            p.snapshot()
        };
        tracing::debug!(file = %item.segment.name, lag_ms, backlog = stats.backlog, "stored");
        if item.listed {
            add_to_manifest(&mut self.manifest, &item.segment);
            self.reporter.segment(&item.segment, Some(lag_ms));
        }
        self.reporter.upload(&stats);
    }

    /// Writes the store's playlist, manifest and timeline: segments first, then the files that
    /// name them, so a reader never finds a name without its segment.
    async fn publish(&mut self, complete: bool) -> Result<(), recfleet_storage::StoreError> {
        if self.manifest.segments.is_empty() || self.paused {
            return Ok(());
        }
        if let Some(link) = &self.link {
            for seg in link.inherited() {
                add_to_manifest(&mut self.manifest, &seg);
            }
        }
        self.manifest.complete = complete;
        // When each capture generation started, as the spool noted it (and, for a successor,
        // as its predecessor's manifest had them): recovery keeps the time between them.
        match std::fs::read(self.dir.join(MANIFEST)).map(|b| serde_json::from_slice::<Manifest>(&b)) {
            Ok(Ok(local)) => self.manifest.generations = merge_generations(&self.seeded, local.generations),
            Ok(Err(err)) => tracing::warn!(error = %err, "the spool's manifest does not parse; the store's keeps its generations"),
            Err(err) => tracing::debug!(error = %err, "no spool manifest to take the generations from"),
        }
        let key = |name: &str| recording_key(&self.recording_id, name);
        let manifest = serde_json::to_vec_pretty(&self.manifest).expect("the manifest serializes");
        self.store.put_bytes(&key(MANIFEST), manifest).await?;
        self.store.put_bytes(&key(PLAYLIST), playlist_text(&self.manifest, complete).into_bytes()).await?;
        let events = self.dir.join(EVENTS);
        if events.exists() {
            self.store.put_file(&key(EVENTS), &events).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recfleet_storage::FsStore;

    #[derive(Debug, Default)]
    struct Count(Mutex<Vec<String>>);
    impl Reporter for Count {
        fn segment(&self, segment: &ManifestSegment, _lag: Option<u64>) {
            self.0.lock().unwrap().push(segment.name.clone());
        }
    }

    fn write_segment(dir: &Path, name: &str, body: &[u8]) -> ManifestSegment {
        std::fs::write(dir.join(name), body).unwrap();
        recfleet_media::describe(name, 2.0, body.len() as u64, recfleet_media::sha256_hex(body))
    }

    fn config(store_dir: &Path) -> UploadConfig {
        UploadConfig {
            store: Store::Fs(FsStore::new(store_dir.to_path_buf())),
            recording_id: "r1".into(),
            disk_budget_bytes: 1 << 30,
            min_free_bytes: 0,
            drain_deadline: Duration::from_secs(5),
            seed: None,
            link: None,
        }
    }

    #[tokio::test]
    async fn uploads_in_order_publishes_and_resumes_from_the_journal() {
        let spool = tempfile::tempdir().unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let reporter = Arc::new(Count::default());
        let up = Uploader::start(spool.path(), config(store_dir.path()), reporter.clone());
        up.closed(&write_segment(spool.path(), "init.mp4", b"init"));
        up.closed(&write_segment(spool.path(), "seg_000001.m4s", b"one"));
        let stats = up.finish(&[]).await;
        assert!(stats.not_uploaded.is_empty());
        assert_eq!(stats.stored, 2);
        assert_eq!(*reporter.0.lock().unwrap(), ["init.mp4", "seg_000001.m4s"]);
        let stored = |name: &str| store_dir.path().join("recordings/r1").join(name);
        assert_eq!(std::fs::read(stored("seg_000001.m4s")).unwrap(), b"one");
        let playlist = std::fs::read_to_string(stored("index.m3u8")).unwrap();
        assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");

        // A second uploader of the same folder sends only what the first did not.
        let reporter = Arc::new(Count::default());
        let up = Uploader::start(spool.path(), config(store_dir.path()), reporter.clone());
        assert!(up.is_stored("seg_000001.m4s"));
        up.closed(&write_segment(spool.path(), "seg_000001.m4s", b"one"));
        up.closed(&write_segment(spool.path(), "seg_000002.m4s", b"two"));
        let stats = up.finish(&[]).await;
        assert_eq!(*reporter.0.lock().unwrap(), ["seg_000002.m4s"]);
        assert_eq!(stats.stored, 3);
        let manifest: Manifest = serde_json::from_slice(&std::fs::read(stored("manifest.json")).unwrap()).unwrap();
        let names: Vec<&str> = manifest.segments.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["seg_000001.m4s", "seg_000002.m4s"]);
        assert!(manifest.complete && manifest.init.is_some());
    }

    #[tokio::test]
    async fn an_unwritable_store_leaves_the_files_named_at_the_deadline() {
        let spool = tempfile::tempdir().unwrap();
        let blocker = tempfile::NamedTempFile::new().unwrap();
        // A store root under a regular file cannot be created.
        let mut cfg = config(&blocker.path().join("store"));
        cfg.drain_deadline = Duration::from_millis(600);
        let up = Uploader::start(spool.path(), cfg, Arc::new(crate::journal::Silent));
        up.closed(&write_segment(spool.path(), "seg_000001.m4s", b"one"));
        let stats = up.finish(&[]).await;
        assert_eq!(stats.not_uploaded, ["seg_000001.m4s"]);
        assert!(stats.failed_attempts >= 1);
    }

    #[test]
    fn the_budget_counts_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        assert!(disk_check(dir.path(), 10, 100, 0).is_none());
        assert!(disk_check(dir.path(), 101 * 1024 * 1024, 100 * 1024 * 1024, 0).unwrap().contains("disk budget"));
        assert!(disk_check(dir.path(), 0, 100, u64::MAX).unwrap().contains("free"));
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let seg = recfleet_media::describe("seg_000001.m4s", 2.0, 3, "ab".into());
        let lines = [
            serde_json::to_string(&JournalLine::Closed { segment: seg, at_ms: 1 }).unwrap(),
            serde_json::to_string(&JournalLine::Stored { name: "seg_000001.m4s".into(), lag_ms: Some(5), at_ms: 2 }).unwrap(),
            "{\"state\":\"stor".to_string(),
        ];
        std::fs::write(dir.path().join(JOURNAL), lines.join("\n")).unwrap();
        let r = replay(&dir.path().join(JOURNAL));
        assert_eq!(r.stored.len(), 1);
    }
}
