//! Hostile input: URLs that would point the recorder at what it must never reach. Run in a
//! network namespace of the test's own (`recfleet_tests::netns`) with stand-in cloud metadata
//! servers on 169.254.169.254 and 169.254.170.2 and host names from its own hosts file.

use std::time::{Duration, Instant};

use recfleet_tests::netns::{self, Netns};
use serde_json::{json, Value};

const KEY: &str = "hostile-test-key";
const PORT: u16 = 8700;

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The controller inside `ns` (loopback allowed, for the receiver), with no real bots: webhooks
/// fire on a queued recording's status changes, which is all these tests need.
fn controller(ns: &mut Netns, dir: &std::path::Path) -> std::path::PathBuf {
    let log = dir.join("controller.log");
    let child = ns
        .command(recfleet_tests::binary("recfleet"))
        .args(["serve", "--listen", &format!("127.0.0.1:{PORT}"), "--api-key", KEY, "--allow-networks", "loopback"])
        .args(["--pool-min-idle", "0", "--pool-max", "1", "--bot-binary", "/bin/true", "--data-dir"])
        .arg(dir.join("data"))
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("recfleet serve starts in the namespace");
    ns.keep(child);
    ns.wait_listening("127.0.0.1", PORT);
    log
}

fn api(ns: &Netns, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let (status, text) = ns.http(method, &format!("http://127.0.0.1:{PORT}{path}"), Some(KEY), body);
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn metric(ns: &Netns, line_start: &str) -> f64 {
    let (_, text) = ns.http("GET", &format!("http://127.0.0.1:{PORT}/metrics"), None, None);
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// A webhook URL on a metadata address, in any spelling or behind a name, is refused at the
/// request (422); one whose name is repointed there after the request is refused at delivery,
/// without a retry, and the metadata server never hears of it.
#[test]
fn webhooks_never_reach_a_metadata_address_neither_at_the_request_nor_after_a_dns_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut ns = Netns::new("hooks");
    ns.start_metadata_servers(dir.path());
    let receiver_log = dir.path().join("receiver.log");
    ns.start_server("127.0.0.1", 80, &receiver_log);
    ns.set_hosts(&[("hooks.test", "127.0.0.1"), ("meta.test", "169.254.169.254"), ("creds.test", "169.254.170.2")]);
    let log = controller(&mut ns, dir.path());

    for hook in [
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/latest/meta-data/",
        "http://[::ffff:169.254.170.2]/v2/credentials",
        "http://169.254.170.2/v2/credentials",
        "http://meta.test/hook",
        "http://creds.test/hook",
        "http://10.0.0.1/hook",
    ] {
        let body = json!({"meeting_url": "https://meet.example.com/a", "webhook_url": hook});
        let (status, answer) = api(&ns, "POST", "/v1/recordings", Some(&body));
        assert_eq!((status, answer["error"]["code"].as_str()), (422, Some("invalid_webhook_url")), "{hook}: {answer}");
    }
    for meeting in ["http://meta.test/m", "http://creds.test/m", "http://169.254.169.254/m"] {
        let (status, answer) = api(&ns, "POST", "/v1/recordings", Some(&json!({"meeting_url": meeting})));
        assert_eq!((status, answer["error"]["code"].as_str()), (422, Some("invalid_url")), "{meeting}: {answer}");
    }

    // Accepted while the name is the (allowed) loopback receiver, and delivered there.
    let body = json!({"meeting_url": "https://meet.example.com/b", "webhook_url": "http://hooks.test/hook"});
    let (status, created) = api(&ns, "POST", "/v1/recordings", Some(&body));
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let received = || std::fs::read_to_string(&receiver_log).unwrap_or_default().lines().count();
    wait_for("the first webhook reaches the receiver", Duration::from_secs(15), || received() >= 1);
    let delivered = metric(&ns, "recfleet_webhook_deliveries_total{result=\"delivered\"}");

    // Rebinding: the same name now points at the metadata server.
    ns.set_hosts(&[("hooks.test", "169.254.169.254")]);
    let (status, stopped) = api(&ns, "POST", &format!("/v1/recordings/{id}/stop"), None);
    assert!(status < 300, "stop: {status} {stopped}");
    wait_for("the next delivery is refused", Duration::from_secs(15), || {
        metric(&ns, "recfleet_webhook_deliveries_total{result=\"refused\"}") >= 1.0
    });
    std::thread::sleep(Duration::from_secs(3));

    assert!(netns::metadata_hits(dir.path()).is_empty(), "the metadata servers were reached: {:?}", netns::metadata_hits(dir.path()));
    assert_eq!(received(), delivered as usize, "nothing more reached the receiver");
    let refused = metric(&ns, "recfleet_webhook_deliveries_total{result=\"refused\"}");
    let failed = metric(&ns, "recfleet_webhook_deliveries_total{result=\"failed\"}");
    assert_eq!(failed, 0.0, "a refusal is not retried (no failed attempts): refused {refused}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("refused by the address policy"), "the refusal is logged:\n{text}");
    assert!(text.contains("169.254.169.254") && text.contains("metadata"), "with the address and why:\n{text}");
    assert!(!text.contains(netns::SECRET));
}

/// `?`, `=`, `&`, `/` and `:` escaped for a query value.
fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A meeting page that, after the join, embeds a metadata address in an iframe and an image and
/// then navigates there (by a redirect, from script, by an IP and by a host name that resolves
/// to it): the bot's browser never gets an answer from there, the recording never shows the
/// secret page and goes on to the meeting's real end, and each refusal is on the timeline and in
/// the bot's log.
#[tokio::test(flavor = "multi_thread")]
async fn a_meeting_page_cannot_lead_the_browser_to_the_metadata_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut ns = Netns::new("page");
    ns.start_metadata_servers(dir.path());
    ns.set_hosts(&[("metadata.test", "169.254.169.254"), ("creds.test", "169.254.170.2")]);
    let meeting = ns
        .command(recfleet_tests::binary("recfleet-meeting"))
        .args(["--listen", "127.0.0.1:8080"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the test meeting starts in the namespace");
    ns.keep(meeting);
    ns.wait_listening("127.0.0.1", 8080);
    let recipe = recfleet_tests::meeting_dir().join("recipe.json").to_string_lossy().into_owned();

    // (case, iframe and image, navigation, refused targets). Over HTTPS the refused tunnel shows
    // the browser's error page, which the bot leaves by rejoining (the meeting's own clock keeps
    // its end, and the page attacks only on its first entry).
    let cases = [
        (
            "redirect",
            "http://169.254.170.2/v2/credentials",
            "/go?to=http://169.254.169.254/latest/meta-data/",
            ["169.254.170.2:80", "169.254.169.254:80"],
        ),
        (
            "script",
            "http://[::ffff:169.254.170.2]/v2/credentials",
            "http://169.254.169.254/latest/meta-data/iam/",
            ["[::ffff:a9fe:aa02]:80", "169.254.169.254:80"],
        ),
        ("by-name", "http://creds.test/v2/credentials", "http://metadata.test/latest/meta-data/", ["creds.test:80", "metadata.test:80"]),
        (
            "https",
            "https://169.254.170.2/v2/credentials",
            "https://169.254.169.254/latest/meta-data/",
            ["169.254.170.2:443", "169.254.169.254:443"],
        ),
    ];
    for (case, embed, navigate, targets) in cases {
        let out = dir.path().join(case);
        let url =
            format!("http://127.0.0.1:8080/m/{case}?end=8&clock=meeting&embed={}&navigate={}", query_value(embed), query_value(navigate));
        let bot = recfleet_tests::bot::spawn_record_in_netns(
            &ns.name,
            &out,
            &["--url", &url, "--recipe", &recipe, "--allow-networks", "loopback"],
        );
        let run = bot.finish(Duration::from_secs(90)).await;
        run.assert_exit(0);
        let summary = run.summary();
        assert_eq!(
            (summary["status"].as_str(), summary["sub_code"].as_str()),
            (Some("completed"), Some("meeting_ended")),
            "{case}: {summary:#}"
        );

        let refused: Vec<(String, String)> = run
            .events_of("request_refused")
            .iter()
            .map(|e| (e["target"].as_str().unwrap_or_default().to_string(), e["reason"].as_str().unwrap_or_default().to_string()))
            .collect();
        for target in targets {
            assert!(refused.contains(&(target.to_string(), "metadata".to_string())), "{case}: {target} refused as metadata: {refused:?}");
        }
        assert!(run.stderr.contains("refused a request by the address policy"), "{case}: the refusal is in the bot's log");
        assert!(!run.stderr.contains(netns::SECRET), "{case}: the secret reached the bot's log");
        let (lost, rejoined) = (run.events_of("browser_lost"), run.events_of("rejoined"));
        if case == "https" {
            assert_eq!((lost.len(), rejoined.len()), (1, 1), "{case}: the error page is left by one rejoin: {:#}", run.events());
            assert!(lost[0]["reason"].as_str().unwrap_or_default().contains("error page"), "{case}: {:#}", lost[0]);
        } else {
            assert!(lost.is_empty(), "{case}: a refused plain-HTTP load keeps the meeting page: {:#}", run.events());
        }

        let mp4 = run.mp4();
        let probe = recfleet_tests::media::probe(&mp4);
        assert!((probe.duration_secs - 8.0).abs() < 2.5, "{case}: the meeting recorded to its end: {probe:?}");
        let frames = recfleet_tests::media::frames(&mp4, 4.0);
        let worst = frames.iter().map(|f| f.share_near(netns::SECRET_RGB, 40)).fold(0.0, f64::max);
        assert!(worst < 0.001, "{case}: a frame shows the secret page ({:.1}% of it)", worst * 100.0);
        // The call view is still there after the attacks (3 s after the join and on).
        let late = recfleet_tests::media::frame_at(&mp4, (probe.duration_secs - 1.5).max(0.0));
        assert!(late.mean_luma() < 90.0, "{case}: the call view is gone after the attacks (luma {:.0})", late.mean_luma());
    }
    assert!(
        netns::metadata_hits(dir.path()).is_empty(),
        "the stand-in metadata servers were reached: {:?}",
        netns::metadata_hits(dir.path())
    );
}
