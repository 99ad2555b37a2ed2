//! Webhooks on every status change of a recording, signed per the Standard Webhooks scheme
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`), retried with exponential backoff
//! and jitter, and every attempt recorded in the store.
//!
//! Deliveries run on their own tasks: a slow receiver never holds up the manager.

use std::path::Path;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use standardwebhooks::Webhook;
use tokio::sync::mpsc;

use crate::store::{DeliveryAttempt, Store, StoreError};

/// Attempts per delivery, the first included.
const MAX_ATTEMPTS: usize = 6;
const FIRST_RETRY: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A signing secret kept in the data folder by controllers from before the secret moved into the
/// state database; imported once.
const LEGACY_SECRET_FILE: &str = "webhook_secret";
/// The setting that holds the generated signing secret, shared by every controller on the
/// database (a controller that moves hosts signs with the same key).
const SECRET_SETTING: &str = "webhook_secret";

/// One event to deliver.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub recording_id: String,
    pub url: String,
    pub event_type: String,
    pub payload: serde_json::Value,
}

/// The signing secret: the one given, else the one in the state database (stored by the first
/// controller that needed one: imported from a legacy data-folder file, or generated).
pub async fn load_or_create_secret(given: Option<String>, store: &Store, data_dir: &Path) -> Result<String, StoreError> {
    if let Some(secret) = given {
        return Ok(secret);
    }
    let legacy = std::fs::read_to_string(data_dir.join(LEGACY_SECRET_FILE)).ok().map(|s| s.trim().to_string());
    let candidate = legacy.unwrap_or_else(|| {
        let mut bytes = uuid::Uuid::new_v4().as_bytes().to_vec();
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        use base64::Engine;
        format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(&bytes))
    });
    let secret = store.setting_or_insert(SECRET_SETTING, &candidate).await?;
    if secret == candidate {
        tracing::info!("stored a webhook signing secret in the state database");
    }
    Ok(secret)
}

/// Starts the deliverer; send it deliveries.
pub fn spawn(
    secret: &str,
    store: Store,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> Result<mpsc::UnboundedSender<Delivery>, standardwebhooks::WebhookError> {
    let signer = std::sync::Arc::new(Webhook::new(secret)?);
    let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("an HTTP client builds");
    let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
    tokio::spawn(async move {
        while let Some(delivery) = rx.recv().await {
            tokio::spawn(deliver(signer.clone(), client.clone(), store.clone(), metrics.clone(), delivery));
        }
    });
    Ok(tx)
}

async fn deliver(
    signer: std::sync::Arc<Webhook>,
    client: reqwest::Client,
    store: Store,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    d: Delivery,
) {
    let message_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
    let body = serde_json::json!({
        "type": d.event_type,
        "timestamp": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).expect("formats"),
        "data": d.payload,
    })
    .to_string();
    let attempt = std::sync::atomic::AtomicU32::new(0);
    let once = || async {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = signer.sign(&message_id, ts, body.as_bytes()).map_err(|e| e.to_string())?;
        let result = client
            .post(&d.url)
            .header("content-type", "application/json")
            .header(standardwebhooks::HEADER_WEBHOOK_ID, &message_id)
            .header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, ts.to_string())
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .body(body.clone())
            .send()
            .await;
        let (code, error) = match &result {
            Ok(resp) if resp.status().is_success() => (Some(resp.status().as_u16()), None),
            Ok(resp) => (Some(resp.status().as_u16()), Some(format!("HTTP {}", resp.status()))),
            Err(err) => (None, Some(err.to_string())),
        };
        let record = DeliveryAttempt {
            message_id: &message_id,
            recording_id: &d.recording_id,
            url: &d.url,
            event_type: &d.event_type,
            attempt: n,
            status_code: code,
            error: error.clone(),
        };
        if let Err(err) = store.record_delivery(&record).await {
            tracing::warn!(error = %err, "cannot record a webhook delivery");
        }
        let result = if error.is_none() { "delivered" } else { "failed" };
        metrics.webhook_deliveries.with_label_values(&[result]).inc();
        match error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    };
    let backoff = ExponentialBuilder::default().with_min_delay(FIRST_RETRY).with_max_times(MAX_ATTEMPTS - 1).with_jitter();
    if let Err(err) = once.retry(backoff).sleep(tokio::time::sleep).await {
        metrics.webhook_deliveries.with_label_values(&["gave_up"]).inc();
        tracing::error!(recording_id = %d.recording_id, url = %d.url, error = %err, "webhook not delivered after {MAX_ATTEMPTS} attempts");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn generated_secrets_are_valid_standard_webhook_keys_kept_in_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Store::default_url(dir.path())).await.unwrap();
        let secret = load_or_create_secret(None, &store, dir.path()).await.unwrap();
        assert!(secret.starts_with("whsec_"));
        let wh = Webhook::new(&secret).unwrap();
        let sig = wh.sign("msg_1", 1_700_000_000, b"{}").unwrap();
        assert!(sig.starts_with("v1,"));
        // Another data folder on the same database (another host) signs with the same key.
        let elsewhere = tempfile::tempdir().unwrap();
        assert_eq!(load_or_create_secret(None, &store, elsewhere.path()).await.unwrap(), secret, "kept across restarts and hosts");
        assert!(!dir.path().join(LEGACY_SECRET_FILE).exists(), "not written to the data folder");
    }

    #[tokio::test]
    async fn a_secret_from_an_older_data_folder_is_imported() {
        let dir = tempfile::tempdir().unwrap();
        let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        std::fs::write(dir.path().join(LEGACY_SECRET_FILE), format!("{old}\n")).unwrap();
        let store = Store::open(&Store::default_url(dir.path())).await.unwrap();
        assert_eq!(load_or_create_secret(None, &store, dir.path()).await.unwrap(), old);
        assert_eq!(load_or_create_secret(Some("whsec_given".into()), &store, dir.path()).await.unwrap(), "whsec_given", "a given one wins");
    }
}
