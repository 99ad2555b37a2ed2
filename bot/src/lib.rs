//! The recfleet recorder bot: brings up Xvfb, a private PulseAudio and Chromium, joins a meeting
//! page with a recipe, captures it with FFmpeg into HLS fMP4 segments, watches for the end and
//! finalizes one MP4.
//!
//! `main.rs` only parses flags; everything else lives here where tests can reach it.

pub mod agent;
pub mod audio;
pub mod browser;
pub mod capture;
pub mod child;
pub mod config;
pub mod display;
pub mod ecs_task;
pub mod egress;
pub mod forward_log;
pub mod handoff;
pub mod join;
pub mod journal;
pub mod page_js;
pub mod record;
pub mod session;
pub mod spool;
pub mod upload;
pub mod vitals;
pub mod watch;

pub use config::RecordConfig;
pub use record::{record, RecordError};
