//! `recfleet-bot`: flags in, `recfleet_bot::record` out. Logs go to stderr; the last stdout
//! line is a JSON summary (or a JSON error with a stable code).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use recfleet_bot::config::{self, RecordConfig, UploadSettings, VideoConfig};
use recfleet_bot::upload;
use recfleet_bot::RecordError;
use recfleet_proto::{deadline, Recipe};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "recfleet-bot", version, about = "Records one web meeting with headless Chromium and FFmpeg")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "RECFLEET_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Record one meeting, standalone (no controller). SIGINT/SIGTERM finalize and stop.
    Record(RecordArgs),
    /// Warm up, dial the controller, record the one meeting it assigns, and exit.
    Agent(AgentArgs),
    /// Upload what a recording folder holds that its journal says is not stored yet (after a
    /// bot died, or its drain deadline passed), then write the store's playlist and manifest.
    Upload(UploadArgs),
}

#[derive(Debug, clap::Args)]
struct UploadArgs {
    /// The recording's folder (the bot's `--out`).
    #[arg(long)]
    dir: PathBuf,
    /// The recording's id: its files go to `recordings/<id>/` in the store.
    #[arg(long)]
    recording_id: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// The object store and the disk the bot may use while it is unreachable.
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// `s3://bucket/prefix` or `file:///dir`; segments are uploaded as they close. AWS
    /// settings come from the standard places (environment, profile, task role,
    /// `AWS_ENDPOINT_URL`).
    #[arg(long, env = "RECFLEET_STORE")]
    store: Option<String>,
    /// Path-style S3 addressing, for S3-compatible servers.
    #[arg(long, env = "RECFLEET_S3_PATH_STYLE")]
    s3_path_style: bool,
    /// Backlog (recorded, not yet uploaded) the bot may keep on disk while the store is
    /// unreachable; past it the recording stops with `disk_full`.
    #[arg(long, env = "RECFLEET_DISK_BUDGET_MB", default_value_t = upload::DEFAULT_DISK_BUDGET_MB)]
    disk_budget_mb: u64,
    /// The recording stops with `disk_full` before the disk has less than this free.
    #[arg(long, env = "RECFLEET_MIN_FREE_DISK_MB", default_value_t = upload::DEFAULT_MIN_FREE_MB)]
    min_free_disk_mb: u64,
    /// How long the backlog gets to drain when the recording is over.
    #[arg(long, env = "RECFLEET_UPLOAD_DRAIN_SECS", default_value_t = upload::DEFAULT_DRAIN_SECS)]
    upload_drain_secs: u64,
}

impl StoreArgs {
    fn settings(&self) -> Result<Option<UploadSettings>, RecordError> {
        let Some(url) = &self.store else { return Ok(None) };
        let store = url.parse().map_err(|e: recfleet_storage::StoreError| RecordError::Store(e.to_string()))?;
        Ok(Some(UploadSettings {
            store,
            path_style: self.s3_path_style,
            disk_budget_bytes: self.disk_budget_mb.saturating_mul(MB),
            drain_deadline: Duration::from_secs(self.upload_drain_secs),
        }))
    }
}

const MB: u64 = 1024 * 1024;

#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// The controller's bot endpoint, `ws://host:port/v1/bots/connect`; several, comma-separated,
    /// are tried in turn (the leader and its standbys).
    #[arg(long, env = "RECFLEET_CONTROLLER_URL", value_delimiter = ',', required = true)]
    controller_url: Vec<String>,
    /// This bot's id. Unset on ECS: the bot names itself by its task's id (from the task
    /// metadata endpoint) and dials with `--launch-token`.
    #[arg(long, env = "RECFLEET_BOT_ID", requires = "token")]
    bot_id: Option<String>,
    /// The token the controller issued for this bot.
    #[arg(long, env = "RECFLEET_BOT_TOKEN", hide_env_values = true, required_unless_present = "launch_token")]
    token: Option<String>,
    /// A single-use, short-lived token of the launch (an ECS task's), exchanged at the first
    /// connection for the bot's own.
    #[arg(long, env = "RECFLEET_LAUNCH_TOKEN", hide_env_values = true, conflicts_with = "bot_id")]
    launch_token: Option<String>,
    /// Recordings are spooled in `<spool-dir>/<recording_id>/` on their way to the store.
    #[arg(long, env = "RECFLEET_SPOOL_DIR")]
    spool_dir: PathBuf,
    /// An idle bot that reaches no controller for this long exits (a busy one finishes its
    /// recording, stores it, then exits).
    #[arg(long, env = "RECFLEET_ORPHAN_TIMEOUT_SECS", default_value_t = 600)]
    orphan_timeout_secs: u64,
    /// On SIGTERM (its host taken back: ECS, Docker, a Spot interruption) the bot asks the
    /// controller for a successor and records on for at most this long, until the successor's
    /// first segment is stored; 0 ends the recording at once with `stopped_by_signal`. Keep it
    /// inside the runtime's stop timeout, with the stopping deadline.
    #[arg(long, env = "RECFLEET_HANDOFF_GRACE_SECS", default_value_t = recfleet_bot::agent::DEFAULT_HANDOFF_GRACE_SECS)]
    handoff_grace_secs: u64,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    video: VideoArgs,
    #[command(flatten)]
    faults: FaultArgs,
    #[command(flatten)]
    network: NetworkArgs,
}

/// Where the browser may go, shared by `record` and `agent` (docs/SECURITY.md).
#[derive(Debug, Clone, Copy, clap::Args)]
struct NetworkArgs {
    /// Networks besides the public internet the browser may reach: `loopback`, `private`
    /// (RFC 1918, 100.64/10, fc00::/7), comma-separated; none when unset. Every request the
    /// browser makes goes through the bot's egress proxy, which resolves and checks it. Cloud
    /// metadata and link-local addresses are refused whatever this says.
    #[arg(long, env = "RECFLEET_ALLOW_NETWORKS", default_value = "", value_parser = recfleet_proto::NetworkPolicy::parse)]
    allow_networks: recfleet_proto::NetworkPolicy,
}

/// How a recording rides out faults, shared by `record` and `agent` (docs/FAULTS.md).
#[derive(Debug, Clone, Copy, clap::Args)]
struct FaultArgs {
    /// Times a lost browser (crashed, killed, frozen) is restarted and the meeting rejoined in
    /// one recording; 0 ends the recording with `page_crashed` at the first loss.
    #[arg(long, env = "RECFLEET_MAX_REJOINS", default_value_t = config::DEFAULT_MAX_REJOINS)]
    max_rejoins: u32,
    /// Times an encoder that died is restarted in one recording (segment numbers continue, the
    /// playlist marks the break); 0 ends the recording with `capture_failed` at the first death.
    #[arg(long, env = "RECFLEET_MAX_CAPTURE_RESTARTS", default_value_t = config::DEFAULT_MAX_CAPTURE_RESTARTS)]
    max_capture_restarts: u32,
    /// Seconds of digital silence in the capture, while in the call, reported as the capture
    /// fault `capture_silent` (logged, counted, alerted); the recording goes on.
    #[arg(long, env = "RECFLEET_SILENCE_FAULT_SECS", default_value_t = config::DEFAULT_SILENCE_FAULT_SECS,
          value_parser = clap::value_parser!(u64).range(config::MIN_SILENCE_FAULT_SECS..))]
    silence_fault_secs: u64,
    /// Seconds the join may take, every attempt and a rejoin's included (the waiting room has
    /// the recipe's own limit); past it the recording ends with `join_failed`.
    #[arg(long, env = "RECFLEET_JOINING_DEADLINE_SECS", default_value_t = deadline::JOINING.default_secs,
          value_parser = clap::value_parser!(u64).range(deadline::JOINING.min_secs..))]
    joining_deadline_secs: u64,
    /// Seconds from the end (a stop, the meeting's end, a limit) to the capture stopped, the
    /// call left and the browser closed; past it whatever still runs is killed and what was
    /// recorded is finalized.
    #[arg(long, env = "RECFLEET_STOPPING_DEADLINE_SECS", default_value_t = deadline::STOPPING.default_secs,
          value_parser = clap::value_parser!(u64).range(deadline::STOPPING.min_secs..))]
    stopping_deadline_secs: u64,
    /// Seconds to make the MP4 and drain the uploads; past it the bot gives up with
    /// `finalize_failed` (a controller finalizes from the store what reached it).
    #[arg(long, env = "RECFLEET_FINALIZING_DEADLINE_SECS", default_value_t = deadline::FINALIZING.default_secs,
          value_parser = clap::value_parser!(u64).range(deadline::FINALIZING.min_secs..))]
    finalizing_deadline_secs: u64,
}

impl FaultArgs {
    fn deadlines(&self) -> recfleet_proto::Deadlines {
        recfleet_proto::Deadlines {
            joining: Duration::from_secs(self.joining_deadline_secs),
            stopping: Duration::from_secs(self.stopping_deadline_secs),
            finalizing: Duration::from_secs(self.finalizing_deadline_secs),
        }
    }
}

/// Capture size, rate and encoder, shared by `record` and `agent`.
#[derive(Debug, clap::Args)]
struct VideoArgs {
    #[arg(long, default_value_t = config::DEFAULT_WIDTH)]
    width: u32,
    #[arg(long, default_value_t = config::DEFAULT_HEIGHT)]
    height: u32,
    #[arg(long, default_value_t = config::DEFAULT_FPS)]
    fps: u32,
    /// x264 preset (see docs/BENCHMARKS.md for the CPU each costs).
    #[arg(long, default_value = config::DEFAULT_X264_PRESET)]
    x264_preset: String,
    #[arg(long, default_value_t = config::DEFAULT_X264_CRF)]
    x264_crf: u32,
}

impl From<VideoArgs> for VideoConfig {
    fn from(v: VideoArgs) -> Self {
        VideoConfig { width: v.width, height: v.height, fps: v.fps, x264_preset: v.x264_preset, x264_crf: v.x264_crf }
    }
}

#[derive(Debug, clap::Args)]
struct RecordArgs {
    /// The meeting's http(s) URL.
    #[arg(long)]
    url: String,
    /// A join recipe (JSON). Without one the bot opens the URL and records it.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// The name the bot joins with.
    #[arg(long, default_value = config::DEFAULT_BOT_NAME)]
    bot_name: String,
    /// Folder for the segments, playlist, manifest, timeline and MP4 (created; must not hold a recording).
    #[arg(long)]
    out: PathBuf,
    /// Stop after this many seconds of recording.
    #[arg(long)]
    max_duration_secs: Option<u64>,
    #[command(flatten)]
    video: VideoArgs,
    /// Join attempts in all before `join_failed`.
    #[arg(long, default_value_t = config::DEFAULT_JOIN_ATTEMPTS)]
    join_attempts: u32,
    /// The recording's id (substituted for `{recording_id}`); generated when absent.
    #[arg(long)]
    recording_id: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    faults: FaultArgs,
    #[command(flatten)]
    network: NetworkArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = recfleet_bot::forward_log::LogForward::default();
    init_logging(cli.log_format, matches!(cli.command, Command::Agent(_)).then(|| logs.layer()));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => return fail_plain("environment_failed", &format!("cannot start the async runtime: {err}"), 5),
    };
    let args = match cli.command {
        Command::Record(args) => args,
        Command::Agent(args) => return runtime.block_on(agent(args, logs)),
        Command::Upload(args) => return runtime.block_on(upload_again(args)),
    };
    runtime.block_on(async move {
        let cfg = match to_config(args) {
            Ok(cfg) => cfg,
            Err(err) => return fail(&err),
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signals(shutdown.clone()));
        let span = tracing::info_span!("recording", recording_id = %cfg.recording_id);
        match tracing::Instrument::instrument(recfleet_bot::record(&cfg, shutdown), span).await {
            Ok(summary) => {
                println!("{}", serde_json::to_string(&summary).expect("the summary serializes"));
                match &summary.upload {
                    Some(u) if !u.not_uploaded.is_empty() => ExitCode::from(UPLOAD_INCOMPLETE),
                    _ => ExitCode::SUCCESS,
                }
            }
            Err(err) => fail(&err),
        }
    })
}

/// The recording is on disk, but not everything reached the store (docs/BOT.md).
const UPLOAD_INCOMPLETE: u8 = 8;

async fn upload_again(args: UploadArgs) -> ExitCode {
    let settings = match args.store.settings() {
        Ok(Some(s)) => s,
        Ok(None) => return fail(&RecordError::Store("--store (or RECFLEET_STORE) is required".into())),
        Err(err) => return fail(&err),
    };
    match upload::resume(&args.dir, &args.recording_id, &settings, args.store.min_free_disk_mb * MB).await {
        Ok(stats) => {
            println!("{}", serde_json::to_string(&stats).expect("stats serialize"));
            if stats.not_uploaded.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(UPLOAD_INCOMPLETE)
            }
        }
        Err(err) => fail(&err),
    }
}

async fn agent(args: AgentArgs, logs: recfleet_bot::forward_log::LogForward) -> ExitCode {
    let video = VideoConfig::from(args.video);
    if let Err(err) = video.validate() {
        return fail(&RecordError::Config(err));
    }
    let (controller_urls, bot_id, token) = match (args.bot_id, args.token, args.launch_token) {
        (Some(bot_id), Some(token), _) => (args.controller_url, bot_id, token),
        (_, _, Some(launch)) => match recfleet_bot::ecs_task::task_id().await {
            Ok(task) => {
                let urls = args.controller_url.iter().map(|u| recfleet_bot::agent::dial_as(u, "task", &task)).collect();
                (urls, format!("task-{task}"), launch)
            }
            Err(err) => {
                tracing::error!(error = %err, "agent cannot name itself");
                return ExitCode::from(7);
            }
        },
        _ => {
            tracing::error!("agent needs RECFLEET_BOT_ID and RECFLEET_BOT_TOKEN, or RECFLEET_LAUNCH_TOKEN on ECS");
            return ExitCode::from(7);
        }
    };
    let deadlines = args.faults.deadlines();
    if let Ok(Some(u)) = args.store.settings() {
        // Checked at start rather than at the first recording's.
        if let Err(err) = config::check_drain_fits(u.drain_deadline, deadlines.finalizing) {
            return fail(&RecordError::Config(err));
        }
    }
    let cfg = recfleet_bot::agent::AgentConfig {
        controller_urls,
        bot_id,
        token,
        spool_root: args.spool_dir,
        orphan_timeout: std::time::Duration::from_secs(args.orphan_timeout_secs),
        upload: match args.store.settings() {
            Ok(u) => u,
            Err(err) => return fail(&err),
        },
        min_free_bytes: args.store.min_free_disk_mb * MB,
        video,
        max_rejoins: args.faults.max_rejoins,
        max_capture_restarts: args.faults.max_capture_restarts,
        silence_fault: Duration::from_secs(args.faults.silence_fault_secs),
        deadlines,
        handoff_grace: Duration::from_secs(args.handoff_grace_secs),
        network: args.network.allow_networks,
        logs,
    };
    let (shutdown, preempt) = (CancellationToken::new(), CancellationToken::new());
    tokio::spawn(agent_signals(shutdown.clone(), preempt.clone()));
    match recfleet_bot::agent::run(cfg, shutdown, preempt).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(recfleet_bot::agent::AgentError::Record(err)) => fail(&err),
        Err(err) => {
            tracing::error!(error = %err, "agent stopped");
            ExitCode::from(7)
        }
    }
}

fn to_config(args: RecordArgs) -> Result<RecordConfig, RecordError> {
    let upload = args.store.settings()?;
    let recipe = match &args.recipe {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| RecordError::Recipe(format!("cannot read {}: {e}", path.display())))?;
            Some(Recipe::from_json(&text).map_err(|e| RecordError::Recipe(format!("{}: {e}", path.display())))?)
        }
    };
    Ok(RecordConfig {
        url: args.url,
        recipe,
        bot_name: args.bot_name,
        recording_id: args.recording_id.unwrap_or_else(new_recording_id),
        out_dir: args.out,
        max_duration: args.max_duration_secs.map(Duration::from_secs),
        video: args.video.into(),
        join_attempts: args.join_attempts,
        max_rejoins: args.faults.max_rejoins,
        max_capture_restarts: args.faults.max_capture_restarts,
        silence_fault: Duration::from_secs(args.faults.silence_fault_secs),
        deadlines: args.faults.deadlines(),
        upload,
        min_free_bytes: args.store.min_free_disk_mb * MB,
        continuation: None,
        handoff: None,
        network: args.network.allow_networks,
    })
}

fn new_recording_id() -> String {
    format!("rec_{}", uuid::Uuid::new_v4().simple())
}

async fn stop_on_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        tracing::warn!("cannot install signal handlers; SIGINT/SIGTERM will not finalize");
        return;
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT: finishing the recording"),
        _ = term.recv() => tracing::info!("SIGTERM: finishing the recording"),
    }
    shutdown.cancel();
}

/// Under a controller: SIGTERM is the host taking the bot away (the agent hands its recording
/// over), SIGINT or a second SIGTERM stops it now.
async fn agent_signals(shutdown: CancellationToken, preempt: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        tracing::warn!("cannot install signal handlers; SIGINT/SIGTERM will not finalize");
        return;
    };
    loop {
        tokio::select! {
            _ = int.recv() => {
                tracing::info!("SIGINT: finishing the recording");
                shutdown.cancel();
                return;
            }
            _ = term.recv() => {
                if preempt.is_cancelled() {
                    tracing::info!("second SIGTERM: finishing the recording now");
                    shutdown.cancel();
                    return;
                }
                tracing::info!("SIGTERM: the host is taking the bot away");
                preempt.cancel();
            }
        }
    }
}

fn fail(err: &RecordError) -> ExitCode {
    tracing::error!(code = err.code(), error = %err, "recording failed");
    let line = serde_json::json!({
        "status": "failed",
        "sub_code": err.sub_code(),
        "error": {"code": err.code(), "message": err.to_string()},
    });
    println!("{line}");
    ExitCode::from(err.exit_code() as u8)
}

fn fail_plain(code: &str, message: &str, exit: u8) -> ExitCode {
    eprintln!("error: {message}");
    println!("{}", serde_json::json!({"status": "failed", "error": {"code": code, "message": message}}));
    ExitCode::from(exit)
}

/// Logs to stderr (one JSON object per line with `--log-format json`); under a controller,
/// warn and error events are also forwarded to it.
fn init_logging(format: LogFormat, forward: Option<recfleet_bot::forward_log::ForwardLayer>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let (json, pretty) = match format {
        LogFormat::Json => {
            (Some(fmt::layer().json().flatten_event(true).with_current_span(true).with_span_list(false).with_writer(std::io::stderr)), None)
        }
        LogFormat::Pretty => (None, Some(fmt::layer().compact().with_writer(std::io::stderr))),
    };
    tracing_subscriber::registry().with(filter).with(json).with(pretty).with(forward).init();
}

/// chromiumoxide warns about every event of a newer CDP revision that it cannot parse; those
/// are harmless and would drown the bot's own log.
const DEFAULT_LOG_FILTER: &str = "info,chromiumoxide=error";
