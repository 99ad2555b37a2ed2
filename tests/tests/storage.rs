//! Segments reach a real S3-compatible server (moto's) while the meeting runs, through a proxy
//! the test cuts: a 20 s outage loses nothing and the backlog drains after; an outage longer
//! than the disk budget stops the recording with `disk_full` and keeps what was recorded; a
//! restarted uploader (`recfleet-bot upload`) sends what was left, from the journal.

use std::time::{Duration, Instant};

use recfleet_storage::{ObjectStore, Store};
use recfleet_tests::bot::{spawn_record_with_env, BotRun};
use recfleet_tests::meeting::MeetingServer;
use recfleet_tests::s3::{aws_env, create_bucket, store, use_endpoint, Proxy, S3Server};

fn recipe_path() -> String {
    recfleet_tests::meeting_dir().join("recipe.json").to_string_lossy().into_owned()
}

fn is_segment(name: &str) -> bool {
    name.starts_with("seg_") && name.ends_with(".m4s")
}

async fn segments_in(store: &Store, prefix: &str) -> Vec<String> {
    store.list(prefix).await.unwrap().into_iter().map(|o| o.name).filter(|n| is_segment(n)).collect()
}

/// Every file the bot closed on disk is in the bucket, byte for byte.
async fn assert_all_stored(run: &BotRun, store: &Store, prefix: &str) -> usize {
    let manifest = run.manifest();
    let local = manifest["segments"].as_array().unwrap();
    assert!(!local.is_empty());
    for seg in local {
        let name = seg["name"].as_str().unwrap();
        let bytes = store.get(&format!("{prefix}{name}")).await.unwrap().unwrap_or_else(|| panic!("{name} is not in the bucket"));
        assert_eq!(recfleet_media::sha256_hex(&bytes), seg["sha256"].as_str().unwrap(), "{name}");
    }
    local.len()
}

struct Setup {
    _server: S3Server,
    proxy: Proxy,
    meeting: MeetingServer,
    store: Store,
    bucket: &'static str,
}

async fn setup(bucket: &'static str) -> Setup {
    let server = S3Server::moto().await;
    // This process checks the bucket directly; the bot goes through the proxy.
    use_endpoint(&server.endpoint);
    create_bucket(bucket).await;
    let proxy = Proxy::start(server.addr).await;
    let meeting = MeetingServer::start().await.unwrap();
    Setup { store: store(bucket, "").await, _server: server, proxy, meeting, bucket }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_60_s_outage_loses_nothing_and_the_backlog_drains() {
    let s = setup("recfleet-outage").await;
    let out = tempfile::tempdir().unwrap();
    let url = s.meeting.url("/m/outage?end=70");
    let store_url = format!("s3://{}", s.bucket);
    let recipe = recipe_path();
    let args = [
        "--url",
        &url,
        "--recipe",
        &recipe,
        "--recording-id",
        "rec_outage",
        "--store",
        &store_url,
        "--s3-path-style",
        "--max-duration-secs",
        "120",
    ];
    let mut bot = spawn_record_with_env(&out.path().join("r"), &args, &aws_env(&s.proxy.endpoint()));
    bot.wait_for_event("recording_started", Duration::from_secs(60)).await;
    let prefix = recfleet_storage::recording_key("rec_outage", "");
    let started = Instant::now();
    while segments_in(&s.store, &prefix).await.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(15), "no segment reached the bucket");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.proxy.cut(true);
    let cut_at = segments_in(&s.store, &prefix).await.len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let during = segments_in(&s.store, &prefix).await.len();
    assert_eq!(during, cut_at, "nothing can arrive while the store is cut off");
    s.proxy.cut(false);

    let run = bot.finish(Duration::from_secs(120)).await;
    run.assert_exit(0);
    let summary = run.summary();
    let upload = &summary["upload"];
    assert_eq!(upload["not_uploaded"].as_array().unwrap().len(), 0, "{summary:#}");
    assert!(upload["peak_backlog"].as_u64().unwrap() >= 25, "a 60 s outage backs up about thirty segments: {upload}");
    assert!(upload["failed_attempts"].as_u64().unwrap() >= 1, "{upload}");
    let n = assert_all_stored(&run, &s.store, &prefix).await;
    assert!(n >= 33, "70 s of meeting in 2 s segments: {n}");
    // What a controller asks of a silent bot's recording: the segments stored past one it knows.
    let listed = segments_in(&s.store, &prefix).await;
    let after: Vec<String> =
        s.store.list_after(&prefix, &listed[n - 3]).await.unwrap().into_iter().map(|o| o.name).filter(|n| is_segment(n)).collect();
    assert_eq!(after, listed[n - 2..], "S3 start-after");
    // The bucket's playlist and manifest are final, and its MP4 is the recording.
    let manifest: recfleet_proto::Manifest =
        serde_json::from_slice(&s.store.get(&format!("{prefix}manifest.json")).await.unwrap().unwrap()).unwrap();
    assert!(manifest.complete && manifest.segments.len() == n);
    let playlist = String::from_utf8(s.store.get(&format!("{prefix}index.m3u8")).await.unwrap().unwrap()).unwrap();
    assert!(playlist.contains("#EXT-X-PLAYLIST-TYPE:VOD") && playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
    assert!(!playlist.contains("DISCONTINUITY"), "no gap: {playlist}");
    let mp4 = s.store.get(&format!("{prefix}recording.mp4")).await.unwrap().expect("recording.mp4 in the bucket");
    assert_eq!(mp4, std::fs::read(run.mp4()).unwrap());
    assert!(s.store.get(&format!("{prefix}events.json")).await.unwrap().is_some());
    let p = recfleet_tests::media::probe(&run.mp4());
    assert!((p.duration_secs - 70.0).abs() <= 1.5, "duration {}", p.duration_secs);
    assert!(run.leftovers().is_empty(), "{:?}", run.leftovers());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_past_the_disk_budget_stops_with_disk_full_and_keeps_the_recording() {
    let s = setup("recfleet-budget").await;
    s.proxy.cut(true);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("r");
    let url = s.meeting.url("/m/budget?end=0");
    let store_url = format!("s3://{}", s.bucket);
    let recipe = recipe_path();
    let args = [
        "--url",
        &url,
        "--recipe",
        &recipe,
        "--recording-id",
        "rec_budget",
        "--store",
        &store_url,
        "--s3-path-style",
        "--disk-budget-mb",
        "1",
        "--upload-drain-secs",
        "2",
        "--max-duration-secs",
        "60",
    ];
    let run = spawn_record_with_env(&dir, &args, &aws_env(&s.proxy.endpoint())).finish(Duration::from_secs(90)).await;
    // The MP4 is made, but the store has none of it: exit 8.
    run.assert_exit(8);
    let summary = run.summary();
    assert_eq!(summary["sub_code"], "disk_full", "{summary:#}");
    assert_eq!(summary["status"], "completed");
    let left = summary["upload"]["not_uploaded"].as_array().unwrap();
    assert!(left.iter().any(|n| n == "recording.mp4"), "{left:?}");
    // Stopped well before max_duration, once the backlog passed 1 MB.
    let p = recfleet_tests::media::probe(&run.mp4());
    assert!(p.duration_secs >= 2.0 && p.duration_secs < 30.0, "duration {}", p.duration_secs);
    assert_eq!((p.video_codec.as_str(), p.audio_codec.as_deref()), ("h264", Some("aac")));
    let ended = run.event("ended").expect("an ended event");
    assert_eq!(ended["sub_code"], "disk_full");
    assert!(ended["detail"].as_str().unwrap().contains("disk budget"), "{ended}");

    // The store is back: a restarted uploader sends exactly what its journal says is missing.
    s.proxy.cut(false);
    let resumed = tokio::process::Command::new(recfleet_tests::binary("recfleet-bot"))
        .args(["upload", "--dir"])
        .arg(&dir)
        .args(["--recording-id", "rec_budget", "--store", &store_url, "--s3-path-style"])
        .envs(aws_env(&s.proxy.endpoint()))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(resumed.status.success(), "upload: {}\n{stdout}\n{}", resumed.status, String::from_utf8_lossy(&resumed.stderr));
    let stats: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(stats["not_uploaded"].as_array().unwrap().len(), 0, "{stats}");
    let prefix = recfleet_storage::recording_key("rec_budget", "");
    assert_all_stored(&run, &s.store, &prefix).await;
    let mp4 = s.store.get(&format!("{prefix}recording.mp4")).await.unwrap().expect("recording.mp4 in the bucket");
    assert_eq!(mp4, std::fs::read(run.mp4()).unwrap());
    let manifest: recfleet_proto::Manifest =
        serde_json::from_slice(&s.store.get(&format!("{prefix}manifest.json")).await.unwrap().unwrap()).unwrap();
    assert!(manifest.complete);
}
