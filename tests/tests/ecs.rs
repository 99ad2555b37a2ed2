//! `--runtime ecs` end to end: the real controller binary against moto's ECS and S3, with
//! `tests/ecs_agent.py` playing the ECS agent (each task moto runs is a container of the real bot
//! image on the test's Docker network). The controller, the meeting and moto listen on that
//! network's gateway, which the containers reach.

use std::time::{Duration, Instant};

use recfleet_storage::ObjectStore;
use recfleet_tests::docker::{assert_images_built, Net};
use recfleet_tests::ecs::EcsAgent;
use recfleet_tests::meeting::MeetingServer;
use recfleet_tests::pg::PgServer;
use recfleet_tests::serve::{Api, ServeProcess, Tag};
use serde_json::{json, Value};

const KEY: &str = "ecs-key";
const BOT_IMAGE: &str = "recfleet-bot:dev";

/// A test's AWS: a Docker network, moto and the harness on its gateway, the meeting there too.
struct Aws {
    net: Net,
    agent: EcsAgent,
    dir: tempfile::TempDir,
    pool: String,
}

impl Aws {
    fn start(name: &str) -> Aws {
        assert_images_built(&[BOT_IMAGE]);
        let net = Net::create(name);
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("tasks");
        std::fs::create_dir_all(&logs).unwrap();
        let agent = EcsAgent::start(&net.name, net.gateway, BOT_IMAGE, &logs);
        for (k, v) in agent.aws_env() {
            // SAFETY (edition 2021: safe fn): set before any thread reads the environment; the
            // controllers this test starts inherit it.
            std::env::set_var(k, v);
        }
        let pool = format!("{name}{}", std::process::id());
        Aws { net, agent, dir, pool }
    }

    /// `recfleet serve --runtime ecs` flags for this AWS; `extra` (flag and value pairs)
    /// replaces a flag's value or adds the flag.
    fn args(&self, port: u16, data: &str, extra: &[&str]) -> Vec<String> {
        let a = &self.agent;
        let mut args: Vec<String> = [
            "--runtime",
            "ecs",
            "--ecs-cluster",
            &a.cluster,
            "--ecs-task-definition",
            &a.task_definition,
            "--ecs-subnets",
            &a.subnet,
            "--ecs-security-groups",
            &a.security_group,
            "--store",
            &format!("s3://{}/fleet", a.bucket),
            "--s3-path-style",
            "--advertise-url",
            &format!("ws://{}:{port}", self.net.gateway),
            "--pool-name",
            &self.pool,
            "--api-key",
            KEY,
            "--data-dir",
            data,
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for pair in extra.chunks(2) {
            match args.iter().position(|a| a == pair[0]) {
                Some(at) => args[at + 1] = pair[1].to_string(),
                None => args.extend(pair.iter().map(|s| s.to_string())),
            }
        }
        args
    }

    fn serve(&self, tag: &Tag, port: u16, data: &str, extra: &[&str]) -> ServeProcess {
        ServeProcess::start_on(tag, self.net.gateway, port, &self.dir.path().join("serve.log"), &self.args(port, data, extra))
    }

    async fn pool_tasks(&self) -> Vec<Value> {
        self.agent.tasks().await.into_iter().filter(|t| t["started_by"] == self.pool.as_str()).collect()
    }

    /// Polls the harness's tasks until `check` holds.
    async fn wait_tasks(&self, what: &str, limit: Duration, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let tasks = self.pool_tasks().await;
            if check(&tasks) {
                return tasks;
            }
            assert!(started.elapsed() < limit, "{what} not reached within {limit:?}: {tasks:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn logs(&self, serve: &ServeProcess) -> String {
        format!("controller:\n{}\n{}", serve.log_text(), self.agent.container_logs())
    }
}

/// Dials the bots' endpoint as a task would, with `token`: the status of the answer.
async fn dial_as_task(base: &str, task_id: &str, token: &str) -> u16 {
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/bots/connect?task={task_id}"))
        .bearer_auth(token)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

/// A warm task records the bundled meeting into the bucket, and the MP4 plays through the API's
/// presigned link. The task's overrides carry no bot id and no lasting secret: its launch token,
/// once spent, is refused. A controller restarted on the same PostgreSQL re-adopts the idle
/// task by its tag (no new RunTask), and stops a task of its pool that no state knows. That
/// task then records until Spot takes its host back: the recording is what the bot stored,
/// `preempted`, and everything that reached the bucket is in it.
#[tokio::test(flavor = "multi_thread")]
async fn an_ecs_task_records_survives_a_controller_restart_and_a_spot_interruption() {
    let aws = Aws::start("ecs");
    let meeting = MeetingServer::start_on(aws.net.gateway).await.unwrap();
    let pg = PgServer::start();
    let tag = Tag::new();
    let port = recfleet_tests::free_port();
    let data = aws.dir.path().join("data").display().to_string();
    // Handoffs off: the interruption below ends the recording with what was stored (the
    // handoff itself is tested on the process and Docker runtimes).
    let db = ["--database-url", &pg.url(), "--pool-min-idle", "1", "--pool-max", "2", "--no-handoff"];
    let mut serve = aws.serve(&tag, port, &data, &db);
    let api = Api::new(&serve.base, KEY);
    api.wait_for("a warm task", Duration::from_secs(120), "/v1/pool", |p| p["idle"] == 1).await;

    let tasks = aws.pool_tasks().await;
    assert_eq!(tasks.len(), 1, "{tasks:#?}");
    let task = &tasks[0];
    let bot_id = task["tags"]["recfleet.bot_id"].as_str().unwrap_or_else(|| panic!("no bot tag: {task:#}"));
    assert!(bot_id.starts_with("bot_"), "{task:#}");
    assert_eq!(task["tags"]["recfleet.pool"], aws.pool.as_str());
    let calls = aws.agent.calls().await;
    assert_eq!(calls.len(), 1, "one RunTask: {calls:#?}");
    assert_eq!((calls[0]["count"].as_i64(), calls[0]["started_by"].as_str()), (Some(1), Some(aws.pool.as_str())));
    let overrides = &task["overrides"];
    assert!(overrides.get("RECFLEET_BOT_ID").is_none() && overrides.get("RECFLEET_BOT_TOKEN").is_none(), "{overrides:#}");
    let launch_token = overrides["RECFLEET_LAUNCH_TOKEN"].as_str().unwrap_or_else(|| panic!("no launch token: {overrides:#}"));
    let task_id = task["id"].as_str().unwrap();
    assert_eq!(dial_as_task(&serve.base, task_id, launch_token).await, 401, "a spent launch token is refused");
    assert_eq!(dial_as_task(&serve.base, "not-a-task-of-ours", launch_token).await, 503, "an unknown task is told to retry");

    let (status, _, rec) =
        api.post("/v1/recordings", &json!({"meeting_url": meeting.url("/m/ecs?end=8"), "recipe_name": "recfleet-test-meeting"})).await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_string();
    let path = format!("/v1/recordings/{id}");
    let done = api.wait_for("finished", Duration::from_secs(120), &path, |r| r["status"] == "completed" || r["status"] == "failed").await;
    assert_eq!(
        (done["status"].as_str(), done["sub_code"].as_str(), done["partial"].as_bool()),
        (Some("completed"), Some("meeting_ended"), Some(false)),
        "{done:#}\n{}",
        aws.logs(&serve)
    );
    let p = recfleet_tests::media::playable(&api.http, &done).await;
    assert!(p.duration_secs >= 5.0 && p.duration_secs <= 9.5, "an 8 s meeting: {} s", p.duration_secs);
    // The single-use bot's task ends with its container's success, and a new one is warm.
    aws.wait_tasks("the first task stopped", Duration::from_secs(60), |ts| {
        ts.iter().any(|t| {
            t["id"] == task_id && t["last_status"] == "STOPPED" && t["stop_code"] == "EssentialContainerExited" && t["exit_code"] == 0
        })
    })
    .await;
    api.wait_for("a fresh warm task", Duration::from_secs(120), "/v1/pool", |p| p["idle"] == 1 && p["busy"] == 0).await;
    let warm = aws
        .wait_tasks("the second task", Duration::from_secs(10), |ts| ts.iter().filter(|t| t["container_running"] == true).count() == 1)
        .await;
    let warm = warm.iter().find(|t| t["container_running"] == true).unwrap()["id"].as_str().unwrap().to_string();

    // The controller stops (its bots stay); a task of the pool appears that no state knows.
    serve.signal(libc::SIGTERM);
    assert!(serve.wait_exit(Duration::from_secs(20)).is_some_and(|s| s.success()), "{}", serve.log_text());
    let stray_env = json!({
        "RECFLEET_CONTROLLER_URL": format!("ws://{}:{port}/v1/bots/connect", aws.net.gateway),
        "RECFLEET_LAUNCH_TOKEN": "not-one-we-issued",
    });
    let stray = aws.agent.foreign_task(&aws.pool, stray_env, json!({"recfleet.pool": aws.pool, "recfleet.bot_id": "bot_nobody"})).await;
    let stray_id = stray["id"].as_str().unwrap().to_string();
    aws.wait_tasks("the stray running", Duration::from_secs(30), |ts| {
        ts.iter().any(|t| t["id"] == stray_id.as_str() && t["container_running"] == true)
    })
    .await;

    let calls_before = aws.agent.calls().await.len();
    let serve = aws.serve(&tag, port, &data, &db);
    let api = Api::new(&serve.base, KEY);
    let stopped = aws
        .wait_tasks("the stray stopped", Duration::from_secs(60), |ts| {
            ts.iter().any(|t| t["id"] == stray_id.as_str() && t["last_status"] == "STOPPED" && t["container_running"] == false)
        })
        .await;
    let stray = stopped.iter().find(|t| t["id"] == stray_id.as_str()).unwrap();
    assert!(stray["stopped_reason"].as_str().unwrap_or("").contains("no controller state knows"), "{stray:#}");
    api.wait_for("the idle task re-adopted", Duration::from_secs(30), "/v1/pool", |p| p["idle"] == 1 && p["starting"] == 0).await;
    let tasks = aws.pool_tasks().await;
    let warm_task = tasks.iter().find(|t| t["id"] == warm.as_str()).unwrap();
    assert_eq!(
        (warm_task["last_status"].as_str(), warm_task["container_running"].as_bool()),
        (Some("RUNNING"), Some(true)),
        "{warm_task:#}\n{}",
        aws.logs(&serve)
    );
    assert_eq!(aws.agent.calls().await.len(), calls_before, "re-adopted, not launched again: {}", aws.logs(&serve));

    // The re-adopted task records; Spot takes its host back mid-meeting. The bot stores what it
    // has within the stop timeout, and the recording says why it ended.
    let (status, _, rec) =
        api.post("/v1/recordings", &json!({"meeting_url": meeting.url("/m/ecs-spot?end=0"), "recipe_name": "recfleet-test-meeting"})).await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_string();
    let path = format!("/v1/recordings/{id}");
    api.wait_for("recording", Duration::from_secs(60), &path, |r| r["status"] == "recording").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    aws.agent.spot_interrupt(&warm).await;
    let done = api.wait_for("finished", Duration::from_secs(60), &path, |r| r["status"] == "completed" || r["status"] == "failed").await;
    assert_eq!(
        (done["status"].as_str(), done["sub_code"].as_str()),
        (Some("completed"), Some("preempted")),
        "{done:#}\n{}",
        aws.logs(&serve)
    );
    let p = recfleet_tests::media::playable(&api.http, &done).await;
    assert!(p.duration_secs >= 4.0, "what was recorded before the interruption: {} s", p.duration_secs);
    assert_eq!(api.metric("recfleet_recording_handoffs_total").await, 1.0, "the bot asked for a successor and was refused");
    let stopped = aws
        .wait_tasks("the interrupted task stopped", Duration::from_secs(40), |ts| {
            ts.iter().any(|t| t["id"] == warm.as_str() && t["last_status"] == "STOPPED")
        })
        .await;
    let task = stopped.iter().find(|t| t["id"] == warm.as_str()).unwrap();
    assert_eq!((task["stop_code"].as_str(), task["exit_code"].as_i64()), (Some("SpotInterruption"), Some(0)), "{task:#}");
    // Nothing that reached the bucket is lost: every stored segment is in the final manifest,
    // byte for byte.
    let store = recfleet_tests::s3::store(&aws.agent.bucket, "fleet").await;
    let prefix = format!("recordings/{id}/");
    let manifest: Value =
        serde_json::from_slice(&store.get(&format!("{prefix}manifest.json")).await.unwrap().expect("a manifest")).unwrap();
    let listed = manifest["segments"].as_array().unwrap();
    for seg in listed {
        let name = seg["name"].as_str().unwrap();
        let bytes = store.get(&format!("{prefix}{name}")).await.unwrap().unwrap_or_else(|| panic!("{name} is not in the bucket"));
        assert_eq!(recfleet_media::sha256_hex(&bytes), seg["sha256"].as_str().unwrap(), "{name}");
    }
    let stored = store.list(&prefix).await.unwrap().into_iter().filter(|o| o.name.starts_with("seg_")).count();
    assert_eq!(stored, listed.len(), "every stored segment is in the recording: {manifest:#}");
    api.wait_for("the pool refilled", Duration::from_secs(120), "/v1/pool", |p| p["idle"] == 1).await;
    // Counted once the reconcile (every 5 s) sees the task stopped.
    let started = Instant::now();
    while api.metric("recfleet_pool_bots_preempted_total").await < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(20), "the preemption is counted");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What can be checked at start is, naming the flag: a missing cluster, a task definition that
/// does not exist, a store the tasks cannot share. Subnets that RunTask refuses show on
/// `/v1/pool` and as a metric, the pool backs off, the controller stays up and no task is left.
#[tokio::test(flavor = "multi_thread")]
async fn ecs_configuration_errors_are_named_and_refused_launches_back_off() {
    let aws = Aws::start("ecsbad");
    let port = recfleet_tests::free_port();
    let data = aws.dir.path().join("data").display().to_string();
    let refused = |extra: &[&str]| {
        let out = std::process::Command::new(recfleet_tests::binary("recfleet"))
            .arg("serve")
            .args(["--listen", &format!("{}:{port}", aws.net.gateway)])
            .args(aws.args(port, &data, extra))
            .output()
            .expect("recfleet serve runs");
        assert_eq!(out.status.code(), Some(2), "{extra:?} must be refused at start");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = refused(&["--ecs-cluster", "nope"]);
    assert!(err.contains("--ecs-cluster nope: no such cluster"), "{err}");
    let err = refused(&["--ecs-task-definition", "nope:7"]);
    assert!(err.contains("--ecs-task-definition nope:7"), "{err}");
    let err = refused(&["--ecs-container", "recorder"]);
    assert!(err.contains("--ecs-container recorder") && err.contains("it has: bot"), "{err}");
    let err = refused(&["--store", &format!("file://{data}")]);
    assert!(err.contains("s3:// --store"), "{err}");
    let err = refused(&["--ecs-capacity-provider-strategy", "FARGATE_SPOT"]);
    assert!(err.contains("--ecs-capacity-provider-strategy"), "{err}");

    let tag = Tag::new();
    let serve = aws.serve(&tag, port, &data, &["--ecs-subnets", "subnet-nope"]);
    let api = Api::new(&serve.base, KEY);
    let pool = api.wait_for("the pool backing off", Duration::from_secs(30), "/v1/pool", |p| !p["backoff"].is_null()).await;
    let reason = pool["backoff"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("RunTask") && reason.contains("InvalidSubnetID.NotFound"), "{pool:#}");
    assert!(api.metric("recfleet_pool_launch_failures_total").await >= 1.0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let calls = aws.agent.calls().await.len();
    assert!((1..=4).contains(&calls), "backing off, not spinning: {calls} RunTask calls in about 6 s");
    assert!(aws.pool_tasks().await.is_empty(), "no task left");
    let (status, _, _) = api.call(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(status, 200, "still up: {}", serve.log_text());
}

/// A burst of 8 requests against `--pool-min-idle 1 --pool-max 8`: one takes the warm task, the
/// other seven queue with their place and an estimated start, and their tasks are launched
/// together (RunTask counts, at most 10 a call, checked on moto). The pool's target rises with
/// the demand and, once the burst is over and the idle TTL has passed, the pool is back to one
/// warm task.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_8_launches_in_batches_and_the_pool_shrinks_back_after_the_idle_ttl() {
    let aws = Aws::start("ecsburst");
    let meeting = MeetingServer::start_on(aws.net.gateway).await.unwrap();
    let tag = Tag::new();
    let port = recfleet_tests::free_port();
    let data = aws.dir.path().join("data").display().to_string();
    let serve = aws.serve(
        &tag,
        port,
        &data,
        &["--pool-min-idle", "1", "--pool-max", "8", "--pool-idle-ttl-secs", "5", "--pool-demand-window-secs", "20", "--stop-bots-on-exit"],
    );
    let api = Api::new(&serve.base, KEY);
    let warm = api.wait_for("a warm task", Duration::from_secs(120), "/v1/pool", |p| p["idle"] == 1).await;
    assert!(warm["launch_secs"].as_f64().is_some_and(|s| s > 0.0), "the first launch is measured: {warm:#}");
    assert_eq!(warm["target_idle"], 1, "{warm:#}");
    let before = aws.agent.calls().await.len();

    let burst = (0..8).map(|i| {
        let body = json!({"meeting_url": meeting.url(&format!("/m/burst-{i}?end=3")), "recipe_name": "recfleet-test-meeting"});
        let api = &api;
        async move { api.post("/v1/recordings", &body).await }
    });
    let answers = futures::future::join_all(burst).await;
    let mut places = Vec::new();
    for (status, _, rec) in &answers {
        assert_eq!(*status, 201, "{rec}");
        if let Some(queue) = rec.get("queue") {
            assert_eq!(rec["status"], "queued", "{rec:#}");
            let eta = queue["estimated_start_secs"].as_f64().unwrap_or_else(|| panic!("a bot is coming for each: {rec:#}"));
            assert!((0.0..=120.0).contains(&eta), "{rec:#}");
            places.push(queue["position"].as_u64().unwrap());
        }
    }
    places.sort();
    assert_eq!(places, (1..=7).collect::<Vec<u64>>(), "one request took the warm task, seven queued in order: {answers:#?}");
    let pool = api.get("/v1/pool").await;
    assert!(pool["target_idle"].as_u64().unwrap() > 1, "8 requests in the window raise the target: {pool:#}");

    // Seven tasks, launched together: batched calls of at most 10.
    let started = Instant::now();
    let launched = loop {
        let calls: Vec<Value> = aws.agent.calls().await.into_iter().skip(before).collect();
        let asked: u64 = calls.iter().map(|c| c["count"].as_u64().unwrap_or(1)).sum();
        if asked >= 7 {
            break calls;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "7 launches asked: {calls:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let first_seven: Vec<u64> = launched.iter().map(|c| c["count"].as_u64().unwrap_or(1)).collect();
    eprintln!("RunTask counts after the burst: {first_seven:?}");
    assert!(first_seven.iter().all(|n| *n <= 10), "{launched:#?}");
    // The requests reach the manager one by one (each written first); the launches they cause
    // within 200 ms share a call.
    assert!(launched.len() <= 3, "the burst's launches are batched, not one call each: {first_seven:?}");

    // Every request gets a task and ends; then the pool is one warm task again.
    let ids: Vec<String> = answers.iter().map(|(_, _, r)| r["id"].as_str().unwrap().to_string()).collect();
    for id in &ids {
        let path = format!("/v1/recordings/{id}");
        let done =
            api.wait_for("finished", Duration::from_secs(240), &path, |r| r["status"] == "completed" || r["status"] == "failed").await;
        assert!(done["joined_at"].is_string(), "every request got a bot that joined: {done:#}\n{}", aws.logs(&serve));
    }
    let mut most_idle = 0;
    let started = Instant::now();
    loop {
        let p = api.get("/v1/pool").await;
        most_idle = most_idle.max(p["idle"].as_u64().unwrap());
        if p["idle"] == 1 && p["starting"] == 0 && p["busy"] == 0 && p["target_idle"] == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "back to one warm task after the TTL: {p:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("most idle tasks after the burst: {most_idle}");
    let running = aws
        .wait_tasks("one running task", Duration::from_secs(60), |t| t.iter().filter(|t| t["last_status"] != "STOPPED").count() == 1)
        .await;
    assert!(running.len() >= 9, "8 recorded, 1 warm: {} tasks in all", running.len());
}

/// Credentials whose policy does not allow `ecs:RunTask` (moto evaluates IAM policies here):
/// the controller starts (what it checks at start is allowed), the refused launches show on
/// `/v1/pool` and as a metric, the pool backs off, and no task is made.
#[tokio::test(flavor = "multi_thread")]
async fn access_denied_on_run_task_backs_off_with_the_cause_shown() {
    let aws = Aws::start("ecsdeny");
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": ["ecs:DescribeClusters", "ecs:DescribeTaskDefinition", "ecs:DescribeTasks", "ecs:ListTasks", "ecs:StopTask", "ecs:TagResource", "s3:*"],
            "Resource": "*"
        }]
    });
    let (key, secret) = aws.agent.enforce_iam(policy).await;
    // SAFETY (edition 2021: safe fn): set before the controller starts; it inherits them.
    std::env::set_var("AWS_ACCESS_KEY_ID", key);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", secret);
    let tag = Tag::new();
    let port = recfleet_tests::free_port();
    let data = aws.dir.path().join("data").display().to_string();
    let serve = aws.serve(&tag, port, &data, &[]);
    let api = Api::new(&serve.base, KEY);
    let pool = api.wait_for("the pool backing off", Duration::from_secs(30), "/v1/pool", |p| !p["backoff"].is_null()).await;
    let reason = pool["backoff"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("RunTask") && reason.contains("AccessDenied"), "{pool:#}\n{}", serve.log_text());
    assert!(api.metric("recfleet_pool_launch_failures_total").await >= 1.0);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let calls = aws.agent.calls().await;
    assert!(calls.is_empty(), "IAM refused RunTask before moto ran it: {calls:#?}");
    assert!(aws.pool_tasks().await.is_empty(), "no task made");
    let (status, _, _) = api.call(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(status, 200, "still up");
}
