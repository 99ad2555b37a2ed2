//! Types shared by the bot and the controller: the join recipe, recording statuses and
//! sub-codes, the timeline (`events.json`), the segment manifest (`manifest.json`) and the
//! bot's closing summary.
//!
//! This crate owns data shapes and their pure validation only. It must not do I/O or pull in
//! heavy dependencies: both sides link it, and the controller validates recipes with it before
//! any bot sees them.

pub mod address;
pub mod deadline;
pub mod protocol;
pub mod recipe;
pub mod recording;
pub mod timeline;
pub mod url;

pub use address::NetworkPolicy;
pub use deadline::Deadlines;
pub use recipe::{Recipe, RecipeError, Step};
pub use recording::{
    CaptureGeneration, CaptureStats, Manifest, ManifestSegment, OutputPaths, RecordingEvent, RecordingStatus, SubCode, Summary,
    TransitionError, UploadStats, INIT_SEGMENT_NAME,
};
pub use timeline::{Event, EventKind, Timeline};
