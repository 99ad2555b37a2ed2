//! AWS ECS for the tests: `tests/ecs_agent.py` runs moto's server (ECS, EC2, S3) and plays the
//! ECS agent, starting every task moto lists as running as a container of the bot image on the
//! test's Docker network (see that file). Its control endpoint shows the tasks and the RunTask
//! calls, and interrupts a task as Spot would.

use std::io::BufRead;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

/// moto's fixed credentials are any; these are the test's.
pub const ACCESS_KEY: &str = "test";
pub const SECRET_KEY: &str = "test";

/// The harness, with what it made: a cluster, the bot's task definition, a subnet and security
/// group, and a bucket.
#[derive(Debug)]
pub struct EcsAgent {
    child: Child,
    /// moto's endpoint (`AWS_ENDPOINT_URL`), on the network's gateway.
    pub endpoint: String,
    control: String,
    pub cluster: String,
    pub task_definition: String,
    pub subnet: String,
    pub security_group: String,
    pub bucket: String,
    pub region: String,
    /// Where each task container's log is written when it exits.
    pub logs: PathBuf,
    http: reqwest::Client,
}

impl EcsAgent {
    /// Starts the harness on `host` (the gateway of `network`), running tasks with `image`.
    pub fn start(network: &str, host: IpAddr, image: &str, logs: &Path) -> EcsAgent {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ecs_agent.py");
        let stderr = std::fs::File::create(logs.join("ecs_agent.log")).expect("the harness log opens");
        let mut child = Command::new(crate::tool("python"))
            .arg(script)
            .args(["--network", network, "--host", &host.to_string(), "--image", image, "--logs"])
            .arg(logs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("the ECS harness starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("the harness says where it is");
        let info: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            panic!(
                "the ECS harness did not start: {line:?}; log:\n{}",
                std::fs::read_to_string(logs.join("ecs_agent.log")).unwrap_or_default()
            )
        });
        let text = |k: &str| info[k].as_str().unwrap_or_else(|| panic!("no {k} in {info}")).to_string();
        EcsAgent {
            child,
            endpoint: text("endpoint"),
            control: text("control"),
            cluster: text("cluster"),
            task_definition: text("task_definition"),
            subnet: text("subnet"),
            security_group: text("security_group"),
            bucket: text("bucket"),
            region: text("region"),
            logs: logs.to_path_buf(),
            http: reqwest::Client::new(),
        }
    }

    /// The AWS settings a controller (or a test's S3 client) uses with this moto.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", self.region.clone()),
            // moto never throttles; a test sees each call once.
            ("AWS_MAX_ATTEMPTS", "1".into()),
        ]
    }

    async fn get(&self, path: &str) -> Value {
        self.http.get(format!("{}{path}", self.control)).send().await.unwrap().json().await.unwrap()
    }

    /// Every task moto knows, as the harness sees it (`id`, `last_status`, `desired_status`,
    /// `stop_code`, `stopped_reason`, `started_by`, `tags`, `container_running`, `exit_code`).
    pub async fn tasks(&self) -> Vec<Value> {
        self.get("/tasks").await.as_array().cloned().unwrap_or_default()
    }

    /// The RunTask calls so far (`count` asked, `started`, `started_by`).
    pub async fn calls(&self) -> Vec<Value> {
        self.get("/calls").await.as_array().cloned().unwrap_or_default()
    }

    /// Interrupts a task as Fargate Spot does: SIGTERM, the stop timeout, then stop code
    /// `SpotInterruption`.
    pub async fn spot_interrupt(&self, task_id: &str) -> Value {
        let resp = self.http.post(format!("{}/spot/{task_id}", self.control)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "spot interruption of {task_id}");
        resp.json().await.unwrap()
    }

    /// Starts a task in the pool `started_by` that no controller launched, with `env` as its
    /// overrides and `tags`.
    pub async fn foreign_task(&self, started_by: &str, env: Value, tags: Value) -> Value {
        let body = json!({"started_by": started_by, "env": env, "tags": tags});
        self.http.post(format!("{}/foreign", self.control)).json(&body).send().await.unwrap().json().await.unwrap()
    }

    /// An IAM user allowed what `policy` allows, and its access key and secret. From then on
    /// moto checks every request's signature and evaluates the caller's policies, as AWS does.
    pub async fn enforce_iam(&self, policy: Value) -> (String, String) {
        let resp = self.http.post(format!("{}/iam", self.control)).json(&json!({"policy": policy})).send().await.unwrap();
        assert_eq!(resp.status(), 200, "the IAM user is made");
        let keys: Value = resp.json().await.unwrap();
        (keys["access_key_id"].as_str().unwrap().to_string(), keys["secret_access_key"].as_str().unwrap().to_string())
    }

    /// The log of an exited task's container, or of all of them.
    pub fn container_logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(&self.logs).into_iter().flatten().flatten() {
            out.push_str(&format!("== {}\n{}\n", entry.path().display(), std::fs::read_to_string(entry.path()).unwrap_or_default()));
        }
        out
    }
}

impl Drop for EcsAgent {
    fn drop(&mut self) {
        // SIGTERM: the harness removes its containers, then exits.
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
