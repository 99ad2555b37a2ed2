//! The bot's side of the controller protocol, end to end: the real `recfleet-bot agent` warms up,
//! dials a WebSocket endpoint (played here by the test, standing in for the controller, which
//! checks the bearer token), says it is ready, records the meeting it is assigned with the real
//! Chromium, FFmpeg, Xvfb and PulseAudio, reports its timeline, segments and status, obeys
//! `Stop`, says `Finished` and exits.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use recfleet_proto::protocol::{Assignment, BotMessage, ControllerMessage, Outcome};
use recfleet_proto::{EventKind, RecordingStatus, SubCode};
use recfleet_tests::meeting::MeetingServer;
use tokio::sync::mpsc;

const TOKEN: &str = "launch-token-1";

#[derive(Clone)]
struct Endpoint {
    to_test: mpsc::UnboundedSender<BotMessage>,
    from_test: std::sync::Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<ControllerMessage>>>,
}

async fn connect(State(ep): State<Endpoint>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {TOKEN}")) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    ws.on_upgrade(move |socket| session(ep, socket))
}

async fn session(ep: Endpoint, mut socket: WebSocket) {
    let mut outgoing = ep.from_test.lock().await;
    loop {
        tokio::select! {
            frame = socket.recv() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let msg: BotMessage = serde_json::from_str(&text).expect("the bot speaks the protocol");
                    let _ = ep.to_test.send(msg);
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            Some(msg) = outgoing.recv() => {
                let text = serde_json::to_string(&msg).unwrap();
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn next_message(rx: &mut mpsc::UnboundedReceiver<BotMessage>, what: &str) -> BotMessage {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no message from the bot while waiting for {what}"))
        .unwrap_or_else(|| panic!("the bot's channel closed while waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_records_an_assignment_and_obeys_stop() {
    let meeting = MeetingServer::start().await.unwrap();
    let (to_test, mut from_bot) = mpsc::unbounded_channel();
    let (to_bot, from_test) = mpsc::unbounded_channel();
    let ep = Endpoint { to_test, from_test: std::sync::Arc::new(tokio::sync::Mutex::new(from_test)) };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/v1/bots/connect", get(connect)).with_state(ep);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let spool = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let mut bot = tokio::process::Command::new(recfleet_tests::binary("recfleet-bot"))
        .args(["agent", "--controller-url", &format!("ws://{addr}/v1/bots/connect"), "--bot-id", "bot-1"])
        .args(["--token", TOKEN, "--spool-dir"])
        .arg(spool.path())
        .arg("--store")
        .arg(format!("file://{}", store.path().display()))
        .env("RUST_LOG", "info,chromiumoxide=error")
        .env(recfleet_tests::serve::ALLOW_NETWORKS.0, recfleet_tests::serve::ALLOW_NETWORKS.1)
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Warm before assigned: a Hello that is not ready, then Ready.
    match next_message(&mut from_bot, "hello").await {
        BotMessage::Hello { bot_id, ready: false, recording_id: None, .. } => assert_eq!(bot_id, "bot-1"),
        other => panic!("expected a first Hello, got {other:?}"),
    }
    loop {
        match next_message(&mut from_bot, "ready").await {
            BotMessage::Ready => break,
            // A warning on the way (a slow warm-up on a cold machine) is forwarded, not fatal.
            BotMessage::Heartbeat { .. } | BotMessage::Log { .. } => {}
            other => panic!("expected Ready, got {other:?}"),
        }
    }

    let recipe = recfleet_proto::Recipe::from_json(recfleet_tests::meeting::RECIPE_JSON).unwrap();
    to_bot
        .send(ControllerMessage::Assign(Box::new(Assignment {
            recording_id: "rec-agent-1".into(),
            meeting_url: meeting.url("/m/agent?end=0"),
            bot_name: "Agent".into(),
            recipe: Some(recipe),
            max_duration_secs: Some(60),
            continuation: None,
        })))
        .unwrap();

    let mut statuses = Vec::new();
    let mut segments = 0;
    let mut stopped = false;
    let outcome = loop {
        match next_message(&mut from_bot, "the recording's progress").await {
            BotMessage::Timeline { recording_id, event } => {
                assert_eq!(recording_id, "rec-agent-1");
                if matches!(event.kind, EventKind::FirstSegment { .. }) && !stopped {
                    // Let it record a little, then stop it through the protocol.
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    to_bot.send(ControllerMessage::Stop { recording_id: "rec-agent-1".into() }).unwrap();
                    stopped = true;
                }
            }
            BotMessage::StateChanged { status, .. } => statuses.push(status),
            BotMessage::SegmentStored { segment, .. } => {
                assert_eq!(segment.sha256.len(), 64);
                segments += 1;
            }
            BotMessage::Finished { recording_id, outcome } => {
                assert_eq!(recording_id, "rec-agent-1");
                break outcome;
            }
            BotMessage::HandoffRequested { .. } | BotMessage::HandoffWithdrawn { .. } => panic!("nothing took this bot away"),
            BotMessage::Heartbeat { .. } | BotMessage::Log { .. } | BotMessage::Hello { .. } | BotMessage::Ready => {}
        }
    };
    let status = tokio::time::timeout(Duration::from_secs(30), bot.wait()).await.expect("the bot exits").unwrap();
    assert!(status.success(), "agent exit {status}");

    let Outcome::Completed { summary } = outcome else { panic!("expected a completed recording, got {outcome:?}") };
    assert_eq!(summary.sub_code, SubCode::StoppedByApi);
    assert_eq!(summary.status, RecordingStatus::Completed);
    assert!(stopped);
    for want in [RecordingStatus::Joining, RecordingStatus::Recording, RecordingStatus::Stopping, RecordingStatus::Completed] {
        assert!(statuses.contains(&want), "status {want:?} was reported: {statuses:?}");
    }
    // init.mp4 and every segment were reported.
    assert_eq!(segments, summary.segments + 1, "every segment and the init segment are reported");
    let upload = summary.upload.as_ref().expect("upload stats");
    assert!(upload.not_uploaded.is_empty() && upload.stored as usize == summary.segments + 2, "{upload:?}");
    // Everything is in the store; the spool, no longer needed, is gone.
    assert!(!spool.path().join("rec-agent-1").exists(), "the spool folder is removed once all is stored");
    let mp4 = store.path().join("recordings/rec-agent-1/recording.mp4");
    let p = recfleet_tests::media::probe(&mp4);
    assert_eq!((p.video_codec.as_str(), p.audio_codec.as_deref()), ("h264", Some("aac")));
    assert!(p.duration_secs >= 4.0, "{p:?}");
}
