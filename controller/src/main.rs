//! `recfleet`: flags and environment in, `recfleet::serve` out.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use recfleet_proto::deadline;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "recfleet", version, about = "The recfleet controller: REST API and a warm pool of recording bots")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start and moved out at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API and keep the warm pool.
    Serve(ServeArgs),
    /// Record the bundled demo meeting through the controller and a warm bot, then say where
    /// the MP4 is.
    Demo(DemoArgs),
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Where the demo keeps its state and recordings.
    #[arg(long, default_value = "demo-output")]
    data_dir: PathBuf,
    /// How long the demo meeting lasts once the bot is admitted.
    #[arg(long, default_value_t = 10)]
    meeting_secs: u64,
    #[arg(long, env = "RECFLEET_BOT_BINARY")]
    bot_binary: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[arg(long, env = "RECFLEET_LISTEN", default_value = "127.0.0.1:8700")]
    listen: std::net::SocketAddr,
    #[arg(long, env = "RECFLEET_DATA_DIR", default_value = "recfleet-data")]
    data_dir: PathBuf,
    /// Where the state lives: `postgres://user:password@host:port/database`, or
    /// `sqlite://<path>` (default: `<data-dir>/recfleet.db`). Controllers on one PostgreSQL
    /// database share every recording, queue entry and idempotency key.
    #[arg(long, env = "RECFLEET_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// When unset, one is generated and printed once.
    #[arg(long, env = "RECFLEET_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[arg(long, env = "RECFLEET_POOL_MIN_IDLE", default_value_t = 1)]
    pool_min_idle: usize,
    #[arg(long, env = "RECFLEET_POOL_MAX", default_value_t = 4)]
    pool_max: usize,
    /// Seconds an idle bot above the pool's target (`--pool-min-idle` plus the demand) is kept
    /// before it is retired.
    #[arg(long, env = "RECFLEET_POOL_IDLE_TTL_SECS", default_value_t = recfleet::pool::DEFAULT_IDLE_TTL_SECS)]
    pool_idle_ttl_secs: u64,
    /// Seconds of recent requests the pool reads its demand from: it keeps warm, above
    /// `--pool-min-idle`, the requests this rate brings during one measured launch. 0: off.
    #[arg(long, env = "RECFLEET_POOL_DEMAND_WINDOW_SECS", default_value_t = recfleet::pool::DEFAULT_DEMAND_WINDOW_SECS)]
    pool_demand_window_secs: u64,
    /// Seconds a busy bot may go with neither a message on its socket nor a new segment of its
    /// recording in the object store before it is declared lost and its recording finalized
    /// from the store: a partition between bot and controller must not end a live recording.
    /// At least the heartbeat timeout (10).
    #[arg(long, env = "RECFLEET_LOST_WINDOW_SECS", default_value_t = recfleet::fleet::DEFAULT_LOST_WINDOW.as_secs())]
    lost_window_secs: u64,
    /// Refuse the handoffs bots ask for when their host takes them away (SIGTERM): the
    /// recording then ends with what was stored (`preempted` or `stopped_by_signal`) rather
    /// than go on with a successor from the warm pool.
    #[arg(long, env = "RECFLEET_NO_HANDOFF")]
    no_handoff: bool,
    /// Seconds a bot may take to join (every attempt; the waiting room has the recipe's own
    /// limit). Passed to the bots; a recording still joining 30 s after it is failed and its bot
    /// stopped (docs/BOT.md#deadlines).
    #[arg(long, env = "RECFLEET_JOINING_DEADLINE_SECS", default_value_t = deadline::JOINING.default_secs,
          value_parser = clap::value_parser!(u64).range(deadline::JOINING.min_secs..))]
    joining_deadline_secs: u64,
    /// Seconds a bot may take to stop (capture, the recipe's leave, the browser). Passed to the
    /// bots; a recording still stopping 30 s after it has its bot stopped and is finalized from
    /// the store.
    #[arg(long, env = "RECFLEET_STOPPING_DEADLINE_SECS", default_value_t = deadline::STOPPING.default_secs,
          value_parser = clap::value_parser!(u64).range(deadline::STOPPING.min_secs..))]
    stopping_deadline_secs: u64,
    /// Seconds a bot may take to finalize (the MP4, the upload drain). Passed to the bots; a
    /// recording still finalizing 30 s after it has its bot stopped and is finalized from the
    /// store.
    #[arg(long, env = "RECFLEET_FINALIZING_DEADLINE_SECS", default_value_t = deadline::FINALIZING.default_secs,
          value_parser = clap::value_parser!(u64).range(deadline::FINALIZING.min_secs..))]
    finalizing_deadline_secs: u64,
    /// Comma-separated meeting hosts to allow (all when unset).
    #[arg(long, env = "RECFLEET_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Option<Vec<String>>,
    /// Networks beyond the public internet that meeting and webhook URLs may point into:
    /// `loopback`, `private` (RFC 1918, 100.64/10, fc00::/7), comma-separated. Refused when
    /// unset. Cloud metadata and link-local addresses are refused whatever this says.
    #[arg(long, env = "RECFLEET_ALLOW_NETWORKS", default_value = "", value_parser = recfleet_proto::NetworkPolicy::parse)]
    allow_networks: recfleet_proto::NetworkPolicy,
    /// The bot binary (default: `recfleet-bot` next to this one).
    #[arg(long, env = "RECFLEET_BOT_BINARY")]
    bot_binary: Option<PathBuf>,
    /// Where bots run: `process` (local child processes), `docker` (a container each) or `ecs`
    /// (an ECS task each: Fargate, Fargate Spot or EC2 capacity).
    #[arg(long, env = "RECFLEET_RUNTIME", default_value = "process", value_parser = ["process", "docker", "ecs"])]
    runtime: String,
    #[command(flatten)]
    ecs: EcsArgs,
    /// The bot image for `--runtime docker`.
    #[arg(long, env = "RECFLEET_BOT_IMAGE", default_value = "recfleet-bot:dev")]
    bot_image: String,
    /// The address bots dial, `ws://host:port` (default: the listen address). With Docker, an
    /// address the containers reach (e.g. the network's gateway). Several, comma-separated, are
    /// tried in turn: every controller that may lead (the leader and its standbys).
    #[arg(long, env = "RECFLEET_ADVERTISE_URL", value_delimiter = ',')]
    advertise_url: Vec<String>,
    /// The Docker network bot containers join.
    #[arg(long, env = "RECFLEET_DOCKER_NETWORK", default_value = "bridge")]
    docker_network: String,
    /// Names this controller's containers (label `recfleet.pool`); orphans with it are removed at start.
    #[arg(long, env = "RECFLEET_POOL_NAME", default_value = "default")]
    pool_name: String,
    /// CPU limit per bot container, in cores.
    #[arg(long, env = "RECFLEET_BOT_CPUS", default_value_t = 1.0)]
    bot_cpus: f64,
    /// Memory limit per bot container, in MiB.
    #[arg(long, env = "RECFLEET_BOT_MEMORY_MB", default_value_t = 2048)]
    bot_memory_mb: i64,
    /// Where recordings are stored: `file:///dir` or `s3://bucket/prefix` (default
    /// `file://<data-dir>`; recordings go under `recordings/<id>/`). S3 credentials, region
    /// and endpoint come from the standard AWS settings (environment, profile, task role,
    /// `AWS_ENDPOINT_URL`).
    #[arg(long, env = "RECFLEET_STORE")]
    store: Option<String>,
    /// Path-style S3 addressing, for S3-compatible servers.
    #[arg(long, env = "RECFLEET_S3_PATH_STYLE")]
    s3_path_style: bool,
    /// How long presigned S3 download links stay valid, in seconds.
    #[arg(long, env = "RECFLEET_PRESIGN_EXPIRY_SECS", default_value_t = 3600)]
    presign_expiry_secs: u64,
    /// Log format on stderr.
    #[arg(long, env = "RECFLEET_LOG_FORMAT", default_value = "pretty", value_parser = ["json", "pretty"])]
    log_format: String,
    /// Webhook signing secret (`whsec_…`); generated and kept in the data folder when unset.
    #[arg(long, env = "RECFLEET_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// On SIGTERM or SIGINT, how long to drain (new recordings get 503 `draining`, `/readyz`
    /// is unready, reads are served) before the state is flushed and the process exits.
    #[arg(long, env = "RECFLEET_DRAIN_SECS", default_value_t = 3)]
    drain_secs: u64,
    /// Stop the bots when the controller exits (for the demo and tests). By default they keep
    /// recording and uploading, and reconnect to the controller that comes back.
    #[arg(long, env = "RECFLEET_STOP_BOTS_ON_EXIT")]
    stop_bots_on_exit: bool,
}

/// `--runtime ecs`: where and how bot tasks run. AWS credentials, region and endpoint come from
/// the standard AWS settings (task role, environment, profile, `AWS_ENDPOINT_URL`).
#[derive(Debug, clap::Args)]
struct EcsArgs {
    /// The cluster bot tasks run in.
    #[arg(long, env = "RECFLEET_ECS_CLUSTER", default_value = "")]
    ecs_cluster: String,
    /// The bot's task definition: `family` (its latest revision) or `family:revision`.
    #[arg(long, env = "RECFLEET_ECS_TASK_DEFINITION", default_value = "")]
    ecs_task_definition: String,
    /// The bot's container in the task definition.
    #[arg(long, env = "RECFLEET_ECS_CONTAINER", default_value = "bot")]
    ecs_container: String,
    /// The bots' subnets, comma-separated.
    #[arg(long, env = "RECFLEET_ECS_SUBNETS", value_delimiter = ',')]
    ecs_subnets: Vec<String>,
    /// The bots' security groups, comma-separated.
    #[arg(long, env = "RECFLEET_ECS_SECURITY_GROUPS", value_delimiter = ',')]
    ecs_security_groups: Vec<String>,
    /// Give bot tasks a public IP (only for public subnets without a NAT gateway).
    #[arg(long, env = "RECFLEET_ECS_ASSIGN_PUBLIC_IP")]
    ecs_assign_public_ip: bool,
    /// Capacity providers and their weights, `NAME=WEIGHT[:BASE]`, e.g. `FARGATE_SPOT=3,FARGATE=1`.
    #[arg(long, env = "RECFLEET_ECS_CAPACITY_PROVIDER_STRATEGY")]
    ecs_capacity_provider_strategy: Option<String>,
    /// The launch type when no capacity provider strategy is given: FARGATE, EC2 or EXTERNAL.
    #[arg(long, env = "RECFLEET_ECS_LAUNCH_TYPE", conflicts_with = "ecs_capacity_provider_strategy")]
    ecs_launch_type: Option<String>,
}

/// The drain must leave time to flush and close within the 10 s that `docker stop`, ECS and
/// systemd give by default before they kill.
const MAX_DRAIN_SECS: u64 = 5;

fn main() -> std::process::ExitCode {
    match start() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("recfleet: {}", one_line(&err));
            std::process::ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, each said once: most of ours (and sqlx's) put their
/// cause in their own message already.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

fn start() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Demo(_)) && std::env::var_os("RUST_LOG").is_none() {
        // The demo shows a progress display: only warnings, from the bots (who inherit the
        // environment) too. Set before any thread starts.
        std::env::set_var("RUST_LOG", "warn,chromiumoxide=off");
    }
    if matches!(&cli.command, Command::Serve(a) if a.log_format == "json") {
        // The bots inherit the environment and share the controller's stderr: one format.
        std::env::set_var("RECFLEET_LOG_FORMAT", "json");
    }
    raise_open_files_limit();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(cli))
}

/// The soft limit on open files this raises to, within the hard limit: room for 10,000s of bot
/// connections, small enough for the bots (which inherit it) and their children.
const OPEN_FILES: libc::rlim_t = 65_536;

/// Every connected bot holds a socket: the soft limit on open files (often 1,024) goes up, so a
/// large fleet is not refused at its 1,000th bot. A failure leaves the limit as it was.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < OPEN_FILES.min(limit.rlim_max) {
            limit.rlim_cur = OPEN_FILES.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = matches!(&cli.command, Command::Serve(a) if a.log_format == "json");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,chromiumoxide=error".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        logs.json().flatten_event(true).with_current_span(true).init();
    } else {
        logs.compact().init();
    }
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Demo(args) => return demo(args).await,
    };
    anyhow::ensure!(args.pool_max >= 1, "invalid --pool-max: must be at least 1");
    let heartbeat = recfleet::fleet::HEARTBEAT_TIMEOUT.as_secs();
    anyhow::ensure!(
        args.lost_window_secs >= heartbeat,
        "invalid --lost-window-secs {}: at least the heartbeat timeout ({heartbeat} s)",
        args.lost_window_secs
    );
    anyhow::ensure!(args.pool_min_idle <= args.pool_max, "invalid --pool-min-idle: must not exceed --pool-max ({})", args.pool_max);
    for url in &args.advertise_url {
        anyhow::ensure!(url.starts_with("ws://") || url.starts_with("wss://"), "invalid --advertise-url {url:?}: use ws://host:port");
    }
    anyhow::ensure!(args.bot_cpus > 0.0 && args.bot_memory_mb >= 256, "invalid --bot-cpus/--bot-memory-mb: at least some CPU and 256 MiB");
    anyhow::ensure!(
        args.drain_secs <= MAX_DRAIN_SECS,
        "invalid --drain-secs {}: at most {MAX_DRAIN_SECS}, so the exit comes within the 10 s a supervisor waits",
        args.drain_secs
    );
    let docker = (args.runtime == "docker").then(|| recfleet::docker::DockerConfig {
        image: args.bot_image.clone(),
        pool: args.pool_name.clone(),
        network: args.docker_network.clone(),
        cpus: args.bot_cpus,
        memory_bytes: args.bot_memory_mb * 1024 * 1024,
        ..Default::default()
    });
    let store = match &args.store {
        Some(url) => Some(url.parse::<recfleet_storage::StoreUrl>().map_err(|e| anyhow::anyhow!("invalid --store: {e}"))?),
        None => None,
    };
    let ecs = match args.runtime.as_str() {
        "ecs" => {
            let e = &args.ecs;
            let strategy = match &e.ecs_capacity_provider_strategy {
                Some(text) => recfleet::ecs::parse_strategy(text)
                    .map_err(|err| anyhow::anyhow!("invalid --ecs-capacity-provider-strategy {text:?}: {err}"))?,
                None => Vec::new(),
            };
            let cfg = recfleet::ecs::EcsConfig {
                cluster: e.ecs_cluster.clone(),
                task_definition: e.ecs_task_definition.clone(),
                container: e.ecs_container.clone(),
                subnets: e.ecs_subnets.iter().filter(|s| !s.is_empty()).cloned().collect(),
                security_groups: e.ecs_security_groups.iter().filter(|s| !s.is_empty()).cloned().collect(),
                assign_public_ip: e.ecs_assign_public_ip,
                strategy,
                launch_type: e.ecs_launch_type.clone().unwrap_or_else(|| "FARGATE".into()),
                pool: args.pool_name.clone(),
                env: Vec::new(),
            };
            recfleet::ecs::validate(&cfg, store.as_ref(), &args.advertise_url).map_err(anyhow::Error::msg)?;
            Some(cfg)
        }
        _ => None,
    };
    let database = match &args.database_url {
        Some(url) => Some(url.parse::<recfleet::store::DatabaseUrl>().map_err(|e| anyhow::anyhow!("invalid --database-url: {e}"))?),
        None => None,
    };
    // Presigned S3 links may live at most 7 days.
    anyhow::ensure!(
        (1..=604_800).contains(&args.presign_expiry_secs),
        "invalid --presign-expiry-secs: must be between 1 and 604800 (7 days)"
    );
    let api_key = args.api_key.unwrap_or_else(|| {
        let key = uuid::Uuid::new_v4().simple().to_string();
        eprintln!("recfleet: generated API key (shown once): {key}");
        key
    });
    // Containers and tasks bring their own bot binary.
    let bot_binary = if docker.is_some() || ecs.is_some() { args.bot_binary.unwrap_or_default() } else { bot_binary(args.bot_binary)? };
    let cfg = recfleet::ServeConfig {
        data_dir: args.data_dir,
        database,
        api_key,
        pool_min_idle: args.pool_min_idle,
        pool_max: args.pool_max,
        pool_idle_ttl: std::time::Duration::from_secs(args.pool_idle_ttl_secs),
        pool_demand_window: std::time::Duration::from_secs(args.pool_demand_window_secs),
        allowed_hosts: args.allowed_hosts,
        networks: args.allow_networks,
        bot_binary,
        webhook_secret: args.webhook_secret,
        // A restarted controller re-adopts its bots; busy ones keep recording meanwhile.
        keep_bots_on_exit: !args.stop_bots_on_exit,
        drain: std::time::Duration::from_secs(args.drain_secs),
        store,
        s3_path_style: args.s3_path_style,
        presign_expiry: std::time::Duration::from_secs(args.presign_expiry_secs),
        docker,
        ecs,
        advertise_urls: args.advertise_url,
        lost_window: std::time::Duration::from_secs(args.lost_window_secs),
        handoffs: !args.no_handoff,
        deadlines: recfleet_proto::Deadlines {
            joining: std::time::Duration::from_secs(args.joining_deadline_secs),
            stopping: std::time::Duration::from_secs(args.stopping_deadline_secs),
            finalizing: std::time::Duration::from_secs(args.finalizing_deadline_secs),
        },
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    // SIGTERM is how `docker stop`, ECS and systemd stop a service; SIGINT is a terminal's Ctrl-C.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        };
        tracing::info!(signal = name, "stopping");
        trigger.cancel();
    });
    recfleet::serve(cfg, listener, shutdown).await?;
    Ok(())
}

fn bot_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("recfleet-bot"),
    };
    anyhow::ensure!(path.exists(), "the bot binary {} is missing: build the workspace (`make build`)", path.display());
    Ok(path)
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let cfg =
        recfleet::demo::DemoConfig { data_dir: args.data_dir, bot_binary: bot_binary(args.bot_binary)?, meeting_secs: args.meeting_secs };
    println!("recfleet demo: a {} s meeting with a lobby and a waiting room, recorded by a warm bot", cfg.meeting_secs);
    let result = recfleet::demo::run(cfg).await?;
    let r = &result.recording;
    println!(
        "Recorded {:.1} s, ended with {}. First frame {} after the request (the 2 s in the waiting room included).",
        r["duration_secs"].as_f64().unwrap_or(0.0),
        r["sub_code"].as_str().unwrap_or("?"),
        started_after(r)
    );
    println!("Playable MP4:  {}", result.mp4.display());
    println!("HLS playlist:  {}", result.playlist.display());
    Ok(())
}

fn started_after(r: &serde_json::Value) -> String {
    let parse = |k: &str| r[k].as_str().and_then(|s| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok());
    match (parse("created_at"), parse("recording_started_at")) {
        (Some(a), Some(b)) => format!("{} ms", (b - a).whole_milliseconds()),
        _ => "?".into(),
    }
}
