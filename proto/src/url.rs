//! The syntax of a meeting URL, shared by the bot and the controller: http(s), no white space,
//! a host. Pure. Which addresses may be reached is `address`'s (the address policy).

/// The URL's host (without port or IPv6 brackets), or why the URL is refused.
pub fn meeting_url_host(url: &str) -> Result<&str, &'static str> {
    let Some((scheme, rest)) = url.split_once("://") else { return Err("must be an absolute http(s) URL") };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err("only http and https meeting URLs are recorded");
    }
    if url.chars().any(char::is_whitespace) {
        return Err("the URL contains white space");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    if host.is_empty() {
        return Err("the URL has no host");
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_found_and_bad_urls_refused() {
        assert_eq!(meeting_url_host("https://user@meet.example.com:8443/a?b#c"), Ok("meet.example.com"));
        assert_eq!(meeting_url_host("http://[2001:db8::1]:80/m"), Ok("2001:db8::1"));
        for bad in ["", "meet.example.com", "file:///etc/passwd", "http://", "http:///x", "http://:80/", "http://a b"] {
            assert!(meeting_url_host(bad).is_err(), "{bad}");
        }
    }
}
