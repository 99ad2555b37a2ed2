//! Input rules for the URLs a request gives: the meeting URL and the webhook URL. Both go
//! through the one address policy (`recfleet_proto::address`): parsed as a browser parses them,
//! a literal address checked, and a host name resolved and every address it resolves to checked
//! (a name that resolves to a metadata address is refused like the address). The meeting URL
//! also passes the optional `--allowed-hosts` list.
//!
//! A name that does not resolve here is accepted: the bots may sit on another network than the
//! controller, and the bot checks again on every request its browser makes.

use recfleet_proto::address::{NetworkPolicy, Refusal, Target, UrlRefusal};

use crate::model::ApiError;

const WEB: &[&str] = &["http", "https"];

pub async fn meeting_url(url: &str, allowed_hosts: Option<&[String]>, policy: NetworkPolicy) -> Result<(), ApiError> {
    let bad = |why: String| ApiError::InvalidUrl(format!("{why}: {url:?}"));
    recfleet_proto::url::meeting_url_host(url).map_err(|why| bad(why.into()))?;
    let target = policy.check_url(url, WEB).map_err(|why| bad(why.to_string()))?;
    if let Some(allowed) = allowed_hosts {
        // The host as written (`localhost`, `[::1]`), not what the policy made of it.
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let host = parsed.host_str().unwrap_or_default().trim_end_matches('.');
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if !allowed.iter().any(|a| a.trim_end_matches('.').eq_ignore_ascii_case(host)) {
            return Err(bad("the host is not in --allowed-hosts".into()));
        }
    }
    resolved(policy, url, &target).await.map_err(|why| bad(why.to_string()))
}

pub async fn webhook_url(url: &str, policy: NetworkPolicy) -> Result<(), ApiError> {
    let bad = |why: String| ApiError::InvalidWebhookUrl(format!("{why}: {url:?}"));
    let target = policy.check_url(url, WEB).map_err(|why| bad(why.to_string()))?;
    resolved(policy, url, &target).await.map_err(|why| bad(why.to_string()))
}

/// Every address a host name resolves to now, checked; a name that does not resolve passes.
async fn resolved(policy: NetworkPolicy, url: &str, target: &Target) -> Result<(), UrlRefusal> {
    let Target::Name(name) = target else { return Ok(()) };
    let port = url::Url::parse(url).ok().and_then(|u| u.port_or_known_default()).unwrap_or(443);
    match tokio::net::lookup_host((name.as_str(), port)).await {
        Ok(addrs) => check_all(policy, addrs.map(|a| a.ip())).map_err(UrlRefusal::Address),
        Err(err) => {
            tracing::debug!(host = %name, error = %err, "a requested host does not resolve here; the bot checks again");
            Ok(())
        }
    }
}

/// Why `ips` are refused, if one of them is (`NetworkPolicy::first_refused`).
pub fn check_all(policy: NetworkPolicy, ips: impl IntoIterator<Item = std::net::IpAddr>) -> Result<(), Refusal> {
    policy.first_refused(ips).map_or(Ok(()), |(_, refusal)| Err(refusal))
}

/// `seg_000001.m4s` and nothing that could climb out of a folder.
pub fn is_segment_name(name: &str) -> bool {
    name.strip_prefix("seg_").and_then(|n| n.strip_suffix(".m4s")).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: NetworkPolicy = NetworkPolicy { loopback: false, private: false };

    #[tokio::test]
    async fn accepts_plain_meeting_urls() {
        for ok in ["https://93.184.216.34/abc", "https://[2001:4860::1]/m", "https://meet.invalid/abc"] {
            meeting_url(ok, None, NONE).await.unwrap();
        }
        meeting_url("http://127.0.0.1:8080/m/1?x=1", None, NetworkPolicy::LOCAL).await.unwrap();
    }

    #[tokio::test]
    async fn refuses_other_schemes_local_and_metadata_addresses() {
        for bad in [
            "file:///etc/passwd",
            "javascript:alert(1)",
            "chrome://settings",
            "http://169.254.169.254/latest/meta-data/",
            "http://2852039166/latest/meta-data/",
            "http://169.254.1.2/",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://0.0.0.0/",
            "http://127.0.0.1:8080/m",
            "http://localhost:8080/m",
            "http://10.0.0.5/m",
            "https://",
            "meet.example.com/x",
        ] {
            assert!(matches!(meeting_url(bad, None, NONE).await, Err(ApiError::InvalidUrl(_))), "{bad}");
        }
        let local = NetworkPolicy::LOCAL;
        assert!(
            meeting_url("http://169.254.170.2/v2/credentials", None, local).await.is_err(),
            "metadata is refused even when local networks are allowed"
        );
    }

    #[tokio::test]
    async fn a_name_is_judged_by_what_it_resolves_to() {
        // `localhost` is loopback by name; a name from the hosts file resolves through the system.
        assert!(matches!(webhook_url("http://localhost:9/hook", NONE).await, Err(ApiError::InvalidWebhookUrl(_))));
        webhook_url("http://localhost:9/hook", NetworkPolicy::LOCAL).await.unwrap();
        assert_eq!(check_all(NONE, ["93.184.216.34".parse().unwrap(), "169.254.169.254".parse().unwrap()]), Err(Refusal::Metadata));
        assert!(matches!(webhook_url("http://[::ffff:169.254.170.2]/", NetworkPolicy::LOCAL).await, Err(ApiError::InvalidWebhookUrl(_))));
        assert!(matches!(webhook_url("ftp://example.com/", NONE).await, Err(ApiError::InvalidWebhookUrl(_))));
    }

    #[tokio::test]
    async fn allow_list_limits_hosts() {
        let allowed = vec!["meet.invalid".to_string()];
        meeting_url("https://MEET.invalid/a", Some(&allowed), NONE).await.unwrap();
        assert!(meeting_url("https://evil.invalid/a", Some(&allowed), NONE).await.is_err());
        let local = vec!["localhost".to_string(), "::1".to_string()];
        meeting_url("http://localhost:8080/m", Some(&local), NetworkPolicy::LOCAL).await.unwrap();
        meeting_url("http://[::1]:8080/m", Some(&local), NetworkPolicy::LOCAL).await.unwrap();
    }

    #[test]
    fn segment_names_cannot_climb() {
        assert!(is_segment_name("seg_000001.m4s"));
        for bad in ["seg_.m4s", "seg_1/../x.m4s", "../seg_1.m4s", "seg_1.mp4"] {
            assert!(!is_segment_name(bad), "{bad}");
        }
    }
}
