//! End-to-end: the real `recfleet-bot` records the bundled test meeting with the real
//! Chromium, FFmpeg, Xvfb and PulseAudio, and the outputs are checked as a user would check
//! them: ffprobe, what the frames show, whether they change, whether the audio is silent,
//! the timeline and the sub-code. Each meeting is short (5-10 s).

use std::path::Path;
use std::time::Duration;

use recfleet_tests::bot::{self, BotRun};
use recfleet_tests::media::{self, Frame};
use recfleet_tests::meeting::MeetingServer;

const LIMIT: Duration = Duration::from_secs(120);
/// The issue's tolerance on a recording's duration.
const DURATION_TOLERANCE_SECS: f64 = 1.5;
/// The in-call background (#101418) is dark; the lobby is white and the waiting room light grey.
const CALL_MAX_LUMA: f64 = 80.0;
const MAGENTA: [u8; 3] = [255, 0, 255];

fn recipe_path() -> String {
    recfleet_tests::meeting_dir().join("recipe.json").to_string_lossy().into_owned()
}

/// Everything a user checks about a finished recording.
fn assert_playable_call(run: &BotRun, expected_secs: f64) {
    let mp4 = run.mp4();
    let p = media::probe(&mp4);
    assert_eq!(p.video_codec, "h264", "{p:?}");
    assert_eq!(p.pix_fmt, "yuv420p", "{p:?}");
    assert_eq!(p.audio_codec.as_deref(), Some("aac"), "{p:?}");
    assert_eq!((p.width, p.height), (1280, 720), "{p:?}");
    assert!((p.fps - 30.0).abs() < 0.5, "frame rate {p:?}");
    assert!(p.faststart, "moov must come before mdat (+faststart)");
    assert!(
        (p.duration_secs - expected_secs).abs() <= DURATION_TOLERANCE_SECS,
        "duration {:.2} s, expected {expected_secs} ± {DURATION_TOLERANCE_SECS} s",
        p.duration_secs
    );

    // The first frame shows the call, not the lobby or the waiting room.
    let first = media::frame_at(&mp4, 0.1);
    assert!(first.mean_luma() < CALL_MAX_LUMA, "first frame is not the call (mean luma {:.0})", first.mean_luma());
    // Frames change (the tiles move).
    let later = media::frame_at(&mp4, (p.duration_secs - 1.0).max(1.0));
    assert!(first.diff(&later) > 0.5, "frames do not change (diff {:.2})", first.diff(&later));
    // The recipe's hidden self view never shows.
    for f in [&first, &later] {
        assert!(f.share_near(MAGENTA, 40) < 0.001, "the hidden self view is visible");
    }
    // The tone is there.
    let db = media::mean_volume_db(&mp4);
    assert!(db > -40.0, "audio is silent ({db} dB)");

    assert_manifest_matches_files(run);
    let summary = run.summary();
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["paths"]["mp4"], mp4.to_string_lossy().as_ref());
    let joined = run.event("joined").expect("joined event");
    let started = run.event("recording_started").expect("recording_started event");
    assert!(joined["elapsed_ms"].as_u64() <= started["elapsed_ms"].as_u64(), "recording began before the join");
    assert!(run.event("finalized").is_some(), "finalized event");
}

/// Every segment on disk is in the manifest with its size and sha256, and the playlist is VOD.
fn assert_manifest_matches_files(run: &BotRun) {
    let manifest = run.manifest();
    assert_eq!(manifest["complete"], true);
    let segments = manifest["segments"].as_array().expect("segments");
    let on_disk = std::fs::read_dir(&run.out_dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".m4s")).count();
    assert_eq!(segments.len(), on_disk, "manifest lists every segment");
    assert!(segments.len() >= 2, "a few 2 s segments");
    for seg in segments.iter().chain(std::iter::once(&manifest["init"])) {
        let path = run.out_dir.join(seg["name"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(seg["bytes"].as_u64().unwrap(), bytes.len() as u64, "{}", path.display());
        assert_eq!(seg["sha256"].as_str().unwrap(), recfleet_media::sha256_hex(&bytes), "{}", path.display());
    }
    for seg in &segments[..segments.len() - 1] {
        let d = seg["duration_secs"].as_f64().unwrap();
        assert!((d - 2.0).abs() < 0.1, "segments are 2 s with a keyframe at each boundary, got {d}");
    }
    let playlist = std::fs::read_to_string(run.out_dir.join("index.m3u8")).unwrap();
    assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
    assert!(playlist.contains("#EXT-X-PLAYLIST-TYPE:VOD"), "{playlist}");
}

fn assert_no_leftovers(run: &BotRun) {
    let left = run.leftovers();
    assert!(left.is_empty(), "the bot left processes running: {left:?}");
}

fn out_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("recfleet-e2e-").tempdir().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn host_ends_a_plain_meeting() {
    let server = MeetingServer::start().await.unwrap();
    let out = out_dir();
    let url = server.url("/m/plain?end=8");
    let run = bot::record(out.path(), &["--url", &url, "--recipe", &recipe_path(), "--max-duration-secs", "60"], LIMIT).await;
    run.assert_exit(0);
    assert_eq!(run.summary()["sub_code"], "meeting_ended");
    assert_eq!(run.event("ended").unwrap()["sub_code"], "meeting_ended");
    assert!(run.event("waiting_room").is_none());
    assert_playable_call(&run, 8.0);
    assert_no_leftovers(&run);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_failed_loads_then_a_join() {
    let server = MeetingServer::start().await.unwrap();
    let out = out_dir();
    let url = server.url("/m/flaky?fail_loads=2&end=6");
    let run = bot::record(out.path(), &["--url", &url, "--recipe", &recipe_path()], LIMIT).await;
    run.assert_exit(0);
    let failures = run.events_of("join_attempt_failed");
    assert_eq!(failures.len(), 2, "{:#}", run.events());
    assert!(failures[0]["error"].as_str().unwrap().contains("503"), "{}", failures[0]);
    assert_eq!(run.event("page_loaded").unwrap()["attempt"], 3);
    assert_eq!(run.summary()["sub_code"], "meeting_ended");
    assert_playable_call(&run, 6.0);
    assert_no_leftovers(&run);
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_room_is_not_recorded() {
    let server = MeetingServer::start().await.unwrap();
    let out = out_dir();
    let url = server.url("/m/lobby?wait=3&end=6");
    let run = bot::record(out.path(), &["--url", &url, "--recipe", &recipe_path()], LIMIT).await;
    run.assert_exit(0);
    let waiting = run.event("waiting_room").expect("the waiting room is on the timeline");
    let joined = run.event("joined").unwrap();
    let waited_ms = joined["elapsed_ms"].as_u64().unwrap() - waiting["elapsed_ms"].as_u64().unwrap();
    assert!(waited_ms >= 2_500, "joined only {waited_ms} ms after the waiting room showed");
    assert_eq!(run.summary()["sub_code"], "meeting_ended");
    // The call lasts 6 s after admission; the 3 s in the waiting room are not in the file.
    assert_playable_call(&run, 6.0);
    assert_no_leftovers(&run);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_duration_ends_the_recording() {
    let server = MeetingServer::start().await.unwrap();
    let out = out_dir();
    let url = server.url("/m/long?end=0");
    let run = bot::record(out.path(), &["--url", &url, "--recipe", &recipe_path(), "--max-duration-secs", "6"], LIMIT).await;
    run.assert_exit(0);
    assert_eq!(run.summary()["sub_code"], "max_duration");
    assert_playable_call(&run, 6.0);
    assert_no_leftovers(&run);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_meeting_finalizes_what_was_recorded() {
    let server = MeetingServer::start().await.unwrap();
    let out = out_dir();
    let url = server.url("/m/term?end=0");
    let mut bot = bot::spawn_record(out.path(), &["--url", &url, "--recipe", &recipe_path()]);
    bot.wait_for_event("recording_started", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    bot.signal(libc::SIGTERM);
    let run = bot.finish(LIMIT).await;
    run.assert_exit(0);
    assert_eq!(run.summary()["sub_code"], "stopped_by_signal");
    assert_playable_call(&run, 5.0);
    assert_no_leftovers(&run);
}

#[tokio::test(flavor = "multi_thread")]
async fn page_asking_to_end_without_a_recipe() {
    // No recipe: the bot records the page as it is (the platform's recorder view).
    let server = MeetingServer::start().await.unwrap();
    let out = out_dir();
    let url = server.url("/m/view?autojoin=1&end=6&end_mode=console");
    let run = bot::record(out.path(), &["--url", &url], LIMIT).await;
    run.assert_exit(0);
    assert_eq!(run.summary()["sub_code"], "meeting_ended");
    assert!(run.event("ended").unwrap()["detail"].as_str().unwrap().contains("RECFLEET_END"));
    let p = media::probe(&run.mp4());
    assert!((p.duration_secs - 6.0).abs() <= DURATION_TOLERANCE_SECS, "{p:?}");
    assert!(media::mean_volume_db(&run.mp4()) > -40.0);
    assert_manifest_matches_files(&run);
    assert_no_leftovers(&run);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_rejoins_a_crashing_tab_ends_with_page_crashed_and_keeps_the_recording() {
    // `--max-rejoins 0`: the behaviour before rejoins (tests/tests/faults.rs has the rejoins).
    let server = MeetingServer::start().await.unwrap();
    let out = out_dir();
    let url = server.url("/m/crash?end=0&crash=5");
    let args = ["--url", &url, "--recipe", &recipe_path(), "--max-duration-secs", "40", "--max-rejoins", "0"];
    let run = bot::record(out.path(), &args, LIMIT).await;
    run.assert_exit(0);
    assert_eq!(run.summary()["sub_code"], "page_crashed", "{}", run.stdout);
    let detail = run.event("ended").unwrap()["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("renderer crashed"), "Chromium's crash event ends it, not a probe timeout: {detail}");
    assert!(run.events_of("browser_lost").is_empty(), "no rejoin was tried: {:#}", run.events());
    let p = media::probe(&run.mp4());
    assert_eq!((p.video_codec.as_str(), p.audio_codec.as_deref()), ("h264", Some("aac")));
    assert!(p.duration_secs >= 4.0, "the recording before the crash is kept: {p:?}");
    assert_manifest_matches_files(&run);
    assert_no_leftovers(&run);
}

#[tokio::test(flavor = "multi_thread")]
async fn records_a_page_it_has_never_seen_given_a_recipe() {
    // `other.html` shares nothing with the bundled meeting: a late consent dialog, a button
    // enabled by keyup, a lobby marked by a data attribute, and an end toast that sits in the
    // DOM at opacity 0 from the start.
    let recipe = r##"{
      "name": "confer",
      "steps": [
        {"click": ".consent button[data-action=accept]"},
        {"fill": {"selector": ".prejoin input[name=display_name]", "text": "{bot_name} ({recording_id})"}},
        {"click": ".prejoin button.primary"},
        {"wait_for": "main[data-state=live] .stage", "timeout_secs": 10}
      ],
      "waiting_room_when": "main[data-state=lobby]",
      "ended_when": "#toast"
    }"##;
    let dir = out_dir();
    let recipe_file = dir.path().join("confer.json");
    std::fs::write(&recipe_file, recipe).unwrap();
    let out = dir.path().join("out");
    let server = MeetingServer::start().await.unwrap();
    let url = server.url("/other/o1?lobby=2&end=6");
    let run = bot::record(
        &out,
        &["--url", &url, "--recipe", recipe_file.to_str().unwrap(), "--bot-name", "Scribe", "--recording-id", "r-42"],
        LIMIT,
    )
    .await;
    run.assert_exit(0);
    assert_eq!(run.summary()["sub_code"], "meeting_ended");
    assert_eq!(run.summary()["recording_id"], "r-42");
    assert!(run.event("waiting_room").is_some(), "{:#}", run.events());
    let p = media::probe(&run.mp4());
    assert!((p.duration_secs - 6.0).abs() <= DURATION_TOLERANCE_SECS, "{p:?}");
    // The live stage (dark teal gradient), not the beige pre-join page or lobby.
    let first: Frame = media::frame_at(&run.mp4(), 0.1);
    assert!(first.mean_luma() < 120.0, "first frame is not the live call (luma {:.0})", first.mean_luma());
    assert!(first.diff(&media::frame_at(&run.mp4(), 4.0)) > 0.5, "the bars move");
    assert!(media::mean_volume_db(&run.mp4()) > -40.0);
    assert_no_leftovers(&run);
}

#[tokio::test(flavor = "multi_thread")]
async fn never_admitted_ends_with_waiting_room_timeout() {
    let dir = out_dir();
    let mut recipe: serde_json::Value = serde_json::from_str(recfleet_tests::meeting::RECIPE_JSON).unwrap();
    recipe["waiting_room_timeout_secs"] = 3.into();
    let recipe_file = dir.path().join("recipe.json");
    std::fs::write(&recipe_file, recipe.to_string()).unwrap();
    let server = MeetingServer::start().await.unwrap();
    let url = server.url("/m/locked?wait=never");
    let run = bot::record(&dir.path().join("out"), &["--url", &url, "--recipe", recipe_file.to_str().unwrap()], LIMIT).await;
    run.assert_exit(3);
    let summary = run.summary();
    assert_eq!(summary["sub_code"], "waiting_room_timeout", "{summary}");
    assert!(!run.mp4().exists(), "nothing of the waiting room is recorded");
    assert!(!Path::new(&run.out_dir.join("seg_000001.m4s")).exists());
    assert_eq!(run.event("ended").unwrap()["sub_code"], "waiting_room_timeout");
    assert_no_leftovers(&run);
}
