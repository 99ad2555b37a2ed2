//! Webhooks on every status change of a recording, signed per the Standard Webhooks scheme
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`), retried with exponential backoff
//! and jitter, and every attempt recorded in the store.
//!
//! Every attempt checks where it goes: a literal address against the address policy
//! (`recfleet_proto::address`), a host name by a resolver that refuses to hand the client any
//! address the policy refuses, so a name whose DNS changed after the request (rebinding) cannot
//! reach a metadata or private address. No redirect is followed (a 3xx is a failed attempt), and
//! a refused address is not retried.
//!
//! Deliveries run on their own tasks: a slow receiver never holds up the manager.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use recfleet_proto::address::{NetworkPolicy, Refusal};
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

/// The address a delivery was refused, as the resolver reports it to the client.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {ip}, {refusal}")]
struct RefusedAddress {
    host: String,
    ip: std::net::IpAddr,
    refusal: Refusal,
}

/// The client's resolver: the system's, then every address checked. One refused address refuses
/// the name (the client could pick any of them).
#[derive(Debug)]
struct CheckedResolver(NetworkPolicy);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some((ip, refusal)) = policy.first_refused(addrs.iter().map(SocketAddr::ip)) {
                return Err(Box::new(RefusedAddress { host, ip, refusal }) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The client every delivery uses: checked resolution, no redirects, a timeout, and no proxy
/// from the environment (through a proxy the receiver's name would be resolved by the proxy,
/// past the check).
fn client(policy: NetworkPolicy) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        // No kept connections: every delivery resolves the name again and checks the addresses.
        .pool_max_idle_per_host(0)
        .dns_resolver(Arc::new(CheckedResolver(policy)))
        .build()
        .expect("an HTTP client builds")
}

/// Why one attempt failed; a refusal ends the delivery.
#[derive(Debug)]
enum AttemptError {
    Refused(String),
    Failed(String),
}

/// The resolver's refusal, when that is why the request failed.
fn resolver_refusal(err: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<RefusedAddress>() {
            return Some(refused.to_string());
        }
        source = e.source();
    }
    None
}

/// Starts the deliverer; send it deliveries.
pub fn spawn(
    secret: &str,
    policy: NetworkPolicy,
    store: Store,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<mpsc::UnboundedSender<Delivery>, standardwebhooks::WebhookError> {
    let signer = Arc::new(Webhook::new(secret)?);
    let client = client(policy);
    let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
    tokio::spawn(async move {
        while let Some(delivery) = rx.recv().await {
            tokio::spawn(deliver(signer.clone(), client.clone(), policy, store.clone(), metrics.clone(), delivery));
        }
    });
    Ok(tx)
}

async fn deliver(
    signer: Arc<Webhook>,
    client: reqwest::Client,
    policy: NetworkPolicy,
    store: Store,
    metrics: Arc<crate::metrics::Metrics>,
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
        let signature = signer.sign(&message_id, ts, body.as_bytes()).map_err(|e| AttemptError::Failed(e.to_string()))?;
        // A literal address never reaches the resolver: check it here.
        let refused_url = policy.check_url(&d.url, &["http", "https"]).err().map(|why| why.to_string());
        let result = match refused_url {
            Some(_) => None,
            None => Some(
                client
                    .post(&d.url)
                    .header("content-type", "application/json")
                    .header(standardwebhooks::HEADER_WEBHOOK_ID, &message_id)
                    .header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, ts.to_string())
                    .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
                    .body(body.clone())
                    .send()
                    .await,
            ),
        };
        let (code, error) = match (&result, refused_url) {
            (_, Some(why)) => (None, Some(AttemptError::Refused(why))),
            (Some(Ok(resp)), _) if resp.status().is_success() => (Some(resp.status().as_u16()), None),
            (Some(Ok(resp)), _) if resp.status().is_redirection() => {
                (Some(resp.status().as_u16()), Some(AttemptError::Failed(format!("HTTP {} (redirects are not followed)", resp.status()))))
            }
            (Some(Ok(resp)), _) => (Some(resp.status().as_u16()), Some(AttemptError::Failed(format!("HTTP {}", resp.status())))),
            (Some(Err(err)), _) => match resolver_refusal(err) {
                Some(why) => (None, Some(AttemptError::Refused(why))),
                None => (None, Some(AttemptError::Failed(error_chain(err)))),
            },
            (None, None) => unreachable!("an attempt is either refused or sent"),
        };
        let text = error.as_ref().map(|e| match e {
            AttemptError::Refused(why) => format!("refused: {why}"),
            AttemptError::Failed(why) => why.clone(),
        });
        let record = DeliveryAttempt {
            message_id: &message_id,
            recording_id: &d.recording_id,
            url: &d.url,
            event_type: &d.event_type,
            attempt: n,
            status_code: code,
            error: text,
        };
        if let Err(err) = store.record_delivery(&record).await {
            tracing::warn!(error = %err, "cannot record a webhook delivery");
        }
        let result = match &error {
            None => "delivered",
            Some(AttemptError::Refused(_)) => "refused",
            Some(AttemptError::Failed(_)) => "failed",
        };
        metrics.webhook_deliveries.with_label_values(&[result]).inc();
        match error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    };
    let backoff = ExponentialBuilder::default().with_min_delay(FIRST_RETRY).with_max_times(MAX_ATTEMPTS - 1).with_jitter();
    match once.retry(backoff).sleep(tokio::time::sleep).when(|e| matches!(e, AttemptError::Failed(_))).await {
        Ok(()) => {}
        Err(AttemptError::Refused(why)) => {
            tracing::warn!(recording_id = %d.recording_id, event_type = %d.event_type, reason = %why, "webhook refused by the address policy; not retried");
        }
        Err(AttemptError::Failed(why)) => {
            metrics.webhook_deliveries.with_label_values(&["gave_up"]).inc();
            tracing::error!(recording_id = %d.recording_id, event_type = %d.event_type, error = %why, "webhook not delivered after {MAX_ATTEMPTS} attempts");
        }
    }
}

/// A failed request and its causes, without the URL (which may carry a token; reqwest's own
/// message names it).
fn error_chain(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else {
        "the request failed"
    };
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
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

    /// A receiver on loopback that counts what reaches it and answers `status` (with a
    /// `Location`, for a 3xx).
    async fn receiver(status: u16, location: &str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let location = location.to_string();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        let app = axum::Router::new().fallback(move || {
            let (counted, location) = (counted.clone(), location.clone());
            async move {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (axum::http::StatusCode::from_u16(status).unwrap(), [("location", location)], "")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("{port}"), hits)
    }

    async fn delivered(policy: NetworkPolicy, url: &str) -> (Store, Arc<crate::metrics::Metrics>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Store::default_url(dir.path())).await.unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let d = Delivery {
            recording_id: "rec_1".into(),
            url: url.into(),
            event_type: "recording.queued".into(),
            payload: serde_json::json!({}),
        };
        let signer = Arc::new(Webhook::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap());
        let run = deliver(signer, client(policy), policy, store.clone(), metrics.clone(), d);
        // A failure is retried for seconds; the first attempts are what these tests look at.
        let _ = tokio::time::timeout(Duration::from_secs(2), run).await;
        std::mem::forget(dir);
        (store, metrics)
    }

    fn count(metrics: &crate::metrics::Metrics, result: &str) -> u64 {
        metrics.webhook_deliveries.with_label_values(&[result]).get()
    }

    #[tokio::test]
    async fn a_refused_address_is_never_contacted_nor_retried() {
        let none = NetworkPolicy::default();
        let (port, hits) = receiver(200, "").await;
        // A literal address, and a name that resolves to it (`localhost`, from the hosts file).
        for url in [
            format!("http://127.0.0.1:{port}/hook"),
            format!("http://localhost:{port}/hook"),
            format!("http://[::ffff:7f00:1]:{port}/hook"),
        ] {
            let (store, metrics) = delivered(none, &url).await;
            assert_eq!(
                store.deliveries("rec_1").await.unwrap(),
                vec![("recording.queued".to_string(), 1, None)],
                "{url}: one attempt, no answer"
            );
            assert_eq!((count(&metrics, "refused"), count(&metrics, "failed"), count(&metrics, "delivered")), (1, 0, 0), "{url}");
        }
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing reached the receiver");
        let (_, metrics) = delivered(NetworkPolicy::LOCAL, &format!("http://localhost:{port}/hook")).await;
        assert_eq!(count(&metrics, "delivered"), 1, "allowed, it is delivered");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let (target, target_hits) = receiver(200, "").await;
        let (port, hits) = receiver(307, &format!("http://127.0.0.1:{target}/hook")).await;
        let (store, metrics) = delivered(NetworkPolicy::LOCAL, &format!("http://127.0.0.1:{port}/hook")).await;
        let attempts = store.deliveries("rec_1").await.unwrap();
        assert_eq!(attempts.first(), Some(&("recording.queued".to_string(), 1, Some(307))));
        assert!(count(&metrics, "failed") >= 1 && hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        assert_eq!(target_hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the redirect's target is never contacted");
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
