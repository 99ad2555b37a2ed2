//! Input rules for meeting URLs: the shared syntax (`recfleet_proto::url`), then no link-local or
//! cloud metadata addresses, and an optional allow-list of hosts. Pure: no DNS, no I/O.

use std::net::IpAddr;

use crate::model::ApiError;

const METADATA_HOSTS: [&str; 3] = ["metadata.google.internal", "metadata", "instance-data"];

pub fn meeting_url(url: &str, allowed_hosts: Option<&[String]>) -> Result<(), ApiError> {
    let bad = |why: &str| Err(ApiError::InvalidUrl(format!("{why}: {url:?}")));
    let host = match recfleet_proto::url::meeting_url_host(url) {
        Ok(host) => host,
        Err(why) => return bad(why),
    };
    let lower = host.to_ascii_lowercase();
    if METADATA_HOSTS.contains(&lower.as_str()) {
        return bad("cloud metadata hosts are refused");
    }
    if let Ok(ip) = lower.parse::<IpAddr>() {
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast(),
            IpAddr::V6(v6) => {
                (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_unspecified() || v6.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]
            }
        };
        if link_local {
            return bad("link-local and metadata addresses are refused");
        }
    }
    if let Some(allowed) = allowed_hosts {
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&lower)) {
            return bad("the host is not in --allowed-hosts");
        }
    }
    Ok(())
}

/// `seg_000001.m4s` and nothing that could climb out of a folder.
pub fn is_segment_name(name: &str) -> bool {
    name.strip_prefix("seg_").and_then(|n| n.strip_suffix(".m4s")).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_meeting_urls() {
        for ok in ["https://meet.example.com/abc", "http://127.0.0.1:8080/m/1?x=1", "https://[2001:db8::1]/m"] {
            meeting_url(ok, None).unwrap();
        }
    }

    #[test]
    fn refuses_other_schemes_link_local_and_metadata() {
        for bad in [
            "file:///etc/passwd",
            "javascript:alert(1)",
            "chrome://settings",
            "http://169.254.169.254/latest/meta-data/",
            "http://169.254.1.2/",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://0.0.0.0/",
            "https://",
            "meet.example.com/x",
        ] {
            assert!(matches!(meeting_url(bad, None), Err(ApiError::InvalidUrl(_))), "{bad}");
        }
    }

    #[test]
    fn allow_list_limits_hosts() {
        let allowed = vec!["meet.example.com".to_string()];
        meeting_url("https://MEET.example.com/a", Some(&allowed)).unwrap();
        assert!(meeting_url("https://evil.example.com/a", Some(&allowed)).is_err());
    }

    #[test]
    fn segment_names_cannot_climb() {
        assert!(is_segment_name("seg_000001.m4s"));
        for bad in ["seg_.m4s", "seg_1/../x.m4s", "../seg_1.m4s", "seg_1.mp4"] {
            assert!(!is_segment_name(bad), "{bad}");
        }
    }
}
