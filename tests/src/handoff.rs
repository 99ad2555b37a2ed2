//! What a user checks of a recording whose bot was taken away mid-meeting and handed it over:
//! one recording, completed once, whose MP4 covers the whole meeting with the successor's
//! part after the predecessor's and no more than a small gap between them.

use std::path::Path;

use serde_json::Value;

use crate::media::{self, Frame};

/// The tiles' background in the test meeting's call view.
const TILE: [u8; 3] = [0x1d, 0x24, 0x30];
/// Frames sampled per second to find the call view.
const SAMPLE_FPS: f64 = 4.0;
/// The largest gap between the two bots' parts the handoff may leave.
pub const MAX_GAP_SECS: f64 = 2.0;

fn shows_call(frame: &Frame) -> bool {
    frame.share_near(TILE, 10) > 0.25
}

/// What was measured of a handed-over recording.
#[derive(Debug)]
pub struct Measured {
    pub mp4_secs: f64,
    /// The longest hole in the video's timestamps (a player holds the frame before it).
    pub gap_secs: f64,
    pub segments_before: usize,
    pub segments_after: usize,
}

/// GETs `path` of the controller's API (`auth`: its key, for a folder store's files; a
/// presigned link needs none).
async fn get(http: &reqwest::Client, url: &str, auth: Option<&str>) -> Vec<u8> {
    let mut req = http.get(url);
    if let Some(key) = auth {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {url}");
    resp.bytes().await.unwrap().to_vec()
}

/// Checks the finished recording `done` of a `meeting_secs` meeting (by the meeting's clock)
/// whose first bot handed it over: completed by the meeting's end, not partial; the timeline has
/// the first bot's start and one handoff; the manifest's numbers only grow, with one break where
/// the successor's generation begins; the MP4 plays, lasts the meeting, shows the call at both
/// ends, has sound, and its video has no hole longer than `MAX_GAP_SECS`.
pub async fn check(http: &reqwest::Client, base: &str, key: &str, done: &Value, meeting_secs: f64) -> Measured {
    assert_eq!(
        (done["status"].as_str(), done["sub_code"].as_str(), done["partial"].as_bool()),
        (Some("completed"), Some("meeting_ended"), Some(false)),
        "{done:#}"
    );
    let id = done["id"].as_str().unwrap();
    let files = format!("{base}/v1/recordings/{id}/files");
    let events: Value = serde_json::from_slice(&get(http, &format!("{files}/events.json"), Some(key)).await).unwrap();
    let kinds: Vec<&str> = events["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let count = |k: &str| kinds.iter().filter(|x| **x == k).count();
    assert_eq!((count("recording_started"), count("handoff"), count("ended")), (1, 1, 1), "{kinds:?}");
    let handoff = events["events"].as_array().unwrap().iter().find(|e| e["kind"] == "handoff").unwrap();
    assert!(handoff["from_bot"].as_str().is_some_and(|b| b.starts_with("bot_")), "{handoff}");

    let manifest: Value = serde_json::from_slice(&get(http, &format!("{files}/manifest.json"), Some(key)).await).unwrap();
    let segments = manifest["segments"].as_array().unwrap();
    let numbers: Vec<u64> = segments.iter().map(|s| s["sequence"].as_u64().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "segment numbers only grow: {numbers:?}");
    let first = handoff["first_sequence"].as_u64().unwrap();
    let (before, after): (Vec<&Value>, Vec<&Value>) = segments.iter().partition(|s| s["sequence"].as_u64().unwrap() < first);
    assert!(before.len() >= 2 && after.len() >= 2, "both bots' segments: {numbers:?}, the successor's from {first}");
    assert!(after.iter().all(|s| s["init"] == "init_2.mp4"), "the successor's own init: {manifest:#}");
    assert_eq!(segments.iter().filter(|s| s["discontinuity"] == true).count(), 1, "one break: {manifest:#}");
    assert_eq!(manifest["complete"], true, "{manifest:#}");

    let file = tempfile::Builder::new().suffix(".mp4").tempfile().unwrap();
    let mp4_url = done["outputs"]["mp4_url"].as_str().unwrap();
    let auth = (!mp4_url.contains("X-Amz-Signature=")).then_some(key);
    std::fs::write(file.path(), get(http, mp4_url, auth).await).unwrap();
    let measured = check_mp4(file.path(), meeting_secs);
    Measured { segments_before: before.len(), segments_after: after.len(), ..measured }
}

fn check_mp4(mp4: &Path, meeting_secs: f64) -> Measured {
    let p = media::probe(mp4);
    assert_eq!((p.video_codec.as_str(), p.pix_fmt.as_str(), p.audio_codec.as_deref()), ("h264", "yuv420p", Some("aac")), "{p:?}");
    assert!(p.faststart && (p.frame_rate - 30.0).abs() < 0.5, "{p:?}");
    eprintln!("handed-over MP4: {:.2} s for a {meeting_secs} s meeting", p.duration_secs);
    assert!(
        (p.duration_secs - meeting_secs).abs() <= 2.0,
        "one MP4 of the whole meeting, the overlap cut: {:.2} s, expected {meeting_secs} s",
        p.duration_secs
    );
    let mut gap_secs: f64 = 0.0;
    for (kind, step) in [("video", 1.0 / 30.0), ("audio", 1024.0 / 48_000.0)] {
        let dts = media::packet_times(mp4, kind);
        assert!(dts.len() > 100, "{kind}: {} packets", dts.len());
        assert!(dts.windows(2).all(|w| w[0] < w[1]), "{kind} timestamps go back: the overlap was not cut");
        let holes: Vec<(f64, f64)> = dts.windows(2).filter(|w| w[1] - w[0] > 3.0 * step).map(|w| (w[0], w[1] - w[0])).collect();
        eprintln!("{kind}: holes (at, secs) {holes:.2?}");
        let longest = holes.iter().map(|(_, s)| *s).fold(0.0, f64::max);
        assert!(longest <= MAX_GAP_SECS, "{kind}: a hole of {longest:.2} s between the bots' parts (at most {MAX_GAP_SECS} s)");
        gap_secs = gap_secs.max(longest);
    }
    assert!(media::mean_volume_db(mp4) > -40.0, "the audio is silent");
    let frames = media::frames(mp4, SAMPLE_FPS);
    assert!(shows_call(&frames[1]) && shows_call(&frames[frames.len() - 3]), "the call view at both ends");
    assert!(frames[1].diff(&frames[frames.len() - 3]) > 0.5, "frames change");
    let absent = media::longest_gap(&frames, shows_call) as f64 / SAMPLE_FPS;
    assert!(absent <= MAX_GAP_SECS, "the call view is missing for {absent:.2} s");
    Measured { mp4_secs: p.duration_secs, gap_secs, segments_before: 0, segments_after: 0 }
}
