//! The `docker` runtime: each bot in a container of its own (the `recfleet-bot` image), through
//! the engine's API (bollard). Containers get CPU and memory limits, 1 GiB of `/dev/shm` for
//! Chromium, labels naming the pool and the bot, and the controller's URL and the bot's token in
//! their environment. A bot is stopped with SIGTERM, a grace, then SIGKILL (the engine's stop);
//! its exit is reported like a process's, and the container is removed after.
//!
//! Like every runtime, it launches and stops; it must not decide how many bots there are.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::runtime::{ExitReason, Exited, LaunchSpec, Runtime, RuntimeError};

/// Labels every bot container carries.
pub const LABEL_POOL: &str = "recfleet.pool";
pub const LABEL_BOT: &str = "recfleet.bot_id";
/// How long a bot gets after SIGTERM to finalize before the engine kills it.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// What a bot container gets between SIGTERM and SIGKILL when stopped from outside: the
/// handoff's grace, the stopping deadline and the upload drain (the Terraform task
/// definition's `stopTimeout` is the same).
const CONTAINER_STOP_TIMEOUT_SECS: i64 = 120;
/// The bot image's user and group (`container/Dockerfile.bot`).
pub const BOT_UID: u32 = 10001;

/// Why a folder store cannot take the bot containers' files.
#[derive(Debug, thiserror::Error)]
pub enum FolderStoreError {
    #[error("cannot prepare the folder store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "bot containers run as uid {BOT_UID} and cannot write the folder store's {path} (owner uid {owner}, mode {mode:o}): \
         run `chown {BOT_UID}:{BOT_UID} {path}`, run the controller as root (it does that itself), or use an s3:// store"
    )]
    NotWritable { path: PathBuf, owner: u32, mode: u32 },
}

/// Makes a folder store's `recordings/` folder (the only part mounted into bot containers, so
/// bots never see the rest of the folder, such as the state database) writable by the bots'
/// user: as root by giving it to that user, otherwise by checking that it already is. Returns
/// the folder to mount.
pub fn prepare_folder_store(root: &Path) -> Result<PathBuf, FolderStoreError> {
    let path = root.join("recordings");
    let io = |source| FolderStoreError::Io { path: path.clone(), source };
    std::fs::create_dir_all(&path).map_err(io)?;
    let meta = std::fs::metadata(&path).map_err(io)?;
    if writable_by(meta.uid(), meta.gid(), meta.mode(), BOT_UID, BOT_UID) {
        return Ok(path);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&path, Some(BOT_UID), Some(BOT_UID)).map_err(io)?;
        tracing::info!(path = %path.display(), uid = BOT_UID, "gave the folder store's recordings to the bot containers' user");
        return Ok(path);
    }
    Err(FolderStoreError::NotWritable { path: path.clone(), owner: meta.uid(), mode: meta.mode() & 0o7777 })
}

/// Pure: whether a folder with this owner, group and mode lets `uid`/`gid` create files in it.
fn writable_by(owner: u32, group: u32, mode: u32, uid: u32, gid: u32) -> bool {
    let wx = |bits: u32| bits & 0o3 == 0o3;
    if owner == uid {
        wx(mode >> 6)
    } else if group == gid {
        wx(mode >> 3)
    } else {
        wx(mode)
    }
}

/// How bot containers are made.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    pub image: String,
    /// Names this controller's containers (label `recfleet.pool`).
    pub pool: String,
    /// The Docker network the bots join (`bridge` by default).
    pub network: String,
    pub cpus: f64,
    pub memory_bytes: i64,
    pub shm_bytes: i64,
    /// Host folders mounted at the same path (a `file://` store's `recordings/`).
    pub binds: Vec<String>,
    /// More environment for every bot (the AWS settings of an S3 store).
    pub env: Vec<(String, String)>,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            image: "recfleet-bot:dev".into(),
            pool: "default".into(),
            network: "bridge".into(),
            cpus: 1.0,
            memory_bytes: 2 << 30,
            shm_bytes: 1 << 30,
            binds: Vec::new(),
            env: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    cfg: DockerConfig,
    exits: mpsc::UnboundedSender<Exited>,
}

/// The container name of a bot.
pub fn container_name(bot_id: &str) -> String {
    format!("recfleet-{bot_id}")
}

impl DockerRuntime {
    /// Connects to the local engine and checks it answers and has the image.
    pub async fn connect(cfg: DockerConfig, exits: mpsc::UnboundedSender<Exited>) -> Result<Self, RuntimeError> {
        let err = |e: String| RuntimeError::Docker(e);
        let docker = Docker::connect_with_local_defaults().map_err(|e| err(format!("cannot reach the Docker engine: {e}")))?;
        docker.ping().await.map_err(|e| err(format!("the Docker engine does not answer: {e}")))?;
        docker
            .inspect_image(&cfg.image)
            .await
            .map_err(|e| err(format!("the bot image {} is missing (container/build.sh makes it): {e}", cfg.image)))?;
        Ok(Self { docker, cfg, exits })
    }

    /// This pool's bot containers: bot id → container id.
    pub async fn containers(&self) -> Result<HashMap<String, String>, RuntimeError> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_POOL}={}", self.cfg.pool)])]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions { all: true, filters: Some(filters), ..Default::default() }))
            .await
            .map_err(|e| RuntimeError::Docker(format!("cannot list containers: {e}")))?;
        Ok(list.into_iter().filter_map(|c| Some((c.labels?.get(LABEL_BOT)?.clone(), c.id?))).collect())
    }

    /// Removes this pool's containers whose bot the controller does not know (a controller
    /// that lost its state, or a bot whose removal was interrupted); watches the others again.
    /// Returns how many were removed.
    pub async fn adopt_or_remove(&self, known: &HashSet<String>) -> Result<usize, RuntimeError> {
        let mut removed = 0;
        for (bot_id, id) in self.containers().await? {
            if known.contains(&bot_id) {
                tokio::spawn(watch(self.docker.clone(), bot_id, id, self.exits.clone()));
            } else {
                tracing::warn!(bot_id = %bot_id, container = %id, "removing an orphaned bot container");
                // With its anonymous volumes (the image declares some), or they would pile up.
                let opts = RemoveContainerOptions { force: true, v: true, ..Default::default() };
                match self.docker.remove_container(&id, Some(opts)).await {
                    Ok(()) => removed += 1,
                    Err(e) => tracing::warn!(bot_id = %bot_id, error = %e, "cannot remove an orphaned container"),
                }
            }
        }
        Ok(removed)
    }

    fn body(&self, spec: &LaunchSpec) -> ContainerCreateBody {
        let mut env = vec![
            format!("RECFLEET_CONTROLLER_URL={}", spec.controller_url),
            format!("RECFLEET_BOT_ID={}", spec.bot_id),
            format!("RECFLEET_BOT_TOKEN={}", spec.token),
        ];
        env.extend(spec.env.iter().chain(self.cfg.env.iter()).map(|(k, v)| format!("{k}={v}")));
        let labels = HashMap::from([(LABEL_POOL.to_string(), self.cfg.pool.clone()), (LABEL_BOT.to_string(), spec.bot_id.clone())]);
        ContainerCreateBody {
            image: Some(self.cfg.image.clone()),
            env: Some(env),
            labels: Some(labels),
            // A `docker stop` from outside (a host drained) gives the bot this long to hand its
            // recording over and store what is left, as ECS's `stopTimeout` does.
            stop_timeout: Some(CONTAINER_STOP_TIMEOUT_SECS),
            host_config: Some(HostConfig {
                nano_cpus: Some((self.cfg.cpus * 1e9) as i64),
                memory: Some(self.cfg.memory_bytes),
                shm_size: Some(self.cfg.shm_bytes),
                network_mode: Some(self.cfg.network.clone()),
                binds: (!self.cfg.binds.is_empty()).then(|| self.cfg.binds.clone()),
                // The engine removes a bot's container when it exits, even if this controller
                // is gone by then (it stopped and did not keep its bots).
                auto_remove: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Waits for a bot's container to exit and be removed (containers are auto-removed), and
/// reports it.
async fn watch(docker: Docker, bot_id: String, id: String, exits: mpsc::UnboundedSender<Exited>) {
    let mut wait = docker.wait_container(&id, Some(WaitContainerOptions { condition: "removed".into() }));
    let (code, detail) = match wait.next().await {
        Some(Ok(r)) => (Some(r.status_code), format!("container exit code {}", r.status_code)),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, error })) => {
            (Some(code), format!("container exit code {code}{}", if error.is_empty() { String::new() } else { format!(": {error}") }))
        }
        Some(Err(e)) => (None, format!("lost track of the container: {e}")),
        None => (None, "the container is gone".into()),
    };
    // A container the controller stopped ends with SIGTERM's 143 (or SIGKILL's 137): its
    // stop is logged where it was asked; here it is an exit like any other.
    let reason = if code == Some(0) { ExitReason::Finished } else { ExitReason::Crashed };
    let _ = exits.send(Exited { bot_id, reason, detail });
}

impl Runtime for DockerRuntime {
    fn launch(&self, spec: &LaunchSpec) -> Result<(), RuntimeError> {
        let (docker, body, exits) = (self.docker.clone(), self.body(spec), self.exits.clone());
        let bot_id = spec.bot_id.clone();
        tokio::spawn(async move {
            let name = container_name(&bot_id);
            let created =
                docker.create_container(Some(CreateContainerOptions { name: Some(name.clone()), ..Default::default() }), body).await;
            let started = match created {
                Ok(c) => docker.start_container(&c.id, None::<StartContainerOptions>).await.map(|()| c.id),
                Err(e) => Err(e),
            };
            match started {
                Ok(id) => watch(docker, bot_id, id, exits).await,
                Err(e) => {
                    tracing::error!(bot_id = %bot_id, error = %e, "cannot start a bot container");
                    let _ =
                        exits.send(Exited { bot_id, reason: ExitReason::LaunchFailed, detail: format!("cannot start its container: {e}") });
                }
            }
        });
        Ok(())
    }

    fn stop(&self, bot_id: &str) {
        let docker = self.docker.clone();
        let name = container_name(bot_id);
        tokio::spawn(async move {
            let opts = StopContainerOptions { t: Some(STOP_GRACE.as_secs() as i32), ..Default::default() };
            if let Err(e) = docker.stop_container(&name, Some(opts)).await {
                tracing::debug!(container = %name, error = %e, "stop: the container is already gone");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_writable_by_its_owner_group_or_everyone_as_its_mode_says() {
        let (bot, other) = (BOT_UID, 0);
        let cases: &[(u32, u32, u32, bool)] = &[
            (bot, other, 0o755, true),
            (bot, other, 0o555, false),
            (other, bot, 0o775, true),
            (other, bot, 0o755, false),
            (other, other, 0o777, true),
            (other, other, 0o1777, true),
            (other, other, 0o755, false),
            (other, other, 0o700, false),
        ];
        for (owner, group, mode, want) in cases {
            assert_eq!(writable_by(*owner, *group, *mode, BOT_UID, BOT_UID), *want, "owner {owner} group {group} mode {mode:o}");
        }
    }
}
