//! The one writer of a recording's status on the controller. Every change goes through the
//! pure `RecordingStatus::next` (proto), the same table the bot uses; a transition the table
//! refuses is logged with both sides and counted, never applied.
//!
//! This module applies a status change to a recording; it must not persist, notify or decide
//! *when* an event happened (the manager does).

use recfleet_proto::{RecordingEvent, RecordingStatus};

use crate::metrics::Metrics;
use crate::model::Recording;

/// Moves `rec` on `event`. Returns whether the table allowed it (an allowed event may leave the
/// status as it was, e.g. a repeated stop).
pub fn advance(rec: &mut Recording, event: RecordingEvent, metrics: &Metrics) -> bool {
    match rec.status.next(event) {
        Ok(next) => {
            rec.status = next;
            true
        }
        Err(refused) => {
            tracing::warn!(
                recording_id = %rec.id,
                status = refused.from.as_str(),
                event = refused.event.as_str(),
                "status change refused by the transition table; not applied"
            );
            metrics.transitions_refused.with_label_values(&[refused.from.as_str(), refused.event.as_str()]).inc();
            false
        }
    }
}

/// Moves `rec` to `finalizing` from wherever media capture could end (recording, stopping), and
/// leaves it there when it already is.
pub fn to_finalizing(rec: &mut Recording, metrics: &Metrics) -> bool {
    match rec.status {
        RecordingStatus::Finalizing => true,
        _ => advance(rec, RecordingEvent::EndedWithMedia, metrics),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RecordingEvent as E;
    use RecordingStatus as S;

    fn recording(status: S) -> Recording {
        serde_json::from_value(serde_json::json!({
            "id": "rec_1", "status": status, "sub_code": null, "meeting_url": "https://m.example.com/a", "bot_name": "b",
            "created_at": "2026-01-01T00:00:00Z", "joined_at": null, "recording_started_at": null, "ended_at": null,
            "completed_at": null, "duration_secs": null, "partial": false, "max_duration_secs": null, "metadata": null,
            "outputs": null, "error": null
        }))
        .unwrap()
    }

    fn refused(m: &Metrics, status: S, event: E) -> u64 {
        m.transitions_refused.with_label_values(&[status.as_str(), event.as_str()]).get()
    }

    #[test]
    fn every_refused_transition_is_refused_and_counted() {
        let m = Metrics::new();
        let mut refusals = 0;
        for status in S::ALL {
            for event in E::ALL {
                let mut rec = recording(status);
                let applied = advance(&mut rec, event, &m);
                match status.next(event) {
                    Ok(to) => assert!(applied && rec.status == to, "{status:?} on {event:?}"),
                    Err(_) => {
                        refusals += 1;
                        assert!(!applied, "{status:?} on {event:?} applied");
                        assert_eq!(rec.status, status, "a refused change leaves the status as it was");
                        assert_eq!(refused(&m, status, event), 1, "{status:?} on {event:?} counted once");
                    }
                }
            }
        }
        assert!(refusals > 30, "the table refuses most pairs: {refusals}");
    }

    #[test]
    fn finalizing_is_reached_from_recording_and_stopping_only() {
        let m = Metrics::new();
        for (from, ok) in [(S::Recording, true), (S::Stopping, true), (S::Finalizing, true), (S::Joining, false), (S::Completed, false)] {
            let mut rec = recording(from);
            assert_eq!(to_finalizing(&mut rec, &m), ok, "{from:?}");
            assert_eq!(rec.status == S::Finalizing, ok, "{from:?}");
        }
    }
}
