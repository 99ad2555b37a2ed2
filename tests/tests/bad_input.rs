//! Bad input gets a clear error, a stable code and exit code, no panic and no orphan process:
//! an unreachable meeting, a recipe with an unknown step or a selector the browser refuses, an
//! output folder that cannot be written, and a URL that is not http(s).

use std::time::Duration;

use recfleet_tests::bot::{self, BotRun};

const LIMIT: Duration = Duration::from_secs(90);

fn error_code(run: &BotRun) -> String {
    run.summary()["error"]["code"].as_str().unwrap_or_default().to_string()
}

fn assert_clean(run: &BotRun) {
    let left = run.leftovers();
    assert!(left.is_empty(), "the bot left processes running: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_meeting_fails_to_join_after_retries() {
    let out = tempfile::tempdir().unwrap();
    // Port 9 on loopback: nothing listens, the connection is refused at once.
    let run = bot::record(out.path(), &["--url", "http://127.0.0.1:9/m/x", "--join-attempts", "3"], LIMIT).await;
    run.assert_exit(3);
    assert_eq!(error_code(&run), "not_joined");
    assert_eq!(run.summary()["sub_code"], "join_failed");
    assert_eq!(run.events_of("join_attempt_failed").len(), 3, "{:#}", run.events());
    assert!(run.summary()["error"]["message"].as_str().unwrap().contains("127.0.0.1:9"));
    assert!(!run.mp4().exists());
    assert_clean(&run);
}

#[tokio::test(flavor = "multi_thread")]
async fn recipe_with_an_unknown_step_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("r.json");
    std::fs::write(&recipe, r##"{"name":"x","steps":[{"hover":"#join"}]}"##).unwrap();
    let run = bot::record(&dir.path().join("out"), &["--url", "http://127.0.0.1:9/", "--recipe", recipe.to_str().unwrap()], LIMIT).await;
    run.assert_exit(2);
    assert_eq!(error_code(&run), "invalid_recipe");
    let message = run.summary()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("hover") && message.contains("unknown step"), "{message}");
    assert_clean(&run);
}

#[tokio::test(flavor = "multi_thread")]
async fn selector_the_browser_cannot_parse_is_refused() {
    // Balanced, so the pure check lets it through; Chromium's selector parser refuses it.
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("r.json");
    std::fs::write(&recipe, r##"{"name":"x","steps":[{"click":"#join::bogus-pseudo"}]}"##).unwrap();
    let run = bot::record(&dir.path().join("out"), &["--url", "http://127.0.0.1:9/", "--recipe", recipe.to_str().unwrap()], LIMIT).await;
    run.assert_exit(2);
    assert_eq!(error_code(&run), "invalid_recipe");
    let message = run.summary()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("steps[0].click"), "{message}");
    assert_clean(&run);
}

#[tokio::test(flavor = "multi_thread")]
async fn unwritable_output_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    // A folder inside a regular file cannot exist, even for root.
    let run = bot::record(&file.join("out"), &["--url", "http://127.0.0.1:9/"], LIMIT).await;
    run.assert_exit(4);
    assert_eq!(error_code(&run), "output_not_writable");
    assert!(run.summary()["error"]["message"].as_str().unwrap().contains("a-file"));
    assert_clean(&run);
}

#[tokio::test(flavor = "multi_thread")]
async fn non_http_url_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let run = bot::record(out.path(), &["--url", "file:///etc/passwd"], LIMIT).await;
    run.assert_exit(2);
    assert_eq!(error_code(&run), "invalid_url");
    assert_eq!(run.summary()["sub_code"], "invalid_url");
    assert_clean(&run);
}

#[tokio::test(flavor = "multi_thread")]
async fn existing_recording_is_never_overwritten() {
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("recording.mp4"), b"an earlier recording").unwrap();
    let run = bot::record(out.path(), &["--url", "http://127.0.0.1:9/"], LIMIT).await;
    run.assert_exit(4);
    assert_eq!(std::fs::read(out.path().join("recording.mp4")).unwrap(), b"an earlier recording");
    assert_clean(&run);
}
