//! The outbox: changes marked in memory are written, in order, as events with their projections
//! (one transaction each, fenced by the leadership lease), then announced (webhooks for status
//! changes, the finished-recordings metric). A write that fails leaves the rest marked, counts
//! the failure and makes `/readyz` unready until a write succeeds; a lost lease deposes.
//!
//! This module is the only one that writes events, projections and bots to the store (a delete
//! marks its recording deleted itself); it must not decide anything about them.

use std::time::{Duration, Instant};

use super::Manager;
use crate::store::{LogKind, StoreError, StoredBot};
use crate::webhook::Delivery;

/// While writes fail, how often a retry is made.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);
/// How long a retry may take before it counts as failed.
pub const RETRY_BUDGET: Duration = Duration::from_secs(1);

impl Manager {
    pub(super) fn touch(&mut self, id: &str, kind: LogKind, data: serde_json::Value) {
        self.dirty.push_back((id.to_string(), kind, data));
    }

    /// Writes the marked events with their projections, then announces status changes. On a
    /// failed write, what is not written stays marked, in order, for the next flush. While
    /// writes fail, a retry comes at most every `RETRY_EVERY` and gets `RETRY_BUDGET`, so a
    /// database that is away does not hold up the manager (bots' messages keep flowing).
    pub(super) async fn flush(&mut self) -> Result<(), StoreError> {
        let written = match self.write_failed_at {
            None => self.write_marked().await,
            Some(at) if at.elapsed() < RETRY_EVERY => return Err(StoreError::Retrying { secs: RETRY_EVERY.as_secs() }),
            Some(_) => match tokio::time::timeout(RETRY_BUDGET, self.write_marked()).await {
                Ok(written) => written,
                Err(_) => Err(StoreError::TimedOut { secs: RETRY_BUDGET.as_secs() }),
            },
        };
        match &written {
            Ok(()) if self.write_failed_at.is_some() => {
                tracing::info!("the state database takes writes again");
                self.write_failed_at = None;
            }
            Ok(()) => {}
            Err(err) => {
                if matches!(err, StoreError::Fenced { .. }) {
                    self.cfg.deposed.cancel();
                }
                if self.write_failed_at.is_none() {
                    tracing::error!(error = %err, "cannot write to the state database; changes wait in memory and are retried");
                }
                self.write_failed_at = Some(Instant::now());
                self.cfg.metrics.state_write_failures.inc();
            }
        }
        written
    }

    /// Cancel-safe (a retry's budget may run out mid-way): an entry leaves the queue only once
    /// it is written.
    pub(super) async fn write_marked(&mut self) -> Result<(), StoreError> {
        while let Some((id, kind, data)) = self.dirty.front().cloned() {
            let Some(entry) = self.recordings.get_mut(&id) else {
                self.dirty.pop_front();
                continue;
            };
            self.store.append(&entry.stored, kind, &data).await?;
            self.dirty.pop_front();
            crate::reads::write(&self.cfg.reads).upsert(&entry.stored.view);
            let status = entry.stored.view.status;
            if entry.notified != Some(status) {
                entry.notified = Some(status);
                if status.is_terminal() {
                    self.cfg.metrics.finished(status, entry.stored.view.sub_code);
                }
                if let Some(url) = &entry.stored.webhook_url {
                    let _ = self.webhooks.send(Delivery {
                        recording_id: id.clone(),
                        url: url.clone(),
                        event_type: format!("recording.{}", status.as_str()),
                        payload: serde_json::to_value(&entry.stored.view).expect("serializes"),
                    });
                }
            }
        }
        while let Some(id) = self.dirty_bots.last().cloned() {
            match self.bots.get(&id) {
                Some(bot) => {
                    let stored = StoredBot {
                        id: id.clone(),
                        token_sha256: bot.token_sha256.clone(),
                        state: bot.state,
                        recording_id: bot.recording.clone(),
                    };
                    self.store.save_bot(&stored).await?;
                }
                None => self.store.delete_bot(&id).await?,
            }
            self.dirty_bots.pop();
        }
        Ok(())
    }
}
