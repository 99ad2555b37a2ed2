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

/// Starts a bot on a meeting that keeps its own clock (with more of the meeting's `query`) and
/// waits until it records.
async fn recording_bot(server: &MeetingServer, out: &std::path::Path, meeting: &str, query: &str, extra: &[&str]) -> BotProcess {
    let (url, recipe) = (server.url(&format!("/m/{meeting}?end={MEETING_SECS}&clock=meeting{query}")), recipe_path());
    let mut args = vec!["--url", url.as_str(), "--recipe", recipe.as_str(), "--max-duration-secs", "60"];
    args.extend_from_slice(extra);
    let mut bot = bot::spawn_record(out, &args);
    bot.wait_for_event("recording_started", Duration::from_secs(60)).await;
    tokio::time::sleep(FAULT_AFTER).await;
    bot
}

/// SIGKILLs a process of the bot's.
fn kill(pid: u32) {
    // SAFETY: kill(2) on a pid found under our own bot.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// SIGKILLs the bot's Chromium processes that `pick` selects (by their `--type=`); at least one.
fn kill_chromium(bot: &BotProcess, pick: impl Fn(Option<&str>) -> bool) -> usize {
    let victims: Vec<u32> = procs::chromium(bot.pid()).into_iter().filter(|(_, t)| pick(t.as_deref())).map(|(pid, _)| pid).collect();
    assert!(!victims.is_empty(), "no such Chromium process under the bot: {:?}", procs::chromium(bot.pid()));
    victims.iter().copied().for_each(kill);
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
    let bot = recording_bot(&server, out.path(), "browser-kill", "", &[]).await;
    kill_chromium(&bot, |kind| kind.is_none());
    let run = bot.finish(LIMIT).await;
    assert_rejoined_whole_meeting(&run, &["browser process exited", "DevTools connection"]);
}

/// The encoder killed while the bot rejoins after a lost browser: restarted there too, the
/// rejoin goes on, and one recording of the whole meeting plays.
#[tokio::test(flavor = "multi_thread")]
async fn an_encoder_killed_during_a_rejoin_is_restarted_and_the_rejoin_goes_on() {
    let server = MeetingServer::start().await.unwrap();
    let out = tempfile::Builder::new().prefix("recfleet-fault-").tempdir().unwrap();
    let mut bot = recording_bot(&server, out.path(), "rejoin-encoder-kill", "", &[]).await;
    kill_chromium(&bot, |kind| kind.is_none());
    bot.wait_for_event("browser_lost", Duration::from_secs(10)).await;
    kill(procs::capture(bot.pid()).expect("the bot's capture FFmpeg runs"));
    let run = bot.finish(LIMIT).await;

    run.assert_exit(0);
    let summary = run.summary();
    assert_eq!((summary["status"].as_str(), summary["sub_code"].as_str()), (Some("completed"), Some("meeting_ended")), "{summary}");
    let at = |e: &serde_json::Value| e["elapsed_ms"].as_u64().unwrap();
    let (lost, restarted, rejoined) = (run.events_of("browser_lost"), run.events_of("capture_restarted"), run.events_of("rejoined"));
    assert_eq!((lost.len(), restarted.len(), rejoined.len()), (1, 1, 1), "{:#}", run.events());
    assert!(restarted[0]["reason"].as_str().unwrap().contains("while the bot rejoined"), "{}", restarted[0]);
    eprintln!(
        "browser lost, encoder killed during the rejoin: encoder back after {} ms, rejoined after {} ms",
        restarted[0]["gap_ms"], rejoined[0]["gap_ms"]
    );
    assert!(
        at(&lost[0]) <= at(&restarted[0]) && at(&restarted[0]) <= at(&rejoined[0]) + 500,
        "the restart came during the rejoin: {:#}",
        run.events()
    );
    let p = media::probe(&run.mp4());
    assert_eq!((p.video_codec.as_str(), p.pix_fmt.as_str(), p.audio_codec.as_deref()), ("h264", "yuv420p", Some("aac")), "{p:?}");
    assert!((p.duration_secs - MEETING_SECS).abs() <= 2.0, "one MP4 of the whole meeting: {:.2} s", p.duration_secs);
    eprintln!("MP4 {:.2} s of a {MEETING_SECS} s meeting", p.duration_secs);
    let frames = media::frames(&run.mp4(), SAMPLE_FPS);
    assert!(shows_call(&frames[frames.len() - 3]), "the call view is back after the rejoin");
    let left = run.leftovers();
    assert!(left.is_empty(), "the bot left processes running: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_renderer_is_replaced_and_the_meeting_rejoined() {
    let server = MeetingServer::start().await.unwrap();
    let out = tempfile::Builder::new().prefix("recfleet-fault-").tempdir().unwrap();
    let bot = recording_bot(&server, out.path(), "renderer-kill", "", &[]).await;
    kill_chromium(&bot, |kind| kind == Some("renderer"));
    let run = bot.finish(LIMIT).await;
    assert_rejoined_whole_meeting(&run, &["renderer crashed"]);
}

/// A flash is the whole picture turning white; the call view's mean luma is about 40.
const FLASH_LUMA: f64 = 128.0;
/// The beep peaks near half of full scale; the meeting is otherwise silent.
const BEEP_LEVEL: f64 = 0.1;
/// The bound on the change in A/V offset across an encoder restart.
const MAX_SYNC_DRIFT_SECS: f64 = 0.1;

/// Beep minus flash for each flash with a beep within 0.4 s, as (flash time, offset).
fn av_offsets(mp4: &std::path::Path) -> Vec<(f64, f64)> {
    let fps = 30.0;
    let flashes = media::flashes(&media::luma_track(mp4, fps), fps, FLASH_LUMA);
    let beeps = media::sound_onsets(mp4, BEEP_LEVEL);
    eprintln!("flashes at {flashes:.2?}\nbeeps at {beeps:.2?}");
    flashes
        .iter()
        .filter_map(|&f| beeps.iter().map(|&b| b - f).filter(|d| d.abs() < 0.4).min_by(|a, b| a.abs().total_cmp(&b.abs())).map(|d| (f, d)))
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One MP4 of the meeting, recorded by two encoders: it plays, its timestamps only grow, and
/// audio and video keep their offset across the break (the encoder down from `down_from` to
/// `restarted_at`, seconds of the MP4).
fn assert_restarted_mp4(mp4: &std::path::Path, down_from: f64, restarted_at: f64) {
    let p = media::probe(mp4);
    assert_eq!((p.video_codec.as_str(), p.pix_fmt.as_str(), p.audio_codec.as_deref()), ("h264", "yuv420p", Some("aac")), "{p:?}");
    assert!(p.faststart && (p.frame_rate - 30.0).abs() < 0.5, "{p:?}");
    assert!((p.duration_secs - MEETING_SECS).abs() <= 2.0, "one MP4 of the meeting: {:.2} s, expected {MEETING_SECS} s", p.duration_secs);
    // Packets only go forward, evenly but for one hole: the segment in progress when the
    // encoder died (at most 2 s) and the restart.
    for (kind, step) in [("video", 1.0 / 30.0), ("audio", 1024.0 / 48_000.0)] {
        let dts = media::packet_times(mp4, kind);
        assert!(dts.len() > 100, "{kind}: {} packets", dts.len());
        assert!(dts.windows(2).all(|w| w[0] < w[1]), "{kind} timestamps go back");
        let holes: Vec<(f64, f64)> = dts.windows(2).filter(|w| w[1] - w[0] > 3.0 * step).map(|w| (w[0], w[1] - w[0])).collect();
        eprintln!("{kind}: holes (at, secs) {holes:.2?}");
        assert!(
            holes.len() <= 1 && holes.iter().all(|(at, secs)| *secs <= 3.5 && *at >= down_from - 2.5 && *at <= restarted_at),
            "{kind} holes {holes:.2?}"
        );
    }
    assert!(media::mean_volume_db(mp4) > -40.0, "the audio is silent");
    let frames = media::frames(mp4, SAMPLE_FPS);
    let calm: Vec<&Frame> = frames.iter().filter(|f| f.mean_luma() < FLASH_LUMA).collect();
    assert!(shows_call(calm[1]) && shows_call(calm[calm.len() - 3]), "the call view at both ends");
    assert!(calm[1].diff(calm[calm.len() - 3]) > 0.5, "frames change");

    // A/V sync on both sides of the break, and the meeting's clock across it: the flashes keep
    // their one-second beat, so the time the encoder was down is kept, not cut out.
    let offsets = av_offsets(mp4);
    let before: Vec<f64> = offsets.iter().filter(|(f, _)| *f < down_from).map(|(_, d)| *d).collect();
    let after: Vec<f64> = offsets.iter().filter(|(f, _)| *f >= restarted_at).map(|(_, d)| *d).collect();
    eprintln!("restart at {restarted_at:.2} s of the MP4; A/V offsets before {before:.3?}, after {after:.3?}");
    assert!(before.len() >= 2 && after.len() >= 3, "too few flashes with beeps to compare: {offsets:?}");
    let drift = median(after) - median(before);
    assert!(drift.abs() <= MAX_SYNC_DRIFT_SECS, "A/V offset changed by {:.0} ms across the restart", drift * 1000.0);
    // Across the hole, the flashes keep their beat: the last before and the first after are a
    // whole number of seconds apart. (Only there: the page's audio clock, which drives both the
    // flash and the beep, may itself stutter by a tenth of a second while the bot starts.)
    let last_before = offsets.iter().map(|(f, _)| *f).filter(|f| *f < down_from).fold(f64::MIN, f64::max);
    let first_after = offsets.iter().map(|(f, _)| *f).find(|f| *f >= restarted_at).unwrap();
    let across = first_after - last_before;
    assert!(
        across.round() >= 1.0 && (across - across.round()).abs() <= 0.25,
        "the flashes either side of the hole are {across:.2} s apart: the MP4's clock is not the meeting's"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_encoder_is_restarted_and_the_recording_goes_on_in_sync() {
    let server = MeetingServer::start().await.unwrap();
    let out = tempfile::Builder::new().prefix("recfleet-fault-").tempdir().unwrap();
    let store = tempfile::Builder::new().prefix("recfleet-fault-store-").tempdir().unwrap();
    let store_url = format!("file://{}", store.path().display());
    let bot = recording_bot(&server, out.path(), "encoder-kill", "&sync=1", &["--store", &store_url]).await;
    // Later than the browser faults, so that a few flashes are recorded before.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ffmpeg = procs::capture(bot.pid()).expect("the bot's capture FFmpeg runs");
    kill(ffmpeg);
    let run = bot.finish(LIMIT).await;

    run.assert_exit(0);
    let summary = run.summary();
    assert_eq!((summary["status"].as_str(), summary["sub_code"].as_str()), (Some("completed"), Some("meeting_ended")), "{summary}");
    let restarts = run.events_of("capture_restarted");
    assert_eq!(restarts.len(), 1, "{:#}", run.events());
    assert_eq!(restarts[0]["generation"], 2);
    let gap_ms = restarts[0]["gap_ms"].as_u64().unwrap();
    eprintln!("encoder killed; its successor's first frame {gap_ms} ms later");
    assert!(gap_ms <= 2000, "the encoder took {gap_ms} ms to come back");
    assert!(run.events_of("browser_lost").is_empty(), "the browser was not touched");

    // Numbers only grow; the break is marked with the new init, in the bot's and the store's playlist.
    let manifest = run.manifest();
    let segments = manifest["segments"].as_array().unwrap();
    let numbers: Vec<u64> = segments.iter().map(|s| s["sequence"].as_u64().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "segment numbers {numbers:?}");
    let breaks: Vec<&serde_json::Value> = segments.iter().filter(|s| s["discontinuity"] == true).collect();
    assert_eq!(breaks.len(), 1, "{manifest:#}");
    assert_eq!(breaks[0]["init"], "init_2.mp4");
    assert_eq!(manifest["inits"][0]["name"], "init_2.mp4", "{manifest:#}");
    let id = summary["recording_id"].as_str().unwrap();
    let stored = store.path().join("recordings").join(id);
    for dir in [out.path(), stored.as_path()] {
        let playlist = std::fs::read_to_string(dir.join("index.m3u8")).unwrap();
        assert_eq!(playlist.matches("#EXT-X-DISCONTINUITY").count(), 1, "{}: {playlist}", dir.display());
        assert!(playlist.contains("URI=\"init.mp4\"") && playlist.contains("URI=\"init_2.mp4\""), "{playlist}");
        assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
        assert!(dir.join("init_2.mp4").exists(), "{}", dir.display());
    }
    for name in std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()) {
        assert!(!name.ends_with(".tmp") && !name.starts_with("finalize_"), "left behind: {name}");
    }

    // Where the break is in the MP4: the successor's first frame, and the encoder's death.
    let started_ms = run.event("recording_started").unwrap()["elapsed_ms"].as_u64().unwrap();
    let restarted_at = (restarts[0]["elapsed_ms"].as_u64().unwrap() - started_ms) as f64 / 1000.0;
    let down_from = restarted_at - gap_ms as f64 / 1000.0;
    assert_restarted_mp4(&run.mp4(), down_from, restarted_at);

    // The controller's recovery of a dead bot's recording, from the store alone, makes the same.
    std::fs::remove_file(stored.join("recording.mp4")).unwrap();
    let objects = recfleet_storage::Store::Fs(recfleet_storage::FsStore::new(store.path().to_path_buf()));
    let scratch = tempfile::tempdir().unwrap();
    let recovered = recfleet::recovery::recover(&objects, id, &scratch.path().join("recovery")).await.unwrap();
    assert_eq!(recovered.segments, segments.len());
    assert!(recovered.corrupt.is_empty());
    assert_restarted_mp4(&stored.join("recording.mp4"), down_from, restarted_at);

    let left = run.leftovers();
    assert!(left.is_empty(), "the bot left processes running: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_capture_restarts_a_killed_encoder_ends_the_recording_and_keeps_it() {
    let server = MeetingServer::start().await.unwrap();
    let out = tempfile::Builder::new().prefix("recfleet-fault-").tempdir().unwrap();
    let bot = recording_bot(&server, out.path(), "encoder-kill-final", "", &["--max-capture-restarts", "0"]).await;
    kill(procs::capture(bot.pid()).expect("the bot's capture FFmpeg runs"));
    let run = bot.finish(LIMIT).await;

    run.assert_exit(0);
    let summary = run.summary();
    assert_eq!((summary["status"].as_str(), summary["sub_code"].as_str()), (Some("completed"), Some("capture_failed")), "{summary}");
    let ended = run.event("ended").unwrap();
    assert!(ended["detail"].as_str().unwrap().contains("ffmpeg stopped by itself"), "{ended}");
    assert!(run.events_of("capture_restarted").is_empty(), "no restart was allowed");
    // What was recorded before the kill plays: the closed segments, up to the one in progress.
    let p = media::probe(&run.mp4());
    assert_eq!((p.video_codec.as_str(), p.audio_codec.as_deref()), ("h264", Some("aac")), "{p:?}");
    let fault = FAULT_AFTER.as_secs_f64();
    assert!(p.duration_secs >= fault - 2.5 && p.duration_secs <= fault + 1.0, "{:.2} s recorded, killed at {fault} s", p.duration_secs);
    let left = run.leftovers();
    assert!(left.is_empty(), "the bot left processes running: {left:?}");
}

/// The bots' stopping deadline in the test: the least allowed.
const STOPPING_DEADLINE_SECS: u64 = 15;

/// A page that spins when the bot clicks Leave (its handler never returns) cannot hold the bot:
/// the leave gives up within the stopping deadline, the browser is closed anyway, and the
/// recording up to the stop is finalized and plays.
#[tokio::test(flavor = "multi_thread")]
async fn a_page_that_spins_on_leave_cannot_hold_the_bot_past_its_stopping_deadline() {
    let server = MeetingServer::start().await.unwrap();
    let out = tempfile::Builder::new().prefix("recfleet-fault-").tempdir().unwrap();
    let deadline = STOPPING_DEADLINE_SECS.to_string();
    let bot = recording_bot(&server, out.path(), "spin-on-leave", "&on_leave=spin", &["--stopping-deadline-secs", &deadline]).await;
    let stopped_at = std::time::Instant::now();
    bot.signal(libc::SIGINT);
    let run = bot.finish(LIMIT).await;
    let took = stopped_at.elapsed().as_secs_f64();

    run.assert_exit(0);
    let summary = run.summary();
    assert_eq!((summary["status"].as_str(), summary["sub_code"].as_str()), (Some("completed"), Some("stopped_by_signal")), "{summary}");
    let failed = run.events_of("leave_failed");
    assert_eq!(failed.len(), 1, "the leave is seen failing: {:#}", run.events());
    assert!(failed[0]["reason"].as_str().unwrap().contains("did not finish leaving"), "{failed:?}");
    assert!(run.events_of("left").is_empty(), "{:#}", run.events());
    let at = |kind: &str| run.event(kind).unwrap()["elapsed_ms"].as_u64().unwrap() as f64 / 1000.0;
    let stopping = at("finalized") - at("ended");
    eprintln!(
        "stopped (a spinning page's leave included) and finalized {stopping:.2} s after the end; the bot exited {took:.2} s after SIGINT"
    );
    assert!(
        stopping <= STOPPING_DEADLINE_SECS as f64 + 3.0,
        "{stopping:.2} s from the end to the MP4 (deadline {STOPPING_DEADLINE_SECS} s)"
    );
    assert!(took <= STOPPING_DEADLINE_SECS as f64 + 8.0, "the bot exited {took:.2} s after the signal");

    let mp4 = run.mp4();
    let p = media::probe(&mp4);
    assert_eq!((p.video_codec.as_str(), p.audio_codec.as_deref()), ("h264", Some("aac")), "{p:?}");
    assert!((p.duration_secs - FAULT_AFTER.as_secs_f64()).abs() <= 2.0, "{:.2} s recorded until the stop", p.duration_secs);
    let frames = media::frames(&mp4, SAMPLE_FPS);
    assert!(shows_call(&frames[frames.len() - 2]), "the call is recorded up to the stop, not the leave");
    let left = run.leftovers();
    assert!(left.is_empty(), "the bot left processes running: {left:?}");
}
