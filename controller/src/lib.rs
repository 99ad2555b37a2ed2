//! The recfleet controller: REST API, warm pool of bots, runtimes, state, storage and metrics.
//!
//! `serve` wires the parts: the manager task owns all state; the API and the bots' WebSocket
//! endpoint send it commands; the runtime launches bots as the pool plan asks.

pub mod api;
pub mod manager;
pub mod model;
pub mod pool;
pub mod runtime;
pub mod validate;

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
    pub api_key: String,
    pub pool_min_idle: usize,
    pub pool_max: usize,
    pub allowed_hosts: Option<Vec<String>>,
    pub bot_binary: PathBuf,
}

/// Serves on `listener` until `shutdown`; stops every bot it launched on the way out.
pub async fn serve(cfg: ServeConfig, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    let out_root = cfg.data_dir.join("recordings");
    std::fs::create_dir_all(&out_root)?;
    let (exits_tx, exits_rx) = mpsc::unbounded_channel();
    let runtime = Arc::new(runtime::ProcessRuntime::new(cfg.bot_binary.clone(), exits_tx));
    let manager_cfg = manager::ManagerConfig {
        min_idle: cfg.pool_min_idle,
        max: cfg.pool_max,
        controller_url: format!("ws://{addr}/v1/bots/connect"),
        out_root: out_root.clone(),
        public_url: format!("http://{addr}"),
    };
    let (commands, commands_rx) = mpsc::channel(1024);
    let manager = tokio::spawn(manager::Manager::new(manager_cfg, runtime).run(commands_rx, exits_rx));
    let state = api::AppState { commands, api_key: cfg.api_key, allowed_hosts: cfg.allowed_hosts, out_root };
    tracing::info!(%addr, "controller listening");
    axum::serve(listener, api::router(state)).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    let _ = manager.await;
    Ok(())
}
