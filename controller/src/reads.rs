//! What the API reads without asking the manager: every recording as last written to the state
//! database, newest first, and the pool as last planned. The manager is the only writer (after
//! each write and each re-plan); API handlers take the lock only to copy out what they answer.
//! With a large fleet the manager's one task is busy with heartbeats; reads do not queue behind
//! them.
//!
//! This module holds no logic about recordings or bots; it must not be written to but by the
//! manager.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use recfleet_proto::RecordingStatus;

use crate::model::{PoolView, Recording};

/// The shared handle: the manager writes, handlers read.
pub type Reads = Arc<RwLock<ReadModel>>;

#[derive(Debug, Default)]
pub struct ReadModel {
    recordings: HashMap<String, Recording>,
    /// Ids, oldest first.
    order: Vec<String>,
    pool: Option<PoolView>,
}

impl ReadModel {
    /// A recording as it was written: a new one is listed first from now on.
    pub fn upsert(&mut self, view: &Recording) {
        if self.recordings.insert(view.id.clone(), view.clone()).is_none() {
            self.order.push(view.id.clone());
        }
    }

    pub fn remove(&mut self, id: &str) {
        if self.recordings.remove(id).is_some() {
            self.order.retain(|o| o != id);
        }
    }

    pub fn set_pool(&mut self, pool: PoolView) {
        self.pool = Some(pool);
    }

    pub fn get(&self, id: &str) -> Option<Recording> {
        self.recordings.get(id).cloned()
    }

    /// Newest first, at most `limit`, after the recording `after` (the previous page's last).
    pub fn list(&self, status: Option<RecordingStatus>, limit: usize, after: Option<&str>) -> Vec<Recording> {
        let skip = after.and_then(|a| self.order.iter().rev().position(|id| id == a)).map_or(0, |p| p + 1);
        self.order
            .iter()
            .rev()
            .skip(skip)
            .filter_map(|id| self.recordings.get(id))
            .filter(|r| status.is_none_or(|s| r.status == s))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The pool as last planned (`None` until the manager has run once).
    pub fn pool(&self) -> Option<PoolView> {
        self.pool.clone()
    }
}

/// Reads a lock that is never held across a panic point by its writer.
pub fn read(reads: &Reads) -> std::sync::RwLockReadGuard<'_, ReadModel> {
    reads.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes it (the manager only).
pub fn write(reads: &Reads) -> std::sync::RwLockWriteGuard<'_, ReadModel> {
    reads.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, status: RecordingStatus) -> Recording {
        let mut r = Recording::queued(id.into(), "https://m.example.com/a".into(), "R".into(), None, serde_json::Value::Null);
        r.status = status;
        r
    }

    #[test]
    fn lists_newest_first_in_pages_and_by_status() {
        let mut m = ReadModel::default();
        for (i, s) in [RecordingStatus::Completed, RecordingStatus::Queued, RecordingStatus::Completed].into_iter().enumerate() {
            m.upsert(&rec(&format!("r{i}"), s));
        }
        let ids = |v: Vec<Recording>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(m.list(None, 2, None)), ["r2", "r1"]);
        assert_eq!(ids(m.list(None, 2, Some("r1"))), ["r0"]);
        assert_eq!(ids(m.list(Some(RecordingStatus::Completed), 10, None)), ["r2", "r0"]);
        m.upsert(&rec("r1", RecordingStatus::Failed));
        assert_eq!(m.get("r1").unwrap().status, RecordingStatus::Failed, "an update replaces, in place");
        assert_eq!(ids(m.list(None, 10, None)), ["r2", "r1", "r0"]);
        m.remove("r2");
        assert_eq!(ids(m.list(None, 10, None)), ["r1", "r0"]);
        assert!(m.get("r2").is_none());
    }
}
