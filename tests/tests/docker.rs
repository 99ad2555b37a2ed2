//! The `docker` runtime with the real images (`container/build.sh`, which `make test` runs
//! first: on a fresh machine it makes the base image with debootstrap and builds both images
//! from nothing). Each test gets a Docker network of its own; the controller, the meeting and
//! the S3 server (s3s-fs) listen on that network's gateway, which the containers reach.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use recfleet_tests::docker::{docker, Net};
use recfleet_tests::meeting::MeetingServer;
use recfleet_tests::s3::{create_bucket, use_endpoint, S3Server};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const KEY: &str = "docker-key";
const BOT_IMAGE: &str = "recfleet-bot:dev";

fn pool_containers(pool: &str) -> Vec<String> {
    docker(&["ps", "-q", "--filter", &format!("label=recfleet.pool={pool}")]).split_whitespace().map(str::to_string).collect()
}

struct Controller {
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    served: Option<tokio::task::JoinHandle<Result<(), recfleet::ServeError>>>,
}

impl Controller {
    /// A controller with the docker runtime, recordings in `bucket` (s3s-fs) or, with `None`, in
    /// the default folder store (the data folder).
    async fn start(net: &Net, pool: &str, data: &std::path::Path, bucket: Option<&str>, keep: bool) -> Controller {
        Self::start_with(net, pool, data, bucket, keep, |_| {}).await
    }

    /// `start`, with the configuration changed by `tweak`.
    async fn start_with(
        net: &Net,
        pool: &str,
        data: &std::path::Path,
        bucket: Option<&str>,
        keep: bool,
        tweak: impl FnOnce(&mut recfleet::ServeConfig),
    ) -> Controller {
        let listener = tokio::net::TcpListener::bind((net.gateway, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut cfg = recfleet::ServeConfig {
            data_dir: data.to_path_buf(),
            database: None,
            api_key: KEY.into(),
            pool_min_idle: 1,
            pool_max: 2,
            pool_idle_ttl: Duration::from_secs(recfleet::pool::DEFAULT_IDLE_TTL_SECS),
            pool_demand_window: Duration::from_secs(recfleet::pool::DEFAULT_DEMAND_WINDOW_SECS),
            allowed_hosts: None,
            networks: recfleet_proto::NetworkPolicy::LOCAL,
            bot_binary: Default::default(),
            webhook_secret: None,
            keep_bots_on_exit: keep,
            drain: Duration::ZERO,
            store: bucket.map(|b| format!("s3://{b}").parse().unwrap()),
            s3_path_style: true,
            presign_expiry: Duration::from_secs(600),
            docker: Some(recfleet::docker::DockerConfig {
                image: BOT_IMAGE.into(),
                pool: pool.into(),
                network: net.name.clone(),
                ..Default::default()
            }),
            ecs: None,
            advertise_urls: vec![format!("ws://{addr}")],
            lost_window: recfleet::fleet::DEFAULT_LOST_WINDOW,
            handoffs: true,
            deadlines: recfleet_proto::Deadlines::default(),
        };
        tweak(&mut cfg);
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(recfleet::serve(cfg, listener, shutdown.clone()));
        Controller { base: format!("http://{addr}"), http: reqwest::Client::new(), shutdown, served: Some(served) }
    }

    async fn get(&self, path: &str) -> Value {
        self.http.get(format!("{}{path}", self.base)).bearer_auth(KEY).send().await.unwrap().json().await.unwrap()
    }

    async fn wait_for(&self, what: &str, limit: Duration, path: &str, check: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let v = self.get(path).await;
            if check(&v) {
                return v;
            }
            assert!(started.elapsed() < limit, "{what} not reached within {limit:?}: {v:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn record(&self, meeting_url: String) -> String {
        let body = json!({"meeting_url": meeting_url, "recipe_name": "recfleet-test-meeting"});
        let rec: Value =
            self.http.post(format!("{}/v1/recordings", self.base)).bearer_auth(KEY).json(&body).send().await.unwrap().json().await.unwrap();
        rec["id"].as_str().unwrap_or_else(|| panic!("{rec}")).to_string()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(served) = self.served.take() {
            served.await.unwrap().unwrap();
        }
    }
}

fn assert_images_built() {
    recfleet_tests::docker::assert_images_built(&[BOT_IMAGE, "recfleet:dev"]);
}

/// The controller image remuxes segments into a playable MP4 (what recovery does) with its
/// slimmed FFmpeg, and its binary runs.
#[tokio::test(flavor = "multi_thread")]
async fn the_controller_image_can_finalize_a_recording() {
    assert_images_built();
    let dir = tempfile::tempdir().unwrap();
    // A short HLS fMP4 recording like a bot's, made on the host.
    let made = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=4"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:duration=4", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "60", "-c:a", "aac"])
        .args(["-f", "hls", "-hls_time", "2", "-hls_segment_type", "fmp4", "-hls_playlist_type", "vod", "index.m3u8"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mount = format!("{}:/work", dir.path().display());
    docker(&[
        "run",
        "--rm",
        "-v",
        &mount,
        "-w",
        "/work",
        "--entrypoint",
        "ffmpeg",
        "recfleet:dev",
        "-hide_banner",
        "-loglevel",
        "error",
        "-i",
        "index.m3u8",
        "-c",
        "copy",
        "-movflags",
        "+faststart",
        "recording.mp4",
    ]);
    let p = recfleet_tests::media::probe(&dir.path().join("recording.mp4"));
    assert_eq!((p.video_codec.as_str(), p.audio_codec.as_deref()), ("h264", Some("aac")));
    assert!(p.faststart && (p.duration_secs - 4.0).abs() < 0.5, "{p:?}");
    let help = docker(&["run", "--rm", "recfleet:dev", "--help"]);
    assert!(help.contains("--runtime"), "{help}");
}

/// The images, a network of the test's own, and s3s-fs with `bucket` on its gateway.
async fn network_with_bucket(tag: &str, bucket: &str) -> (Net, S3Server) {
    assert_images_built();
    let net = Net::create(tag);
    let s3 = S3Server::s3s_fs_on(net.gateway).await;
    use_endpoint(&s3.endpoint);
    create_bucket(bucket).await;
    (net, s3)
}

/// A warm bot container records the bundled meeting to a playable MP4; killing the next
/// recording's container mid-meeting leaves a partial recording finalized from the bucket.
#[tokio::test(flavor = "multi_thread")]
async fn docker_bots_record_and_a_killed_container_is_recovered() {
    let (net, _s3) = network_with_bucket("rec", "recfleet-docker").await;
    let meeting = MeetingServer::start_on(net.gateway).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let pool = format!("t{}", std::process::id());
    let c = Controller::start(&net, &pool, data.path(), Some("recfleet-docker"), false).await;

    c.wait_for("a warm bot container", Duration::from_secs(90), "/v1/pool", |p| p["idle"] == 1).await;
    let containers = pool_containers(&pool);
    assert_eq!(containers.len(), 1, "one warm bot, in its own container");
    let inspect: Value = serde_json::from_str(&docker(&["inspect", &containers[0]])).unwrap();
    let host = &inspect[0]["HostConfig"];
    assert_eq!(host["NanoCpus"], 1_000_000_000i64, "a CPU limit");
    assert_eq!(host["Memory"], 2i64 << 30, "a memory limit");
    assert_eq!(host["ShmSize"], 1i64 << 30, "room in /dev/shm for Chromium");
    assert_eq!(inspect[0]["Config"]["User"], "recfleet", "not root");

    let id = c.record(meeting.url("/m/docker?end=8")).await;
    let path = format!("/v1/recordings/{id}");
    let done = c.wait_for("completed", Duration::from_secs(120), &path, |r| r["status"] == "completed" || r["status"] == "failed").await;
    assert_eq!(
        (done["status"].as_str(), done["sub_code"].as_str(), done["partial"].as_bool()),
        (Some("completed"), Some("meeting_ended"), Some(false)),
        "{done:#}"
    );
    let p = recfleet_tests::media::playable(&c.http, &done).await;
    // The file holds what the bot was in the call for, from its first frame to the end. In a
    // 1-CPU container on a 2-core host that also starts the pool's next container, FFmpeg's first
    // frame can come a second or more after the join (CI measured a 6.4 s file for the 8 s call):
    // the start is bounded on its own rather than folded into the duration.
    let at = |k: &str| {
        let v = done[k].as_str().unwrap_or_else(|| panic!("no {k}: {done:#}"));
        time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let captured = (at("ended_at") - at("recording_started_at")).as_seconds_f64();
    let start_lag = (at("recording_started_at") - at("joined_at")).as_seconds_f64();
    eprintln!("file {} s, captured {captured:.2} s, first frame {start_lag:.2} s after the join", p.duration_secs);
    assert!((p.duration_secs - captured).abs() <= 1.0, "file {} s, captured {captured:.2} s: {done:#}", p.duration_secs);
    assert!(start_lag < 3.0 && p.duration_secs >= 5.0, "first frame {start_lag:.2} s after the join, file {} s: {done:#}", p.duration_secs);

    // The next recording's container is killed mid-meeting. It is the one warm container there
    // is before the request: the pool's replacement, started meanwhile, runs FFmpeg too (its
    // warm-up), so running FFmpeg alone does not tell which one records.
    c.wait_for("a fresh warm bot", Duration::from_secs(90), "/v1/pool", |p| p["idle"] == 1 && p["busy"] == 0 && p["starting"] == 0).await;
    let warm = pool_containers(&pool);
    assert_eq!(warm.len(), 1, "one warm bot container before the second recording");
    let id = c.record(meeting.url("/m/docker-kill?end=0")).await;
    let path = format!("/v1/recordings/{id}");
    c.wait_for("recording", Duration::from_secs(60), &path, |r| r["status"] == "recording").await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let busy: Vec<String> = warm
        .into_iter()
        .filter(|c| {
            std::process::Command::new("docker").args(["exec", c, "pgrep", "-x", "ffmpeg"]).output().is_ok_and(|o| o.status.success())
        })
        .collect();
    assert_eq!(busy.len(), 1, "the recording container");
    docker(&["kill", &busy[0]]);
    let done = c
        .wait_for("finalized from the bucket", Duration::from_secs(60), &path, |r| r["status"] == "completed" || r["status"] == "failed")
        .await;
    assert_eq!(
        (done["status"].as_str(), done["sub_code"].as_str(), done["partial"].as_bool()),
        (Some("completed"), Some("bot_crashed"), Some(true)),
        "{done:#}"
    );
    let p = recfleet_tests::media::playable(&c.http, &done).await;
    assert!(p.duration_secs >= 4.0, "duration {}", p.duration_secs);
    c.stop().await;
    // Stopped with its controller (bots not kept): no container of the pool is left, running or
    // exited, though the controller is gone before the engine finishes removing them.
    let all = || docker(&["ps", "-aq", "--filter", &format!("label=recfleet.pool={pool}")]);
    let started = Instant::now();
    while !all().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(45), "containers left: {}", all());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The handoff test's meeting, by its own clock (from the first bot's join).
const HANDOFF_MEETING_SECS: f64 = 20.0;

/// A bot container stopped from outside mid-meeting (SIGTERM, as `docker stop` or a drained
/// host sends) hands its recording over to the pool's warm container, which records the rest
/// into the same recording: one MP4 of the whole meeting, completed once.
#[tokio::test(flavor = "multi_thread")]
async fn a_bot_container_stopped_mid_meeting_hands_its_recording_over() {
    let (net, _s3) = network_with_bucket("handoff", "recfleet-handoff").await;
    let meeting = MeetingServer::start_on(net.gateway).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let pool = format!("h{}", std::process::id());
    let c = Controller::start(&net, &pool, data.path(), Some("recfleet-handoff"), false).await;
    c.wait_for("a warm bot container", Duration::from_secs(90), "/v1/pool", |p| p["idle"] == 1).await;
    let first = pool_containers(&pool);
    assert_eq!(first.len(), 1, "one warm bot container before the recording");
    let inspect: Value = serde_json::from_str(&docker(&["inspect", &first[0]])).unwrap();
    assert_eq!(inspect[0]["Config"]["StopTimeout"], 120, "room to hand over when stopped from outside");

    let id = c.record(meeting.url(&format!("/m/docker-handoff?end={HANDOFF_MEETING_SECS}&clock=meeting"))).await;
    let path = format!("/v1/recordings/{id}");
    c.wait_for("recording", Duration::from_secs(60), &path, |r| r["status"] == "recording").await;
    c.wait_for("a warm successor", Duration::from_secs(90), "/v1/pool", |p| p["idle"] == 1 && p["starting"] == 0).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    docker(&["kill", "--signal", "TERM", &first[0]]);

    let done = c.wait_for("completed", Duration::from_secs(120), &path, |r| r["status"] == "completed" || r["status"] == "failed").await;
    let measured = recfleet_tests::handoff::check(&c.http, &c.base, KEY, &done, HANDOFF_MEETING_SECS).await;
    eprintln!("handoff on the docker runtime: {measured:?}");
    let text = c.http.get(format!("{}/metrics", c.base)).send().await.unwrap().text().await.unwrap();
    let sample = |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(sample("recfleet_recording_handoffs_total{result=\"completed\"}"), Some(1.0), "{text}");
    assert_eq!(sample("recfleet_recordings_finished_total{status=\"completed\",sub_code=\"meeting_ended\"}"), Some(1.0), "completed once");
    // The container taken away exited by itself once it had handed over (auto-removed).
    let started = Instant::now();
    while pool_containers(&pool).contains(&first[0]) {
        assert!(started.elapsed() < Duration::from_secs(60), "the stopped container is still there");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.stop().await;
}

/// A bot container cut off its network for 60 s (`docker network disconnect`: the controller and
/// the store both out of reach) records on to its disk. With the lost window above the cut it
/// is not declared lost; once its network is back it reconnects, uploads what it recorded, and
/// the recording completes whole, once, with every stored segment in its manifest.
#[tokio::test(flavor = "multi_thread")]
async fn a_bot_container_cut_off_its_network_for_a_minute_completes_whole() {
    use recfleet_storage::ObjectStore;
    const MEETING_SECS: f64 = 80.0;
    const CUT: Duration = Duration::from_secs(60);
    let (net, _s3) = network_with_bucket("cut", "recfleet-cut").await;
    let meeting = MeetingServer::start_on(net.gateway).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let pool = format!("c{}", std::process::id());
    let c = Controller::start_with(&net, &pool, data.path(), Some("recfleet-cut"), false, |cfg| {
        cfg.lost_window = Duration::from_secs(90);
    })
    .await;
    c.wait_for("a warm bot container", Duration::from_secs(90), "/v1/pool", |p| p["idle"] == 1).await;
    let first = pool_containers(&pool);
    assert_eq!(first.len(), 1, "one warm bot container before the recording");
    let id = c.record(meeting.url(&format!("/m/docker-cut?end={MEETING_SECS}"))).await;
    let path = format!("/v1/recordings/{id}");
    c.wait_for("recording", Duration::from_secs(60), &path, |r| r["status"] == "recording").await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    docker(&["network", "disconnect", &net.name, &first[0]]);
    let cut_at = Instant::now();
    while cut_at.elapsed() < CUT {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let r = c.get(&path).await;
        assert_eq!(r["status"], "recording", "{:.0} s into the cut: {r:#}", cut_at.elapsed().as_secs_f64());
    }
    // The cut is real: the controller hears nothing from the bot.
    let metrics = c.http.get(format!("{}/metrics", c.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "recfleet_pool_bots_silent 1"), "the cut-off bot is silent");
    docker(&["network", "connect", &net.name, &first[0]]);

    let done = c.wait_for("completed", Duration::from_secs(90), &path, |r| r["status"] == "completed" || r["status"] == "failed").await;
    assert_eq!(
        (done["status"].as_str(), done["sub_code"].as_str(), done["partial"].as_bool()),
        (Some("completed"), Some("meeting_ended"), Some(false)),
        "finalized by its own bot: {done:#}"
    );
    let p = recfleet_tests::media::playable(&c.http, &done).await;
    eprintln!("cut off for {} s: MP4 {:.2} s of an {MEETING_SECS} s meeting", CUT.as_secs(), p.duration_secs);
    assert!((p.duration_secs - MEETING_SECS).abs() <= 2.5, "the whole meeting: {:.2} s", p.duration_secs);
    // Nothing recorded during the cut is lost: every stored segment is in the manifest, whole.
    let store = recfleet_tests::s3::store("recfleet-cut", "").await;
    let prefix = format!("recordings/{id}/");
    let manifest: Value = serde_json::from_slice(&store.get(&format!("{prefix}manifest.json")).await.unwrap().unwrap()).unwrap();
    let listed = manifest["segments"].as_array().unwrap();
    for seg in listed {
        let name = seg["name"].as_str().unwrap();
        let bytes = store.get(&format!("{prefix}{name}")).await.unwrap().unwrap_or_else(|| panic!("{name} is not in the bucket"));
        assert_eq!(recfleet_media::sha256_hex(&bytes), seg["sha256"].as_str().unwrap(), "{name}");
    }
    let numbers: Vec<u64> = listed.iter().map(|s| s["sequence"].as_u64().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "no segment missing: {numbers:?}");
    c.stop().await;
}

/// The default folder store (the data folder) with the docker runtime: the controller gives the
/// store's `recordings/` to the containers' user and mounts only that, and a bot container
/// records a playable MP4 into it.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_default_folder_store_a_bot_container_records_a_playable_mp4() {
    assert_images_built();
    let net = Net::create("folder");
    let meeting = MeetingServer::start_on(net.gateway).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let pool = format!("f{}", std::process::id());
    let c = Controller::start(&net, &pool, data.path(), None, false).await;
    c.wait_for("a warm bot container", Duration::from_secs(90), "/v1/pool", |p| p["idle"] == 1).await;
    let inspect: Value = serde_json::from_str(&docker(&["inspect", &pool_containers(&pool)[0]])).unwrap();
    let recordings = data.path().join("recordings");
    assert_eq!(inspect[0]["HostConfig"]["Binds"], json!([format!("{0}:{0}", recordings.display())]), "only the recordings are mounted");

    let id = c.record(meeting.url("/m/folder?end=5")).await;
    let path = format!("/v1/recordings/{id}");
    let done = c.wait_for("finished", Duration::from_secs(120), &path, |r| r["status"] == "completed" || r["status"] == "failed").await;
    assert_eq!((done["status"].as_str(), done["partial"].as_bool()), (Some("completed"), Some(false)), "{done:#}");
    let p = recfleet_tests::media::probe(&recordings.join(&id).join("recording.mp4"));
    assert_eq!((p.video_codec.as_str(), p.audio_codec.as_deref()), ("h264", Some("aac")));
    assert!(p.faststart && p.duration_secs >= 3.0, "{p:?}");
    c.stop().await;
}

/// A controller that starts without the state of the one before (its data folder lost) finds
/// that one's bot containers by their pool label and removes them.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_controller_removes_orphaned_containers() {
    let (net, _s3) = network_with_bucket("orphans", "recfleet-orphans").await;
    let pool = format!("o{}", std::process::id());
    let first_data = tempfile::tempdir().unwrap();
    let first = Controller::start(&net, &pool, first_data.path(), Some("recfleet-orphans"), true).await;
    first.wait_for("a warm bot container", Duration::from_secs(90), "/v1/pool", |p| p["idle"] == 1).await;
    first.stop().await;
    let orphans: HashSet<String> = pool_containers(&pool).into_iter().collect();
    assert_eq!(orphans.len(), 1, "kept on exit (a restart would re-adopt it)");

    let second_data = tempfile::tempdir().unwrap();
    let second = Controller::start(&net, &pool, second_data.path(), Some("recfleet-orphans"), false).await;
    second.wait_for("its own warm bot", Duration::from_secs(90), "/v1/pool", |p| p["idle"] == 1).await;
    let now: HashSet<String> = pool_containers(&pool).into_iter().collect();
    assert!(now.is_disjoint(&orphans), "the orphan is removed: {orphans:?} still in {now:?}");
    assert_eq!(now.len(), 1);
    second.stop().await;
}

/// The single-host deployment file is valid for the Compose tool on this machine.
#[test]
fn the_compose_file_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../container");
    let out = std::process::Command::new("docker-compose")
        .args(["-f", "compose.yaml", "config", "-q"])
        .current_dir(&dir)
        .env("RECFLEET_API_KEY", "check")
        .output()
        .expect("docker-compose (Debian's docker-compose package)");
    assert!(out.status.success(), "compose.yaml: {}", String::from_utf8_lossy(&out.stderr));
}
