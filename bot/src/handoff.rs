//! A recording that changes bots mid-meeting, as the agent and the recording share it.
//!
//! The predecessor (its host is taking it away: SIGTERM) stops writing the store's manifest
//! once it has written it a last time, asks the controller for a successor, records on until
//! the successor's first segment is stored, then leaves and stores what is left. The successor
//! records into the same recording from a later segment number and generation, takes the
//! store's manifest over, is told of each segment its predecessor stores after that, and makes
//! the MP4 of the whole meeting.
//!
//! This module holds the shared state only; the agent speaks to the controller, the recording
//! acts on what is set here.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use recfleet_proto::ManifestSegment;
use tokio::sync::{mpsc, oneshot, watch};

/// Longest the predecessor waits for its uploader to write the store's manifest a last time.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// What the uploader is asked while a handoff goes on.
#[derive(Debug)]
pub enum Control {
    /// Write the store's manifest now, then no more: answers the last segment stored, or
    /// `None` (and goes on as before) when the store did not take the manifest. Until `Go` (or
    /// `Resume`) it stores nothing more, so that every segment it stores after the answer is
    /// reported after the handoff request.
    Flush(oneshot::Sender<Option<u64>>),
    /// The request is on its way: upload on, the manifest left to the successor.
    Go,
    /// A successor whose handoff was called off: the store's manifest is not its to write.
    Pause,
    /// No successor after all: write the store's manifest again.
    Resume,
}

/// Longest the uploader holds its uploads between a flush and `Go`.
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(2);

/// One recording's handoff state, on either side.
#[derive(Debug)]
pub struct HandoffLink {
    uploader: Mutex<Option<mpsc::UnboundedSender<Control>>>,
    /// The capture is running (a handoff before it would hand over nothing).
    recording: AtomicBool,
    generation: AtomicU32,
    /// A successor was asked for: the encoder is not restarted (a new generation could take
    /// the successor's numbers).
    requested: AtomicBool,
    /// A successor was found.
    accepted: Mutex<Option<String>>,
    /// Told to hand over (or the grace ran out with a successor found): this bot's part ends
    /// as a handoff. Any other end calls the handoff off.
    handing_over: AtomicBool,
    /// No handoff after all: sticky, so that a late answer changes nothing.
    withdrawn: AtomicBool,
    /// A successor whose handoff was called off before it recorded: it stops, and writes no
    /// manifest and no MP4 (the first bot finishes the recording).
    called_off: AtomicBool,
    /// Segments the predecessor stored after the store's manifest was last written by it.
    inherited: Mutex<Vec<ManifestSegment>>,
    predecessor_done: watch::Sender<bool>,
}

impl Default for HandoffLink {
    fn default() -> Self {
        Self {
            uploader: Mutex::new(None),
            recording: AtomicBool::new(false),
            generation: AtomicU32::new(1),
            requested: AtomicBool::new(false),
            accepted: Mutex::new(None),
            handing_over: AtomicBool::new(false),
            withdrawn: AtomicBool::new(false),
            called_off: AtomicBool::new(false),
            inherited: Mutex::new(Vec::new()),
            predecessor_done: watch::channel(false).0,
        }
    }
}

impl HandoffLink {
    /// The recording's capture is running as `generation`, its uploader listening on `uploader`.
    pub fn capturing(&self, generation: u32, uploader: Option<mpsc::UnboundedSender<Control>>) {
        self.generation.store(generation, Ordering::SeqCst);
        *self.uploader.lock().expect("handoff lock") = uploader;
        self.recording.store(true, Ordering::SeqCst);
    }

    /// A restarted encoder's generation.
    pub fn set_generation(&self, generation: u32) {
        self.generation.store(generation, Ordering::SeqCst);
    }

    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn is_recording(&self) -> bool {
        self.recording.load(Ordering::SeqCst)
    }

    /// Makes the uploader write the store's manifest a last time and stop writing it; the last
    /// segment stored, or `None` when there is no uploader, it did not answer in time or the
    /// store did not take the manifest. From here on the encoder is not restarted.
    pub async fn flush(&self) -> Option<u64> {
        self.requested.store(true, Ordering::SeqCst);
        let tx = self.uploader.lock().expect("handoff lock").clone()?;
        let (done, answer) = oneshot::channel();
        tx.send(Control::Flush(done)).ok()?;
        tokio::time::timeout(FLUSH_TIMEOUT, answer).await.ok()?.ok()?
    }

    /// The request is sent: the uploader goes on.
    pub fn requested_sent(&self) {
        self.control(Control::Go);
    }

    /// No handoff after all (refused, unanswered, called off, or the recording ended
    /// otherwise): the store's manifest is this bot's again, and its encoder may restart.
    pub fn withdraw(&self) {
        self.withdrawn.store(true, Ordering::SeqCst);
        *self.accepted.lock().expect("handoff lock") = None;
        self.requested.store(false, Ordering::SeqCst);
        self.control(Control::Resume);
    }

    fn control(&self, c: Control) {
        if let Some(tx) = self.uploader.lock().expect("handoff lock").as_ref() {
            let _ = tx.send(c);
        }
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    pub fn accept(&self, successor: &str) {
        if !self.withdrawn.load(Ordering::SeqCst) {
            *self.accepted.lock().expect("handoff lock") = Some(successor.to_string());
        }
    }

    /// Hand over now: the successor records.
    pub fn hand_over(&self) {
        if !self.withdrawn.load(Ordering::SeqCst) {
            self.handing_over.store(true, Ordering::SeqCst);
        }
    }

    /// The successor's side: the handoff is called off; stop without outputs.
    pub fn call_off(&self) {
        self.called_off.store(true, Ordering::SeqCst);
        self.control(Control::Pause);
    }

    pub fn is_called_off(&self) -> bool {
        self.called_off.load(Ordering::SeqCst)
    }

    /// The successor this bot hands over to, once it is told to.
    pub fn handing_over_to(&self) -> Option<String> {
        self.handing_over.load(Ordering::SeqCst).then(|| self.successor()).flatten()
    }

    /// The successor, once one was found.
    pub fn successor(&self) -> Option<String> {
        self.accepted.lock().expect("handoff lock").clone()
    }

    /// The successor's side: a segment the predecessor stored.
    pub fn inherit(&self, segment: ManifestSegment) {
        let mut inherited = self.inherited.lock().expect("handoff lock");
        if !inherited.iter().any(|s| s.name == segment.name) {
            inherited.push(segment);
        }
    }

    pub fn inherited(&self) -> Vec<ManifestSegment> {
        self.inherited.lock().expect("handoff lock").clone()
    }

    pub fn set_predecessor_done(&self) {
        self.predecessor_done.send_replace(true);
    }

    /// Waits until the predecessor is done storing, at most `limit`; whether it is.
    pub async fn wait_predecessor(&self, limit: Duration) -> bool {
        let mut done = self.predecessor_done.subscribe();
        tokio::time::timeout(limit, done.wait_for(|d| *d)).await.is_ok_and(|r| r.is_ok())
    }
}

/// Pure: the first segment number and generation for a successor of a bot whose last stored
/// segment is `last_sequence`, recording as `generation`, that may record `grace` longer:
/// past every number it can still write (2 s segments), with a margin.
pub fn successor_start(last_sequence: u64, generation: u32, grace: Duration) -> (u64, u32) {
    let segments = grace.as_secs().div_ceil(u64::from(recfleet_media::SEGMENT_SECS));
    (last_sequence + segments + 4, generation + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_successor_starts_past_what_the_predecessor_can_still_write() {
        assert_eq!(successor_start(10, 1, Duration::from_secs(20)), (24, 2));
        assert_eq!(successor_start(0, 3, Duration::from_secs(5)), (7, 4));
    }

    #[tokio::test]
    async fn inherited_segments_are_kept_once_and_the_end_is_awaited() {
        let link = HandoffLink::default();
        let seg = recfleet_media::describe("seg_000003.m4s", 2.0, 10, "00".into());
        link.inherit(seg.clone());
        link.inherit(seg);
        assert_eq!(link.inherited().len(), 1);
        assert!(!link.wait_predecessor(Duration::from_millis(20)).await);
        link.set_predecessor_done();
        assert!(link.wait_predecessor(Duration::from_millis(20)).await);
        assert_eq!(link.flush().await, None, "no uploader, nothing to flush");
    }
}
