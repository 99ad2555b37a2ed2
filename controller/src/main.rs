//! `recfleet`: flags and environment in, `recfleet::serve` out.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "recfleet", version, about = "The recfleet controller: REST API and a warm pool of recording bots")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API and keep the warm pool.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[arg(long, env = "RECFLEET_LISTEN", default_value = "127.0.0.1:8700")]
    listen: std::net::SocketAddr,
    #[arg(long, env = "RECFLEET_DATA_DIR", default_value = "recfleet-data")]
    data_dir: PathBuf,
    /// When unset, one is generated and printed once.
    #[arg(long, env = "RECFLEET_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[arg(long, env = "RECFLEET_POOL_MIN_IDLE", default_value_t = 1)]
    pool_min_idle: usize,
    #[arg(long, env = "RECFLEET_POOL_MAX", default_value_t = 4)]
    pool_max: usize,
    /// Comma-separated meeting hosts to allow (all when unset).
    #[arg(long, env = "RECFLEET_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Option<Vec<String>>,
    /// The bot binary (default: `recfleet-bot` next to this one).
    #[arg(long, env = "RECFLEET_BOT_BINARY")]
    bot_binary: Option<PathBuf>,
    /// Webhook signing secret (`whsec_…`); generated and kept in the data folder when unset.
    #[arg(long, env = "RECFLEET_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,chromiumoxide=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Serve(args) = Cli::parse().command;
    anyhow::ensure!(args.pool_max >= 1, "invalid --pool-max: must be at least 1");
    let api_key = args.api_key.unwrap_or_else(|| {
        let key = uuid::Uuid::new_v4().simple().to_string();
        eprintln!("recfleet: generated API key (shown once): {key}");
        key
    });
    let bot_binary = match args.bot_binary {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("recfleet-bot"),
    };
    let cfg = recfleet::ServeConfig {
        data_dir: args.data_dir,
        api_key,
        pool_min_idle: args.pool_min_idle,
        pool_max: args.pool_max,
        allowed_hosts: args.allowed_hosts,
        bot_binary,
        webhook_secret: args.webhook_secret,
        // A restarted controller re-adopts its bots; busy ones keep recording meanwhile.
        keep_bots_on_exit: true,
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        trigger.cancel();
    });
    recfleet::serve(cfg, listener, shutdown).await?;
    Ok(())
}
