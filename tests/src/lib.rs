//! Support for the end-to-end tests and the demo: the bundled test meeting, the bot binary's
//! location, and media checks that look at what a user would (ffprobe, frames, loudness).

pub mod bot;
pub mod docker;
pub mod ecs;
pub mod handoff;
pub mod media;
pub mod netns;
pub mod pg;
pub use recfleet_meeting as meeting;
pub mod procs;
pub mod s3;
pub mod serve;

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

/// A free loopback port (for a server that takes its port as a flag).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A tool `scripts/setup.sh` installs: in the project's tools virtualenv, in cargo's bin
/// folder, or on PATH. A missing one fails the test loudly.
pub fn tool(name: &str) -> PathBuf {
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_default());
    let venv = std::env::var_os("RECFLEET_TOOLS_VENV").map(PathBuf::from).unwrap_or_else(|| home.join(".cache/recfleet/venv"));
    let path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    [venv.join("bin"), home.join(".cargo/bin")]
        .into_iter()
        .chain(path)
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is missing: run `scripts/setup.sh` (make test does) to install it"))
}

/// Where the bundled test meeting's files are.
pub fn meeting_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("meeting")
}
