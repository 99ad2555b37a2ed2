//! End-to-end: a recording survives what breaks during a meeting (docs/FAULTS.md). The real bot
//! records the bundled meeting while a test breaks one of its parts from outside, as a crash or
//! the kernel would, and the final MP4 is checked by content: it plays, it covers the whole
//! meeting, the call view is missing for at most a few seconds, the audio is not silent.

use std::time::Duration;

use recfleet_tests::bot::{self, BotProcess, BotRun};
use recfleet_tests::media::{self, Frame};
use recfleet_tests::meeting::MeetingServer;
use recfleet_tests::procs;

const LIMIT: Duration = Duration::from_secs(120);
/// The meeting's length, counted by the meeting's own clock from the bot's first entry.
const MEETING_SECS: f64 = 14.0;
/// How far into the recording the fault is injected.
const FAULT_AFTER: Duration = Duration::from_secs(4);
/// The bound on the call view missing from the recording around a browser loss.
const MAX_GAP_SECS: f64 = 5.0;
/// Frames sampled per second to find the gap.
const SAMPLE_FPS: f64 = 4.0;
/// The tiles' background (#1d2430) fills most of the call view; the lobby, the blank page, a
/// crashed tab and the bare display have none of it.
const TILE: [u8; 3] = [0x1d, 0x24, 0x30];

fn recipe_path() -> String {
    recfleet_tests::meeting_dir().join("recipe.json").to_string_lossy().into_owned()
}

fn shows_call(frame: &Frame) -> bool {
    frame.share_near(TILE, 10) > 0.25
}

/// Starts a bot on a meeting that keeps its own clock and waits until it records.
async fn recording_bot(server: &MeetingServer, out: &std::path::Path, meeting: &str, extra: &[&str]) -> BotProcess {
    let (url, recipe) = (server.url(&format!("/m/{meeting}?end={MEETING_SECS}&clock=meeting")), recipe_path());
    let mut args = vec!["--url", url.as_str(), "--recipe", recipe.as_str(), "--max-duration-secs", "60"];
    args.extend_from_slice(extra);
    let mut bot = bot::spawn_record(out, &args);
    bot.wait_for_event("recording_started", Duration::from_secs(60)).await;
    tokio::time::sleep(FAULT_AFTER).await;
    bot
}

/// SIGKILLs the bot's Chromium processes that `pick` selects (by their `--type=`); at least one.
fn kill_chromium(bot: &BotProcess, pick: impl Fn(Option<&str>) -> bool) -> usize {
    let victims: Vec<u32> = procs::chromium(bot.pid()).into_iter().filter(|(_, t)| pick(t.as_deref())).map(|(pid, _)| pid).collect();
    assert!(!victims.is_empty(), "no such Chromium process under the bot: {:?}", procs::chromium(bot.pid()));
    for pid in &victims {
        // SAFETY: kill(2) on a pid found under our own bot.
        unsafe {
            libc::kill(*pid as libc::pid_t, libc::SIGKILL);
        }
    }
    victims.len()
}

/// One recording of the whole meeting, rejoined once, with the call view missing ≤ 5 s.
fn assert_rejoined_whole_meeting(run: &BotRun, reason_has: &[&str]) {
    run.assert_exit(0);
    let summary = run.summary();
    assert_eq!(summary["status"], "completed", "{summary}");
    assert_eq!(summary["sub_code"], "meeting_ended", "{summary}");

    let lost = run.events_of("browser_lost");
    assert_eq!(lost.len(), 1, "{:#}", run.events());
    let reason = lost[0]["reason"].as_str().unwrap();
    assert!(reason_has.iter().any(|r| reason.contains(r)), "loss seen as {reason:?}, expected one of {reason_has:?}");
    let rejoined = run.events_of("rejoined");
    assert_eq!(rejoined.len(), 1, "{:#}", run.events());
    let gap_ms = rejoined[0]["gap_ms"].as_u64().unwrap();
    eprintln!("browser lost ({reason}); rejoined {gap_ms} ms later");

    // The meeting ended when the host ended it, by the meeting's clock, not 14 s after the rejoin.
    let joined_at = run.event("joined").unwrap()["elapsed_ms"].as_u64().unwrap() as f64 / 1000.0;
    let ended = run.event("ended").unwrap();
    let ended_at = ended["elapsed_ms"].as_u64().unwrap() as f64 / 1000.0;
    assert!((ended_at - joined_at - MEETING_SECS).abs() <= 2.0, "ended {:.1} s after the first join", ended_at - joined_at);

    let mp4 = run.mp4();
    let p = media::probe(&mp4);
    assert_eq!((p.video_codec.as_str(), p.pix_fmt.as_str(), p.audio_codec.as_deref()), ("h264", "yuv420p", Some("aac")), "{p:?}");
    assert!(p.faststart);
    assert!((p.fps - 30.0).abs() < 0.5, "{p:?}");
    assert!(
        (p.duration_secs - MEETING_SECS).abs() <= 2.0,
        "one MP4 of the whole meeting: {:.2} s, expected {MEETING_SECS} s",
        p.duration_secs
    );
    assert!(media::mean_volume_db(&mp4) > -40.0, "the audio is silent");

    let frames = media::frames(&mp4, SAMPLE_FPS);
    assert!(shows_call(&frames[1]), "the recording starts in the call");
    assert!(shows_call(&frames[frames.len() - 3]), "the call view is back after the rejoin");
    assert!(frames[1].diff(&frames[frames.len() - 3]) > 0.5, "frames change");
    let gap_secs = media::longest_gap(&frames, shows_call) as f64 / SAMPLE_FPS;
    eprintln!("call view absent for {gap_secs:.2} s in the MP4");
    assert!(gap_secs > 0.0, "the loss left no trace in the video: was the browser really killed?");
    assert!(gap_secs <= MAX_GAP_SECS, "the call view is missing for {gap_secs:.2} s (at most {MAX_GAP_SECS} s)");
    assert!(gap_ms as f64 <= MAX_GAP_SECS * 1000.0, "rejoined after {gap_ms} ms");

    let left = run.leftovers();
    assert!(left.is_empty(), "the bot left processes running: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_browser_process_is_replaced_and_the_meeting_rejoined() {
    let server = MeetingServer::start().await.unwrap();
    let out = tempfile::Builder::new().prefix("recfleet-fault-").tempdir().unwrap();
    let bot = recording_bot(&server, out.path(), "browser-kill", &[]).await;
    kill_chromium(&bot, |kind| kind.is_none());
    let run = bot.finish(LIMIT).await;
    assert_rejoined_whole_meeting(&run, &["browser process exited", "DevTools connection"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_renderer_is_replaced_and_the_meeting_rejoined() {
    let server = MeetingServer::start().await.unwrap();
    let out = tempfile::Builder::new().prefix("recfleet-fault-").tempdir().unwrap();
    let bot = recording_bot(&server, out.path(), "renderer-kill", &[]).await;
    kill_chromium(&bot, |kind| kind == Some("renderer"));
    let run = bot.finish(LIMIT).await;
    assert_rejoined_whole_meeting(&run, &["renderer crashed"]);
}
