//! Support for the end-to-end tests and the demo: the bundled test meeting, the bot binary's
//! location, and media checks that look at what a user would (ffprobe, frames, loudness).

pub mod bot;
pub mod media;
pub use recfleet_meeting as meeting;
pub mod procs;
pub mod s3;

use std::path::PathBuf;

/// The workspace's built binary `name`, next to the test executable's profile folder. Tests
/// run after `cargo build --workspace --release` (what `make test` does); a missing binary is a
/// loud failure, never a skip.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`make test` does: cargo build --workspace --release)",
        path.display()
    );
    path
}

/// Where the bundled test meeting's files are.
pub fn meeting_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("meeting")
}
