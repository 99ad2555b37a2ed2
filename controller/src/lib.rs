//! The recfleet controller: REST API, warm pool of bots, runtimes, state, storage and metrics.
//!
//! `serve` wires the parts: the manager task owns all state; the API and the bots' WebSocket
//! endpoint send it commands; the runtime launches bots as the pool plan asks. The server
//! listens at once, but nothing is loaded until this controller holds the leadership lease
//! (`leadership`): until then it is a standby (`/readyz` and every API call 503 `standby`). A
//! shutdown drains first: new recordings are refused (503 `draining`), `/readyz` turns unready,
//! reads keep working; then state is flushed, the lease released and the server stops. Bots are
//! left recording unless `keep_bots_on_exit` is off.

pub mod api;
pub mod demo;
pub mod docker;
pub mod ecs;
pub mod fleet;
pub mod leadership;
pub mod lifecycle;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod pool;
pub mod reads;
pub mod recovery;
pub mod runtime;
pub mod store;
pub mod validate;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What `recfleet serve` runs with, validated before anything starts.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    /// Where the state lives; `None` is the SQLite file `<data_dir>/recfleet.db`.
    pub database: Option<store::DatabaseUrl>,
    pub api_key: String,
    pub pool_min_idle: usize,
    pub pool_max: usize,
    /// An idle bot above the pool's target is retired once idle this long.
    pub pool_idle_ttl: std::time::Duration,
    /// The window of recent requests the pool's demand is read from (zero: off).
    pub pool_demand_window: std::time::Duration,
    pub allowed_hosts: Option<Vec<String>>,
    /// Loopback and private networks meeting and webhook URLs may point into
    /// (`--allow-networks`); metadata and link-local addresses are refused whatever it says.
    pub networks: recfleet_proto::NetworkPolicy,
    pub bot_binary: PathBuf,
    /// `whsec_…`; generated and kept in the data folder when absent.
    pub webhook_secret: Option<String>,
    /// Leave bots running on exit (a restart re-adopts them; `process` bots run in their own
    /// process group, so a terminal's Ctrl-C reaches only the controller); otherwise retire and
    /// stop them (`--stop-bots-on-exit`, for the demo and tests).
    pub keep_bots_on_exit: bool,
    /// How long a shutdown drains (new recordings refused, `/readyz` unready, reads served)
    /// before the state is flushed and the server stops.
    pub drain: std::time::Duration,
    /// Where recordings are kept; `None` is `file://<data_dir>`.
    pub store: Option<recfleet_storage::StoreUrl>,
    pub s3_path_style: bool,
    /// How long presigned S3 download links stay valid.
    pub presign_expiry: std::time::Duration,
    /// `Some`: bots run as Docker containers (`--runtime docker`); `None`: as processes.
    pub docker: Option<docker::DockerConfig>,
    /// `Some`: bots run as ECS tasks (`--runtime ecs`; takes precedence over `docker`).
    pub ecs: Option<ecs::EcsConfig>,
    /// The base URLs bots dial (`ws://host:port`), tried in turn (every controller that may
    /// lead, or one load-balanced address); empty: the address the server listens on.
    pub advertise_urls: Vec<String>,
    /// A busy bot is declared lost only after this long with neither a message on its socket
    /// nor a new segment of its recording in the store (`--lost-window-secs`).
    pub lost_window: std::time::Duration,
    /// Bots taken away (SIGTERM) get a successor from the warm pool (`--no-handoff` turns it off).
    pub handoffs: bool,
    /// The bots' deadlines per status, passed to every bot and enforced again by the manager
    /// (`recfleet_proto::deadline::CONTROLLER_MARGIN` later).
    pub deadlines: recfleet_proto::Deadlines,
}

impl ServeConfig {
    /// The store recordings go to.
    pub fn store_url(&self) -> recfleet_storage::StoreUrl {
        self.store.clone().unwrap_or_else(|| recfleet_storage::StoreUrl::File(absolute(&self.data_dir)))
    }
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot prepare the data folder {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("the recording store cannot be used: {0}")]
    Objects(#[from] recfleet_storage::StoreError),
    #[error("the runtime cannot start: {0}")]
    Runtime(#[from] runtime::RuntimeError),
    #[error(transparent)]
    FolderStore(#[from] docker::FolderStoreError),
    #[error("invalid webhook secret: {0}")]
    WebhookSecret(String),
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
    #[error("stopped leading: {0}; exiting so that a supervisor restarts this controller as a standby")]
    LeadershipLost(#[from] leadership::LeadershipLost),
    #[error("invalid deadline: {0}")]
    Deadline(#[from] recfleet_proto::deadline::DeadlineError),
}

/// After the drain, how long open connections (downloads, bots' sockets) get to close before
/// `serve` returns anyway: an exit is never held up by a client.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Serves on `listener` until `shutdown`, then drains (see the module's header) and returns.
pub async fn serve(cfg: ServeConfig, listener: TcpListener, shutdown: CancellationToken) -> Result<(), ServeError> {
    // The CLI's ranges refuse these too; a library caller gets the same check.
    cfg.deadlines.check()?;
    let addr: SocketAddr = listener.local_addr().map_err(ServeError::Serve)?;
    let spool_root = absolute(&cfg.data_dir.join("spool"));
    std::fs::create_dir_all(&spool_root).map_err(|source| ServeError::DataDir { path: spool_root.clone(), source })?;
    let holder = leadership::holder_name(&cfg.data_dir).map_err(|source| ServeError::DataDir { path: cfg.data_dir.clone(), source })?;
    let store_url = cfg.store_url();
    let objects =
        recfleet_storage::Store::open(&store_url, &recfleet_storage::StoreOptions { path_style: cfg.s3_path_style, ..Default::default() })
            .await?;
    // A wrong bucket or credentials fail here, at start, not in the middle of a meeting.
    objects.check().await?;
    let database = cfg.database.clone().unwrap_or_else(|| store::Store::default_url(&cfg.data_dir));
    let store = store::Store::open(&database).await?;
    tracing::info!(%database, "state database open");
    let metrics = Arc::new(metrics::Metrics::new());

    // The API listens from the start: a standby answers `/healthz`, and 503 `standby` elsewhere.
    let (commands, commands_rx) = mpsc::channel(1024);
    let (draining, close) = (CancellationToken::new(), CancellationToken::new());
    let (leading, standing_by) = (CancellationToken::new(), CancellationToken::new());
    let reads = reads::Reads::default();
    let launch_tokens = ecs::LaunchTokens::default();
    let state = api::AppState {
        reads: reads.clone(),
        commands: commands.clone(),
        api_key_sha256: store::token_hash(&cfg.api_key),
        allowed_hosts: cfg.allowed_hosts.clone(),
        networks: cfg.networks,
        objects: objects.clone(),
        presign_expiry: cfg.presign_expiry,
        metrics: metrics.clone(),
        launch_tokens: launch_tokens.clone(),
        shutdown: close.clone(),
        draining: draining.clone(),
        leading: leading.clone(),
        standing_by: standing_by.clone(),
    };
    tracing::info!(%addr, "controller listening");
    let server = axum::serve(listener, api::router(state)).with_graceful_shutdown(close.clone().cancelled_owned());
    let mut server = tokio::spawn(std::future::IntoFuture::into_future(server));

    let lease = tokio::select! {
        lease = leadership::take(&store, &holder, || {
            metrics.standby.set(1);
            standing_by.cancel();
        }) => lease,
        _ = shutdown.cancelled() => {
            tracing::info!("stopping a standby");
            close.cancel();
            let _ = tokio::time::timeout(CLOSE_GRACE, server).await;
            return Ok(());
        }
    };
    store.hold(lease.clone());
    // Cancelled by the manager when a write is fenced: another controller took over.
    let deposed = CancellationToken::new();
    // Set while the lease cannot be renewed (the database is away): the manager holds off
    // assigning and launching until it is.
    let lapsed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    metrics.standby.set(0);
    tracing::info!(generation = lease.generation, "leading");

    let mut bot_env = vec![("RECFLEET_STORE".to_string(), store_url.to_string())];
    if cfg.s3_path_style {
        bot_env.push(("RECFLEET_S3_PATH_STYLE".into(), "true".into()));
    }
    bot_env.extend(cfg.deadlines.env());
    // The bots' browsers may reach what the controller lets a request name, no more.
    bot_env.push(("RECFLEET_ALLOW_NETWORKS".into(), cfg.networks.to_string()));
    let secret = webhook::load_or_create_secret(cfg.webhook_secret.clone(), &store, &cfg.data_dir).await?;
    let webhooks =
        webhook::spawn(&secret, cfg.networks, store.clone(), metrics.clone()).map_err(|e| ServeError::WebhookSecret(e.to_string()))?;
    let (exits_tx, exits_rx) = mpsc::unbounded_channel();
    let runtime: Arc<dyn runtime::Runtime> = match (&cfg.ecs, &cfg.docker) {
        (Some(e), _) => {
            let ecs = ecs::EcsRuntime::connect(e.clone(), exits_tx, launch_tokens, metrics.ecs_reconcile.clone()).await?;
            let known = store.load_bots().await?.into_iter().map(|b| b.id).collect();
            let stopped = ecs.adopt_or_stop(&known).await?;
            if stopped > 0 {
                tracing::info!(stopped, "stopped bot tasks no state knows");
            }
            Arc::new(ecs)
        }
        (None, None) => Arc::new(runtime::ProcessRuntime::new(cfg.bot_binary.clone(), exits_tx, cfg.keep_bots_on_exit)),
        (None, Some(d)) => {
            let mut d = d.clone();
            if let recfleet_storage::StoreUrl::File(dir) = &store_url {
                // The bots write a folder store's recordings through a mount at the same path.
                let recordings = docker::prepare_folder_store(dir)?;
                d.binds.push(format!("{0}:{0}", recordings.display()));
            }
            d.env.extend(std::env::vars().filter(|(k, _)| k.starts_with("AWS_")));
            let docker = docker::DockerRuntime::connect(d, exits_tx).await?;
            let known = store.load_bots().await?.into_iter().map(|b| b.id).collect();
            let removed = docker.adopt_or_remove(&known).await?;
            if removed > 0 {
                tracing::info!(removed, "removed orphaned bot containers");
            }
            Arc::new(docker)
        }
    };
    let advertised = if cfg.advertise_urls.is_empty() { vec![format!("ws://{addr}")] } else { cfg.advertise_urls.clone() };
    let manager_cfg = manager::ManagerConfig {
        min_idle: cfg.pool_min_idle,
        max: cfg.pool_max,
        idle_ttl: cfg.pool_idle_ttl,
        demand_window: cfg.pool_demand_window,
        controller_urls: advertised.iter().map(|u| format!("{}/v1/bots/connect", u.trim_end_matches('/'))).collect(),
        spool_root,
        bot_env,
        objects: objects.clone(),
        scratch_root: cfg.data_dir.join("recovery"),
        metrics: metrics.clone(),
        public_url: format!("http://{addr}"),
        keep_bots_on_exit: cfg.keep_bots_on_exit,
        lost_window: cfg.lost_window,
        handoffs: cfg.handoffs,
        deadlines: cfg.deadlines,
        deadline_margin: recfleet_proto::deadline::CONTROLLER_MARGIN,
        deposed: deposed.clone(),
        lapsed: lapsed.clone(),
        reads,
    };
    let manager = manager::Manager::load(manager_cfg, runtime, store.clone(), webhooks).await?;
    let manager = tokio::spawn(manager.run(commands_rx, exits_rx));
    leading.cancel();

    // On shutdown: drain (the API refuses new recordings and `/readyz` says unready), then the
    // manager flushes its state and retires the bots (unless they are kept) while their
    // connections are open; then the lease is let go and the connections close.
    let (to_manager, closer, drain_started, drain_metrics) = (commands.clone(), close.clone(), draining.clone(), metrics.clone());
    let drain = cfg.drain;
    tokio::spawn(async move {
        shutdown.cancelled().await;
        drain_started.cancel();
        drain_metrics.draining.set(1);
        tracing::info!(drain_secs = drain.as_secs_f64(), "draining: new recordings are refused, /readyz is unready");
        tokio::time::sleep(drain).await;
        let (reply, done) = tokio::sync::oneshot::channel();
        if to_manager.send(manager::Command::Shutdown { reply }).await.is_ok() {
            let _ = done.await;
        }
        closer.cancel();
    });
    drop(commands);
    let overdue = async {
        close.cancelled().await;
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::select! {
        served = &mut server => served.expect("the server task does not panic").map_err(ServeError::Serve)?,
        _ = overdue => tracing::warn!(grace_secs = CLOSE_GRACE.as_secs(), "connections still open after the drain; stopping anyway"),
        why = leadership::keep(&store, &lease, &deposed, &lapsed) => {
            tracing::error!(error = %why, "stopped leading; exiting");
            close.cancel();
            manager.abort();
            server.abort();
            return Err(why.into());
        }
    }
    // The manager ends when the last sender is gone; a connection task that outlived the grace
    // may still hold one, so this waits only briefly (the state is flushed already).
    let _ = tokio::time::timeout(CLOSE_GRACE, manager).await;
    // Last: the state is flushed and the bots' connections are closed, so a standby that takes
    // over now misses nothing this controller was told.
    if let Err(err) = store.release_lease(&lease).await {
        tracing::warn!(error = %err, "cannot release the leadership lease; a standby takes over when it expires");
    }
    tracing::info!("controller stopped");
    Ok(())
}
