//! Which controller leads, when several share one database: a lease row with an expiry and a
//! generation (see `store`). The leader renews it every `RENEW_EVERY`; a standby tries to take it
//! every `STANDBY_POLL` and gets it once it has expired, with the next generation. Every write
//! is fenced by the generation held, so a leader that lost its lease writes nothing more.
//!
//! A controller's name is kept in its data folder: a restart on the same folder takes its own
//! lease back at once; a controller elsewhere waits the lease out (at most `LEASE_TTL`), or not
//! at all after a clean exit, which releases it.
//!
//! This module decides who leads; it must not touch recordings, bots or the API.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::store::{Lease, Store};

/// How long a lease lasts unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often the leader renews: a renewal may fail a few times before the lease runs out.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How often a standby tries to take the lease.
pub const STANDBY_POLL: Duration = Duration::from_secs(1);
/// The file in the data folder that names this controller.
const NAME_FILE: &str = "controller-id";

/// This controller's name: kept in `data_dir` (made on first start).
pub fn holder_name(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(NAME_FILE);
    if let Ok(name) = std::fs::read_to_string(&path) {
        let name = name.trim();
        if !name.is_empty() {
            return Ok(name.to_string());
        }
    }
    let name = format!("ctl_{}", uuid::Uuid::new_v4().simple());
    let tmp = data_dir.join(format!(".{NAME_FILE}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &name)?;
    std::fs::rename(&tmp, &path)?;
    Ok(name)
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Takes the lease, waiting as a standby while another controller's is current. `on_standby` is
/// called once, when the first attempt finds another leader. Database errors are retried (a
/// standby that cannot reach the database simply stays one); the caller bounds the wait.
pub async fn take(store: &Store, holder: &str, on_standby: impl FnOnce()) -> Lease {
    let mut on_standby = Some(on_standby);
    let mut warned = false;
    loop {
        match store.try_take_lease(holder, now_ms(), LEASE_TTL.as_millis() as i64).await {
            Ok(Some(lease)) => return lease,
            Ok(None) => {
                if let Some(f) = on_standby.take() {
                    tracing::info!("another controller leads; standing by (/readyz is unready until this one takes over)");
                    f();
                }
            }
            Err(err) => {
                if !warned {
                    tracing::warn!(error = %err, "cannot read the leadership lease; retrying");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(STANDBY_POLL).await;
    }
}

/// Why a leader stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum LeadershipLost {
    #[error("another controller took over the lease (this one held generation {generation})")]
    TakenOver { generation: i64 },
    #[error("a write was refused: another controller took over the lease (this one held generation {generation})")]
    Fenced { generation: i64 },
}

/// How long after its last renewal a leader that cannot renew still counts on its lease: it
/// stops a renewal period before the lease runs out, so it is gone before a standby takes over.
pub const STEP_DOWN_AFTER: Duration = Duration::from_secs(LEASE_TTL.as_secs() - RENEW_EVERY.as_secs());

/// Pure: whether a leader whose last successful renewal started at `last_ok` may still act at `now`.
pub fn still_leads(last_ok: tokio::time::Instant, now: tokio::time::Instant) -> bool {
    now.saturating_duration_since(last_ok) < STEP_DOWN_AFTER
}

/// Renews `lease` every `RENEW_EVERY` until it is lost, and says why: taken over, or a write
/// fenced (`deposed` cancelled by the manager). Each attempt is bounded, so a hung connection
/// counts as a failure. A leader that cannot renew for `STEP_DOWN_AFTER` (the database is away)
/// sets `lapsed`: it stops assigning and launching, which only a leader may do, but keeps its
/// state and its bots and goes on trying. If the lease is still its own when the database is
/// back (no standby took it: nobody else could write meanwhile), it leads on; if not, it is lost.
pub async fn keep(store: &Store, lease: &Lease, deposed: &tokio_util::sync::CancellationToken, lapsed: &AtomicBool) -> LeadershipLost {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RENEW_EVERY) => {}
            _ = deposed.cancelled() => return LeadershipLost::Fenced { generation: lease.generation },
        }
        let attempt = tokio::time::Instant::now();
        let renewed = tokio::time::timeout(RENEW_EVERY, store.renew_lease(lease, now_ms(), LEASE_TTL.as_millis() as i64)).await;
        let failure = match renewed {
            Ok(Ok(true)) => {
                last_ok = attempt;
                if lapsed.swap(false, Ordering::SeqCst) {
                    tracing::info!(generation = lease.generation, "the leadership lease is renewed again: leading on");
                }
                continue;
            }
            Ok(Ok(false)) => return LeadershipLost::TakenOver { generation: lease.generation },
            Ok(Err(err)) => err.to_string(),
            Err(_) => "the renewal timed out".to_string(),
        };
        if !still_leads(last_ok, tokio::time::Instant::now()) && !lapsed.swap(true, Ordering::SeqCst) {
            tracing::error!(
                secs = last_ok.elapsed().as_secs(),
                error = %failure,
                "cannot renew the leadership lease: not assigning or launching until it is renewed (a standby may take over)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    async fn store(dir: &Path) -> Store {
        Store::open(&Store::default_url(dir)).await.unwrap()
    }

    #[tokio::test]
    async fn one_lease_at_a_time_and_the_next_generation_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let ttl = 5_000;
        let a = s.try_take_lease("a", 1_000, ttl).await.unwrap().expect("a free lease is taken");
        assert_eq!(a.generation, 1);
        assert_eq!(s.try_take_lease("b", 2_000, ttl).await.unwrap(), None, "a's lease is current");
        assert!(s.renew_lease(&a, 5_000, ttl).await.unwrap());
        assert_eq!(s.try_take_lease("b", 9_000, ttl).await.unwrap(), None, "renewed until 10 000");
        let b = s.try_take_lease("b", 10_001, ttl).await.unwrap().expect("an expired lease is taken");
        assert_eq!(b.generation, 2);
        assert!(!s.renew_lease(&a, 10_002, ttl).await.unwrap(), "a's lease is gone");
        // A restart of b (same name) takes its own lease back at once.
        let b2 = s.try_take_lease("b", 10_003, ttl).await.unwrap().expect("its own lease");
        assert_eq!(b2.generation, 3);
        s.release_lease(&b2).await.unwrap();
        assert_eq!(s.try_take_lease("c", 10_004, ttl).await.unwrap().map(|l| l.generation), Some(4), "released: no wait");
    }

    #[tokio::test]
    async fn a_leader_that_lost_its_lease_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let old = store(dir.path()).await;
        let now = now_ms();
        let lease = old.try_take_lease("old", now - 10_000, 5_000).await.unwrap().unwrap();
        old.hold(lease);
        old.setting_or_insert("x", "1").await.expect("the leader writes");
        let new = store(dir.path()).await;
        let taken = new.try_take_lease("new", now, 5_000).await.unwrap().expect("expired: taken over");
        new.hold(taken.clone());
        let err = old.setting_or_insert("y", "1").await.unwrap_err();
        assert!(matches!(err, StoreError::Fenced { generation: 1 }), "{err}");
        assert_eq!(new.setting_or_insert("y", "2").await.unwrap(), "2", "the new leader writes");
        assert_eq!(taken.generation, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_steps_down_before_its_lease_runs_out() {
        let last_ok = tokio::time::Instant::now();
        assert!(still_leads(last_ok, tokio::time::Instant::now()));
        tokio::time::advance(STEP_DOWN_AFTER - Duration::from_millis(1)).await;
        assert!(still_leads(last_ok, tokio::time::Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!still_leads(last_ok, tokio::time::Instant::now()), "stepped down");
        assert!(STEP_DOWN_AFTER < LEASE_TTL, "gone before a standby may take over");
    }

    #[test]
    fn the_name_is_kept_in_the_data_folder() {
        let dir = tempfile::tempdir().unwrap();
        let name = holder_name(dir.path()).unwrap();
        assert!(name.starts_with("ctl_"));
        assert_eq!(holder_name(dir.path()).unwrap(), name);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [NAME_FILE], "no temporary file left");
    }
}
