//! The `ecs` runtime: each bot is an ECS task (Fargate, Fargate Spot or an EC2 capacity
//! provider), through aws-sdk-ecs with the standard AWS configuration.
//!
//! - Launch: the bots the pool asks for within a short window go out in one RunTask (`count`, at
//!   most 10), calls paced under the API's throttle and throttling retried with backoff, never
//!   dropped. Tasks of one call share their overrides, so they carry no bot id: a single-use,
//!   short-lived launch token instead, and each bot names itself by its task's id. The runtime
//!   tags each task with its bot's id (`recfleet.bot_id`) and lets the bots' endpoint exchange
//!   (task, launch token) once for the bot's own id and token (`LaunchTokens`).
//! - Reconcile: DescribeTasks in batches of 100 every few seconds; a stopped task's stop code maps
//!   to the typed exit reason. At start, the pool's tasks (by `startedBy`) are re-adopted when the
//!   state knows their bot, and stopped otherwise.
//!
//! Like every runtime, it launches and stops; it must not decide how many bots there are.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ecs::error::ProvideErrorMetadata;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, ContainerOverride, KeyValuePair, LaunchType, NetworkConfiguration,
    Tag, Task, TaskField, TaskOverride,
};
use backon::{ExponentialBuilder, Retryable};
use tokio::sync::mpsc;

use crate::runtime::{ExitReason, Exited, LaunchSpec, Runtime, RuntimeError};
use crate::store::token_hash;

/// Tags every bot task carries (`startedBy` names the pool too, for ListTasks).
pub const TAG_POOL: &str = "recfleet.pool";
pub const TAG_BOT: &str = "recfleet.bot_id";
/// RunTask starts at most this many tasks a call.
const MAX_TASKS_PER_CALL: usize = 10;
/// Launches asked for within this window share a RunTask call (a burst of requests is one
/// call, not ten); small next to a task's 30-90 s start.
const BATCH_WINDOW: Duration = Duration::from_millis(200);
/// RunTask is throttled at about 20 calls a second; this stays at half.
const MIN_CALL_INTERVAL: Duration = Duration::from_millis(100);
/// DescribeTasks takes at most 100 tasks a call.
const DESCRIBE_BATCH: usize = 100;
/// How often the pool's tasks are described.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// A task must connect and warm up within this: Fargate takes 30-90 s to start one, more when it
/// pulls the bot's image (about 700 MB) onto a new host. A task that cannot start at all says so
/// sooner, by its stop code (`TaskFailedToStart`).
pub const ECS_STARTUP_TIMEOUT: Duration = Duration::from_secs(300);
/// An unused launch token expires after this: a task that has not dialled by then is not coming
/// (the pool declares it lost then, too).
pub const LAUNCH_TOKEN_TTL: Duration = ECS_STARTUP_TIMEOUT;

/// A capacity provider and its share, as in `FARGATE_SPOT=3,FARGATE=1` (`NAME=WEIGHT[:BASE]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrategyItem {
    pub provider: String,
    pub weight: i32,
    pub base: i32,
}

/// Parses `--ecs-capacity-provider-strategy`: `NAME=WEIGHT[:BASE]`, comma-separated.
pub fn parse_strategy(text: &str) -> Result<Vec<StrategyItem>, String> {
    let mut items = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (provider, share) = part.split_once('=').ok_or_else(|| format!("{part:?} is not NAME=WEIGHT[:BASE]"))?;
        let (weight, base) = share.split_once(':').unwrap_or((share, "0"));
        let number = |s: &str, what: &str| {
            s.trim().parse::<i32>().ok().filter(|n| (0..=1000).contains(n)).ok_or_else(|| format!("{part:?}: the {what} must be 0-1000"))
        };
        let (weight, base) = (number(weight, "weight")?, number(base, "base")?);
        if provider.trim().is_empty() {
            return Err(format!("{part:?} names no capacity provider"));
        }
        items.push(StrategyItem { provider: provider.trim().to_string(), weight, base });
    }
    if items.is_empty() {
        return Err("no capacity provider given".into());
    }
    if items.iter().all(|i| i.weight == 0) {
        return Err("at least one capacity provider needs a weight above 0".into());
    }
    if items.iter().filter(|i| i.base > 0).count() > 1 {
        return Err("only one capacity provider may have a base".into());
    }
    Ok(items)
}

/// How bot tasks are run.
#[derive(Debug, Clone)]
pub struct EcsConfig {
    pub cluster: String,
    /// `family` or `family:revision`.
    pub task_definition: String,
    /// The bot's container in the task definition (its overrides carry the environment).
    pub container: String,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub assign_public_ip: bool,
    /// Empty: `launch_type`.
    pub strategy: Vec<StrategyItem>,
    pub launch_type: String,
    /// Names this controller's tasks (`startedBy` and the `recfleet.pool` tag).
    pub pool: String,
    /// More environment for every bot.
    pub env: Vec<(String, String)>,
}

/// The launch types RunTask takes (`--ecs-launch-type`).
pub const LAUNCH_TYPES: [&str; 3] = ["FARGATE", "EC2", "EXTERNAL"];

/// Checks an ECS configuration before anything starts, naming the flag at fault. Pure.
pub fn validate(cfg: &EcsConfig, store: Option<&recfleet_storage::StoreUrl>, advertise_urls: &[String]) -> Result<(), String> {
    if cfg.cluster.trim().is_empty() {
        return Err("--runtime ecs needs --ecs-cluster".into());
    }
    if cfg.task_definition.trim().is_empty() {
        return Err("--runtime ecs needs --ecs-task-definition (family or family:revision)".into());
    }
    if cfg.subnets.iter().all(|s| s.trim().is_empty()) {
        return Err("--runtime ecs needs --ecs-subnets (the bots' private subnets, comma-separated)".into());
    }
    if !LAUNCH_TYPES.contains(&cfg.launch_type.as_str()) {
        return Err(format!("invalid --ecs-launch-type {:?}: one of {}", cfg.launch_type, LAUNCH_TYPES.join(", ")));
    }
    if !matches!(store, Some(recfleet_storage::StoreUrl::S3 { .. })) {
        return Err("--runtime ecs needs an s3:// --store: tasks do not share the controller's disk".into());
    }
    if advertise_urls.is_empty() {
        return Err("--runtime ecs needs --advertise-url: the address (ws:// or wss://) the tasks dial, such as the load balancer's".into());
    }
    if let Some(url) = advertise_urls.iter().find(|u| {
        let host = u.split("://").nth(1).unwrap_or("").split(['/', ':']).next().unwrap_or("");
        host.is_empty() || host == "localhost" || host.starts_with("127.") || host == "0.0.0.0" || host == "[::1]"
    }) {
        return Err(format!("invalid --advertise-url {url:?}: ECS tasks cannot reach a loopback or unspecified address"));
    }
    Ok(())
}

/// Why an ECS call failed, in a word an operator can act on.
fn describe_error<E: ProvideErrorMetadata + std::fmt::Debug>(call: &str, err: &aws_sdk_ecs::error::SdkError<E>) -> String {
    let status = err.raw_response().map(|r| r.status().as_u16());
    match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{call}: {code}: {message}"),
        (Some(code), None) => format!("{call}: {code}"),
        _ if status == Some(403) => format!("{call}: AccessDenied (HTTP 403): check the controller's IAM role"),
        _ => match status {
            Some(status) => format!("{call}: HTTP {status}: {err:?}"),
            None => format!("{call}: {err}"),
        },
    }
}

fn is_throttling<E: ProvideErrorMetadata>(err: &aws_sdk_ecs::error::SdkError<E>) -> bool {
    matches!(err.code(), Some("ThrottlingException" | "Throttling" | "TooManyRequestsException" | "RequestLimitExceeded"))
        || err.raw_response().is_some_and(|r| r.status().as_u16() == 429)
}

/// Retries for throttled calls: they are never dropped, only slowed.
fn throttle_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
}

/// A stopped task's exit, from its stop code (`stopCode`), its reason and its bot
/// container's exit code. Pure.
pub fn exit_reason(stop_code: Option<&str>, container_exit: Option<i32>, asked_to_stop: bool) -> ExitReason {
    match stop_code {
        Some("TaskFailedToStart") => ExitReason::LaunchFailed,
        code if is_preemption(code) => ExitReason::Preempted,
        Some("UserInitiated" | "ServiceSchedulerInitiated") if asked_to_stop => ExitReason::Stopped,
        _ => match container_exit {
            Some(0) => ExitReason::Finished,
            _ if asked_to_stop => ExitReason::Stopped,
            _ => ExitReason::Crashed,
        },
    }
}

/// Launch tokens not yet exchanged, by task id. Shared between the runtime (which adds one per
/// launched task) and the bots' endpoint (which spends them).
#[derive(Debug, Clone, Default)]
pub struct LaunchTokens(Arc<Mutex<HashMap<String, Pending>>>);

#[derive(Debug)]
struct Pending {
    bot_id: String,
    /// The bot's own token, handed over at the exchange.
    bot_token: String,
    launch_sha256: String,
    expires: Instant,
    spent: bool,
}

/// What a task's launch token gets at the bots' endpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The bot's id and own token: the launch token is spent.
    Granted { bot_id: String, token: String },
    /// No launch is known for this task (yet: its RunTask answer may still be on its way).
    Unknown,
    /// A wrong, replayed or expired launch token.
    Refused,
}

impl LaunchTokens {
    fn add(&self, task_id: &str, bot_id: &str, bot_token: &str, launch_token: &str, now: Instant) {
        let mut map = self.0.lock().expect("launch tokens lock");
        map.retain(|_, p| p.expires > now);
        map.insert(
            task_id.to_string(),
            Pending {
                bot_id: bot_id.to_string(),
                bot_token: bot_token.to_string(),
                launch_sha256: token_hash(launch_token),
                expires: now + LAUNCH_TOKEN_TTL,
                spent: false,
            },
        );
    }

    /// Spends `launch_token` for `task_id` at `now`, once.
    pub fn claim(&self, task_id: &str, launch_token: &str, now: Instant) -> Claim {
        let mut map = self.0.lock().expect("launch tokens lock");
        let Some(p) = map.get_mut(task_id) else { return Claim::Unknown };
        if p.spent || p.expires <= now || p.launch_sha256 != token_hash(launch_token) {
            return Claim::Refused;
        }
        // Kept, spent, until it expires: a replay is refused rather than told to retry.
        p.spent = true;
        Claim::Granted { bot_id: p.bot_id.clone(), token: p.bot_token.clone() }
    }
}

#[derive(Debug)]
struct Inner {
    client: aws_sdk_ecs::Client,
    cfg: EcsConfig,
    exits: mpsc::UnboundedSender<Exited>,
    /// The pool's tasks this runtime follows: bot id → (task ARN, whether a stop was asked).
    tracked: Mutex<HashMap<String, (String, bool)>>,
    tokens: LaunchTokens,
    /// Bots whose task is being taken back (its stop code says so while it still runs): bot id
    /// → why.
    preempting: Mutex<HashMap<String, String>>,
}

#[derive(Debug, Clone)]
pub struct EcsRuntime {
    inner: Arc<Inner>,
    launches: mpsc::UnboundedSender<LaunchSpec>,
}

impl EcsRuntime {
    /// Connects with the standard AWS configuration and checks, at start, what can be checked:
    /// the cluster exists and is active, the task definition exists and has the bot container.
    pub async fn connect(
        cfg: EcsConfig,
        exits: mpsc::UnboundedSender<Exited>,
        tokens: LaunchTokens,
        reconcile_duration: prometheus::Histogram,
    ) -> Result<Self, RuntimeError> {
        let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let client = aws_sdk_ecs::Client::new(&conf);
        check(&client, &cfg).await?;
        let (launches, queue) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner { client, cfg, exits, tracked: Mutex::default(), tokens, preempting: Mutex::default() });
        tokio::spawn(launcher(inner.clone(), queue));
        tokio::spawn(reconciler(Arc::downgrade(&inner), reconcile_duration));
        Ok(Self { inner, launches })
    }

    /// Re-adopts the pool's running tasks whose bot the state knows, stops the others (a
    /// controller that lost its state, or a launch whose tag never landed). Returns how many
    /// were stopped.
    pub async fn adopt_or_stop(&self, known: &HashSet<String>) -> Result<usize, RuntimeError> {
        let inner = &self.inner;
        let mut arns = Vec::new();
        let mut pages = inner.client.list_tasks().cluster(&inner.cfg.cluster).started_by(&inner.cfg.pool).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| RuntimeError::Ecs(describe_error("ListTasks", &e)))?;
            arns.extend(page.task_arns().iter().cloned());
        }
        let mut stopped = 0;
        for task in describe(inner, &arns).await.map_err(RuntimeError::Ecs)?.0 {
            let arn = task.task_arn().unwrap_or_default().to_string();
            if task.last_status() == Some("STOPPED") {
                continue;
            }
            let bot = task.tags().iter().find(|t| t.key() == Some(TAG_BOT)).and_then(|t| t.value()).map(str::to_string);
            match bot {
                Some(bot_id) if known.contains(&bot_id) => {
                    tracing::info!(bot_id = %bot_id, task = %arn, "re-adopted a bot task");
                    inner.tracked.lock().expect("tracked lock").insert(bot_id, (arn, false));
                }
                _ => {
                    tracing::warn!(task = %arn, bot_id = bot.as_deref().unwrap_or(""), "stopping a bot task no state knows");
                    stop_task(inner, &arn, "recfleet: no controller state knows this bot").await;
                    stopped += 1;
                }
            }
        }
        Ok(stopped)
    }
}

async fn check(client: &aws_sdk_ecs::Client, cfg: &EcsConfig) -> Result<(), RuntimeError> {
    let err = |e: String| RuntimeError::Ecs(e);
    let clusters =
        client.describe_clusters().clusters(&cfg.cluster).send().await.map_err(|e| err(describe_error("DescribeClusters", &e)))?;
    match clusters.clusters().first() {
        Some(c) if c.status() == Some("ACTIVE") => {}
        Some(c) => return Err(err(format!("--ecs-cluster {}: the cluster is {}", cfg.cluster, c.status().unwrap_or("not active")))),
        None => return Err(err(format!("--ecs-cluster {}: no such cluster", cfg.cluster))),
    }
    let def = client
        .describe_task_definition()
        .task_definition(&cfg.task_definition)
        .send()
        .await
        .map_err(|e| err(format!("--ecs-task-definition {}: {}", cfg.task_definition, describe_error("DescribeTaskDefinition", &e))))?;
    let names: Vec<&str> =
        def.task_definition().map(|d| d.container_definitions().iter().filter_map(|c| c.name()).collect()).unwrap_or_default();
    if !names.contains(&cfg.container.as_str()) {
        return Err(err(format!(
            "--ecs-container {}: the task definition {} has no such container (it has: {})",
            cfg.container,
            cfg.task_definition,
            names.join(", ")
        )));
    }
    Ok(())
}

/// Describes `arns` in batches of 100, with their tags: the tasks found, and the ARNs ECS no
/// longer knows.
async fn describe(inner: &Inner, arns: &[String]) -> Result<(Vec<Task>, Vec<String>), String> {
    let (mut tasks, mut missing) = (Vec::new(), Vec::new());
    for chunk in arns.chunks(DESCRIBE_BATCH) {
        let call =
            || inner.client.describe_tasks().cluster(&inner.cfg.cluster).set_tasks(Some(chunk.to_vec())).include(TaskField::Tags).send();
        let out = call.retry(throttle_backoff()).when(is_throttling).await.map_err(|e| describe_error("DescribeTasks", &e))?;
        let found: HashSet<&str> = out.tasks().iter().filter_map(|t| t.task_arn()).collect();
        missing.extend(chunk.iter().filter(|a| !found.contains(a.as_str())).cloned());
        tasks.extend(out.tasks().iter().cloned());
    }
    Ok((tasks, missing))
}

async fn stop_task(inner: &Inner, arn: &str, reason: &str) {
    let call = || inner.client.stop_task().cluster(&inner.cfg.cluster).task(arn).reason(reason).send();
    if let Err(e) = call.retry(throttle_backoff().with_max_times(8)).when(is_throttling).await {
        tracing::warn!(task = %arn, error = %describe_error("StopTask", &e), "cannot stop a bot task");
    }
}

/// Takes launches off the queue, a window's worth (at most 10) per RunTask call, paced.
async fn launcher(inner: Arc<Inner>, mut queue: mpsc::UnboundedReceiver<LaunchSpec>) {
    let mut last_call: Option<Instant> = None;
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        let window = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.len() < MAX_TASKS_PER_CALL {
            match tokio::time::timeout_at(window, queue.recv()).await {
                Ok(Some(spec)) => batch.push(spec),
                _ => break,
            }
        }
        if let Some(at) = last_call {
            tokio::time::sleep(MIN_CALL_INTERVAL.saturating_sub(at.elapsed())).await;
        }
        last_call = Some(Instant::now());
        run_batch(&inner, batch).await;
    }
}

/// The base URLs of a launch (a batch's tasks share them; each bot adds its task's id).
fn base_urls(controller_url: &str) -> String {
    controller_url.split(',').map(|u| u.split('?').next().unwrap_or(u)).collect::<Vec<_>>().join(",")
}

async fn run_batch(inner: &Inner, batch: Vec<LaunchSpec>) {
    let cfg = &inner.cfg;
    let launch_token = uuid::Uuid::new_v4().simple().to_string();
    let first = &batch[0];
    let mut env = vec![
        ("RECFLEET_CONTROLLER_URL".to_string(), base_urls(&first.controller_url)),
        ("RECFLEET_LAUNCH_TOKEN".to_string(), launch_token.clone()),
    ];
    env.extend(first.env.iter().chain(cfg.env.iter()).cloned());
    let overrides = TaskOverride::builder()
        .container_overrides(
            ContainerOverride::builder()
                .name(&cfg.container)
                .set_environment(Some(env.into_iter().map(|(k, v)| KeyValuePair::builder().name(k).value(v).build()).collect()))
                .build(),
        )
        .build();
    let network = AwsVpcConfiguration::builder()
        .set_subnets(Some(cfg.subnets.clone()))
        .set_security_groups(Some(cfg.security_groups.clone()))
        .assign_public_ip(if cfg.assign_public_ip { AssignPublicIp::Enabled } else { AssignPublicIp::Disabled })
        .build()
        .expect("subnets are set");
    let mut call = inner
        .client
        .run_task()
        .cluster(&cfg.cluster)
        .task_definition(&cfg.task_definition)
        .count(batch.len() as i32)
        .started_by(&cfg.pool)
        .tags(Tag::builder().key(TAG_POOL).value(&cfg.pool).build())
        .network_configuration(NetworkConfiguration::builder().awsvpc_configuration(network).build())
        .overrides(overrides);
    if cfg.strategy.is_empty() {
        call = call.launch_type(LaunchType::from(cfg.launch_type.as_str()));
    } else {
        for s in &cfg.strategy {
            call = call.capacity_provider_strategy(
                CapacityProviderStrategyItem::builder()
                    .capacity_provider(&s.provider)
                    .weight(s.weight)
                    .base(s.base)
                    .build()
                    .expect("provider is set"),
            );
        }
    }
    let sent = (|| call.clone().send()).retry(throttle_backoff()).when(is_throttling).await;
    let out = match sent {
        Ok(out) => out,
        Err(e) => {
            let detail = describe_error("RunTask", &e);
            tracing::error!(bots = batch.len(), error = %detail, "RunTask refused the launch");
            for spec in batch {
                let _ = inner.exits.send(Exited { bot_id: spec.bot_id, reason: ExitReason::LaunchFailed, detail: detail.clone() });
            }
            return;
        }
    };
    let failures: Vec<String> = out
        .failures()
        .iter()
        .map(|f| format!("{}{}", f.reason().unwrap_or("failed"), f.detail().map(|d| format!(": {d}")).unwrap_or_default()))
        .collect();
    let mut tasks = out.tasks().iter().filter_map(|t| t.task_arn()).map(str::to_string);
    let now = Instant::now();
    for spec in batch {
        let Some(arn) = tasks.next() else {
            let detail = format!(
                "RunTask started fewer tasks than asked: {}",
                if failures.is_empty() { "no reason given".into() } else { failures.join("; ") }
            );
            let _ = inner.exits.send(Exited { bot_id: spec.bot_id, reason: ExitReason::LaunchFailed, detail });
            continue;
        };
        let task_id = arn.rsplit('/').next().unwrap_or(&arn).to_string();
        inner.tokens.add(&task_id, &spec.bot_id, &spec.token, &launch_token, now);
        inner.tracked.lock().expect("tracked lock").insert(spec.bot_id.clone(), (arn.clone(), false));
        tracing::info!(bot_id = %spec.bot_id, task = %arn, "bot task started");
        let tag = || inner.client.tag_resource().resource_arn(&arn).tags(Tag::builder().key(TAG_BOT).value(&spec.bot_id).build()).send();
        if let Err(e) = tag.retry(throttle_backoff().with_max_times(8)).when(is_throttling).await {
            // Untagged, a restarted controller could not re-adopt it: better none than a stray.
            tracing::error!(bot_id = %spec.bot_id, task = %arn, error = %describe_error("TagResource", &e), "cannot tag a bot task; stopping it");
            stop_task(inner, &arn, "recfleet: the task could not be tagged with its bot").await;
        }
    }
}

/// Describes the tracked tasks every `RECONCILE_EVERY` and reports those that stopped. Ends
/// when the runtime is dropped.
async fn reconciler(inner: std::sync::Weak<Inner>, duration: prometheus::Histogram) {
    loop {
        tokio::time::sleep(RECONCILE_EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        let started = Instant::now();
        if reconcile(&inner).await == Pass::Described {
            duration.observe(started.elapsed().as_secs_f64());
        }
    }
}

/// How a reconcile pass went (only described ones are timed).
#[derive(Debug, PartialEq, Eq)]
enum Pass {
    Nothing,
    Failed,
    Described,
}

async fn reconcile(inner: &Inner) -> Pass {
    let tracked: HashMap<String, (String, bool)> = inner.tracked.lock().expect("tracked lock").clone();
    if tracked.is_empty() {
        return Pass::Nothing;
    }
    let by_arn: HashMap<&str, (&str, bool)> = tracked.iter().map(|(bot, (arn, asked))| (arn.as_str(), (bot.as_str(), *asked))).collect();
    let arns: Vec<String> = by_arn.keys().map(|a| a.to_string()).collect();
    let (tasks, missing) = match describe(inner, &arns).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "cannot describe the pool's tasks; trying again");
            return Pass::Failed;
        }
    };
    let mut ended = Vec::new();
    for task in &tasks {
        let Some(&(bot_id, asked)) = task.task_arn().and_then(|a| by_arn.get(a)) else { continue };
        note_preemption(inner, bot_id, task);
        if task.last_status() != Some("STOPPED") {
            continue;
        }
        let code = task.stop_code().map(|c| c.as_str());
        let container_exit = task.containers().iter().find(|c| c.name() == Some(inner.cfg.container.as_str())).and_then(|c| c.exit_code());
        let reason = exit_reason(code, container_exit, asked);
        let detail = format!("task stopped ({}): {}", code.unwrap_or("no stop code"), task.stopped_reason().unwrap_or("no reason given"));
        ended.push(Exited { bot_id: bot_id.to_string(), reason, detail });
    }
    for arn in &missing {
        if let Some(&(bot_id, asked)) = by_arn.get(arn.as_str()) {
            let reason = if asked { ExitReason::Stopped } else { ExitReason::Crashed };
            ended.push(Exited { bot_id: bot_id.to_string(), reason, detail: "ECS no longer knows the task".into() });
        }
    }
    let mut tracked = inner.tracked.lock().expect("tracked lock");
    for exit in ended {
        tracked.remove(&exit.bot_id);
        inner.preempting.lock().expect("preempting lock").remove(&exit.bot_id);
        let _ = inner.exits.send(exit);
    }
    Pass::Described
}

/// Whether a stop code means the task's host is being taken back.
fn is_preemption(stop_code: Option<&str>) -> bool {
    matches!(stop_code, Some("SpotInterruption" | "TerminationNotice"))
}

/// Remembers a task whose host is being taken back (ECS sets the stop code when the stop
/// begins, two minutes before a Spot task is killed).
fn note_preemption(inner: &Inner, bot_id: &str, task: &Task) {
    let code = task.stop_code().map(|c| c.as_str());
    if is_preemption(code) {
        let why = format!("{}: {}", code.unwrap_or_default(), task.stopped_reason().unwrap_or("no reason given"));
        inner.preempting.lock().expect("preempting lock").entry(bot_id.to_string()).or_insert(why);
    }
}

impl Runtime for EcsRuntime {
    fn launch(&self, spec: &LaunchSpec) -> Result<(), RuntimeError> {
        self.launches.send(spec.clone()).map_err(|_| RuntimeError::Ecs("the launcher has stopped".into()))
    }

    fn stop(&self, bot_id: &str) {
        let arn = {
            let mut tracked = self.inner.tracked.lock().expect("tracked lock");
            let Some((arn, asked)) = tracked.get_mut(bot_id) else { return };
            *asked = true;
            arn.clone()
        };
        let inner = self.inner.clone();
        tokio::spawn(async move { stop_task(&inner, &arn, "recfleet: retired by the controller").await });
    }

    fn look(&self, bot_id: &str) {
        let Some((arn, _)) = self.inner.tracked.lock().expect("tracked lock").get(bot_id).cloned() else { return };
        let (inner, bot_id) = (self.inner.clone(), bot_id.to_string());
        tokio::spawn(async move {
            match describe(&inner, &[arn]).await {
                Ok((tasks, _)) => tasks.iter().for_each(|t| note_preemption(&inner, &bot_id, t)),
                Err(e) => tracing::warn!(bot_id = %bot_id, error = %e, "cannot look at a signalled bot's task"),
            }
        });
    }

    fn preempted(&self, bot_id: &str) -> Option<String> {
        self.inner.preempting.lock().expect("preempting lock").get(bot_id).cloned()
    }

    fn startup_timeout(&self) -> Duration {
        ECS_STARTUP_TIMEOUT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_strategy_is_name_weight_and_an_optional_base() {
        let item = |p: &str, w, b| StrategyItem { provider: p.into(), weight: w, base: b };
        assert_eq!(parse_strategy("FARGATE_SPOT=3,FARGATE=1").unwrap(), vec![item("FARGATE_SPOT", 3, 0), item("FARGATE", 1, 0)]);
        assert_eq!(parse_strategy(" FARGATE=1:2 , FARGATE_SPOT=4").unwrap(), vec![item("FARGATE", 1, 2), item("FARGATE_SPOT", 4, 0)]);
        assert_eq!(parse_strategy("my-ec2-provider=1").unwrap(), vec![item("my-ec2-provider", 1, 0)]);
        for bad in ["", "FARGATE", "FARGATE=x", "=1", "FARGATE=-1", "FARGATE=0", "A=1:1,B=1:2", "FARGATE=1:1001"] {
            assert!(parse_strategy(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn an_ecs_configuration_is_checked_naming_the_flag() {
        let good = EcsConfig {
            cluster: "recfleet".into(),
            task_definition: "recfleet-bot:3".into(),
            container: "bot".into(),
            subnets: vec!["subnet-1".into()],
            security_groups: vec![],
            assign_public_ip: false,
            strategy: vec![],
            launch_type: "FARGATE".into(),
            pool: "default".into(),
            env: vec![],
        };
        let s3: recfleet_storage::StoreUrl = "s3://bucket/prefix".parse().unwrap();
        let file: recfleet_storage::StoreUrl = "file:///tmp/x".parse().unwrap();
        let lb = vec!["wss://recfleet.internal.example".to_string()];
        assert_eq!(validate(&good, Some(&s3), &lb), Ok(()));
        let with = |f: &dyn Fn(&mut EcsConfig)| {
            let mut c = good.clone();
            f(&mut c);
            c
        };
        let cases: Vec<(EcsConfig, Option<&recfleet_storage::StoreUrl>, Vec<String>, &str)> = vec![
            (with(&|c| c.cluster.clear()), Some(&s3), lb.clone(), "--ecs-cluster"),
            (with(&|c| c.task_definition.clear()), Some(&s3), lb.clone(), "--ecs-task-definition"),
            (with(&|c| c.subnets.clear()), Some(&s3), lb.clone(), "--ecs-subnets"),
            (with(&|c| c.launch_type = "LAMBDA".into()), Some(&s3), lb.clone(), "--ecs-launch-type"),
            (good.clone(), Some(&file), lb.clone(), "s3:// --store"),
            (good.clone(), None, lb.clone(), "s3:// --store"),
            (good.clone(), Some(&s3), vec![], "--advertise-url"),
            (good.clone(), Some(&s3), vec!["ws://127.0.0.1:8700".into()], "loopback"),
            (good.clone(), Some(&s3), vec!["ws://localhost:8700".into()], "loopback"),
        ];
        for (cfg, store, urls, flag) in cases {
            let err = validate(&cfg, store, &urls).expect_err(flag);
            assert!(err.contains(flag), "{err:?} should name {flag}");
        }
    }

    #[test]
    fn stop_codes_map_to_exit_reasons() {
        let cases: &[(Option<&str>, Option<i32>, bool, ExitReason)] = &[
            (Some("TaskFailedToStart"), None, false, ExitReason::LaunchFailed),
            (Some("SpotInterruption"), Some(0), false, ExitReason::Preempted),
            (Some("TerminationNotice"), None, false, ExitReason::Preempted),
            (Some("UserInitiated"), Some(143), true, ExitReason::Stopped),
            (Some("UserInitiated"), Some(1), false, ExitReason::Crashed),
            (Some("EssentialContainerExited"), Some(0), false, ExitReason::Finished),
            (Some("EssentialContainerExited"), Some(1), false, ExitReason::Crashed),
            (Some("EssentialContainerExited"), Some(137), true, ExitReason::Stopped),
            (None, None, false, ExitReason::Crashed),
        ];
        for (code, exit, asked, want) in cases {
            assert_eq!(exit_reason(*code, *exit, *asked), *want, "{code:?} exit {exit:?} asked {asked}");
        }
    }

    #[test]
    fn a_launch_token_is_spent_once_and_expires() {
        let tokens = LaunchTokens::default();
        let t0 = Instant::now();
        tokens.add("task1", "bot_1", "own1", "launch", t0);
        tokens.add("task2", "bot_2", "own2", "launch", t0);
        assert_eq!(tokens.claim("task0", "launch", t0), Claim::Unknown, "a task whose launch is not yet recorded retries");
        assert_eq!(tokens.claim("task1", "wrong", t0), Claim::Refused);
        assert_eq!(tokens.claim("task1", "launch", t0), Claim::Granted { bot_id: "bot_1".into(), token: "own1".into() });
        assert_eq!(tokens.claim("task1", "launch", t0), Claim::Refused, "a replay is refused");
        assert_eq!(tokens.claim("task2", "launch", t0 + LAUNCH_TOKEN_TTL), Claim::Refused, "an unused token expires");
    }

    #[test]
    fn a_batch_dials_the_base_urls() {
        assert_eq!(
            base_urls("ws://a:1/v1/bots/connect?bot_id=b1,ws://b:2/v1/bots/connect?bot_id=b1"),
            "ws://a:1/v1/bots/connect,ws://b:2/v1/bots/connect"
        );
    }
}
