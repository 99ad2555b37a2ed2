//! The address policy: which addresses a bot's browser and the controller's webhook sender may
//! reach. One pure function decides (`NetworkPolicy::check`), and every side calls it: the
//! controller on the URLs a request gives, the webhook sender on the addresses a host name
//! resolves to at each delivery, the bot on every request its browser makes.
//!
//! Always refused, whatever the configuration: cloud metadata (169.254.169.254, 169.254.170.2,
//! AWS's fd00:ec2::/32, GCE's fd20:ce::254, Alibaba's 100.100.100.200, Azure's WireServer
//! 168.63.129.16), the rest of link-local, unspecified, broadcast, multicast, Teredo and reserved
//! addresses. Refused unless allowed: loopback (`localhost` included, which Chromium resolves
//! itself) and private ranges (RFC 1918, 100.64/10, fc00::/7). An IPv6 address that embeds an
//! IPv4 one (mapped, translated, compatible, NAT64, 6to4) is judged by the IPv4 address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a policy lets through beyond public addresses (`--allow-networks loopback,private`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkPolicy {
    #[serde(default)]
    pub loopback: bool,
    #[serde(default)]
    pub private: bool,
}

/// Why an address is refused. `as_str` is stable: it is logged, counted and sent in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    Metadata,
    LinkLocal,
    Loopback,
    Private,
    /// Unspecified, broadcast, multicast, documentation and other reserved ranges.
    Reserved,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [Refusal::Metadata, Refusal::LinkLocal, Refusal::Loopback, Refusal::Private, Refusal::Reserved];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Metadata => "metadata",
            Refusal::LinkLocal => "link_local",
            Refusal::Loopback => "loopback",
            Refusal::Private => "private",
            Refusal::Reserved => "reserved",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Metadata => "a cloud metadata address",
            Refusal::LinkLocal => "a link-local address",
            Refusal::Loopback => "a loopback address (allow it with --allow-networks loopback)",
            Refusal::Private => "a private address (allow it with --allow-networks private)",
            Refusal::Reserved => "a reserved address",
        })
    }
}

/// Why a URL is refused before any DNS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    #[error("not a URL: {0}")]
    Syntax(String),
    #[error("only {0} URLs are allowed here")]
    Scheme(&'static str),
    #[error("the URL has no host")]
    NoHost,
    #[error("its host is {0}")]
    Address(Refusal),
}

/// Where a URL points, once its syntax and any literal address have passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A literal address (in any of the forms browsers accept: `http://2852039166/` is one).
    Ip(IpAddr),
    /// A host name, to be resolved and each address checked.
    Name(String),
}

impl fmt::Display for NetworkPolicy {
    /// As `parse` reads it: `loopback,private`, `loopback`, `private` or empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let classes: Vec<&str> =
            [(self.loopback, "loopback"), (self.private, "private")].iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
        f.write_str(&classes.join(","))
    }
}

impl NetworkPolicy {
    /// Everything but what is always refused (tests and the demo, which record on loopback).
    pub const LOCAL: NetworkPolicy = NetworkPolicy { loopback: true, private: true };

    /// `loopback,private` (either, both, or empty for neither).
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut policy = NetworkPolicy::default();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "loopback" => policy.loopback = true,
                "private" => policy.private = true,
                other => return Err(format!("unknown network class {other:?} (known: loopback, private)")),
            }
        }
        Ok(policy)
    }

    /// The one decision: may this address be reached?
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        match classify(ip) {
            None => Ok(()),
            Some(Refusal::Loopback) if self.loopback => Ok(()),
            Some(Refusal::Private) if self.private => Ok(()),
            Some(refusal) => Err(refusal),
        }
    }

    /// The first of `ips` this policy refuses, with why: a name with one refused address is
    /// refused (the client may pick any of them).
    pub fn first_refused(&self, ips: impl IntoIterator<Item = IpAddr>) -> Option<(IpAddr, Refusal)> {
        ips.into_iter().find_map(|ip| self.check(ip).err().map(|r| (ip, r)))
    }

    /// Parses `url` as a browser does, checks its scheme against `schemes` and, when its host is
    /// a literal address or a name that never needs DNS (`localhost`, metadata names), that
    /// address. A host name is returned for the caller to resolve and check.
    pub fn check_url(&self, url: &str, schemes: &'static [&'static str]) -> Result<Target, UrlRefusal> {
        let parsed = url::Url::parse(url).map_err(|e| UrlRefusal::Syntax(e.to_string()))?;
        if !schemes.contains(&parsed.scheme()) {
            return Err(UrlRefusal::Scheme(scheme_list(schemes)));
        }
        let target = match parsed.host() {
            None => return Err(UrlRefusal::NoHost),
            Some(url::Host::Ipv4(v4)) => Target::Ip(v4.into()),
            Some(url::Host::Ipv6(v6)) => Target::Ip(v6.into()),
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if name.is_empty() {
                    return Err(UrlRefusal::NoHost);
                }
                if METADATA_NAMES.contains(&name.as_str()) {
                    return Err(UrlRefusal::Address(Refusal::Metadata));
                }
                if name == "localhost" || name.ends_with(".localhost") {
                    Target::Ip(Ipv4Addr::LOCALHOST.into())
                } else {
                    return Ok(Target::Name(name));
                }
            }
        };
        if let Target::Ip(ip) = target {
            self.check(ip).map_err(UrlRefusal::Address)?;
        }
        Ok(target)
    }
}

/// Names that reach a cloud's metadata service without (or before) public DNS.
const METADATA_NAMES: [&str; 4] = ["metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"];

fn scheme_list(schemes: &[&str]) -> &'static str {
    match schemes {
        ["http", "https"] | ["https", "http"] => "http and https",
        ["https"] => "https",
        _ => "web",
    }
}

/// `None`: a public address.
fn classify(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Refusal> {
    let [a, b, c, _] = ip.octets();
    const METADATA: [Ipv4Addr; 4] = [
        Ipv4Addr::new(169, 254, 169, 254),
        Ipv4Addr::new(169, 254, 170, 2),
        Ipv4Addr::new(100, 100, 100, 200),
        Ipv4Addr::new(168, 63, 129, 16),
    ];
    if METADATA.contains(&ip) {
        Some(Refusal::Metadata)
    } else if ip.is_link_local() {
        Some(Refusal::LinkLocal)
    } else if ip.is_loopback() {
        Some(Refusal::Loopback)
    } else if ip.is_private() || (a == 100 && (b & 0xc0) == 64) {
        Some(Refusal::Private)
    } else if a == 0
        || a >= 224
        || (a == 192 && b == 0 && (c == 0 || c == 2))
        || (a == 198 && (b & 0xfe) == 18)
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
    {
        Some(Refusal::Reserved)
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<Refusal> {
    let s = ip.segments();
    if s[..2] == [0xfd00, 0x0ec2] || ip == Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254) {
        Some(Refusal::Metadata)
    } else if ip.is_loopback() {
        Some(Refusal::Loopback)
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some(Refusal::LinkLocal)
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some(Refusal::Private)
    } else if ip.is_unspecified() || ip.is_multicast() || s[0] == 0x2001 && (s[1] == 0x0db8 || s[1] == 0) || (s[0] & 0xffc0) == 0xfec0 {
        Some(Refusal::Reserved)
    } else {
        None
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-translated
/// (`::ffff:0:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`, and the
/// local-use `64:ff9b:1::/48`) or 6to4 (`2002:aabb:ccdd::/48`) address: these reach the IPv4 one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    let mapped = s[..5] == [0; 5] && s[5] == 0xffff;
    let translated = s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0;
    let compatible = s[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified();
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..3] == [0x64, 0xff9b, 1];
    if s[0] == 0x2002 {
        return Some(v4(s[1], s[2]));
    }
    (mapped || translated || compatible || nat64).then(|| v4(s[6], s[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &[&str] = &["http", "https"];

    #[test]
    fn each_address_class_is_judged() {
        let table: &[(&str, Option<Refusal>)] = &[
            ("93.184.216.34", None),
            ("8.8.8.8", None),
            ("2606:4700::1111", None),
            ("169.254.169.254", Some(Refusal::Metadata)),
            ("169.254.170.2", Some(Refusal::Metadata)),
            ("100.100.100.200", Some(Refusal::Metadata)),
            ("fd00:ec2::254", Some(Refusal::Metadata)),
            ("fd00:ec2::23", Some(Refusal::Metadata)),
            ("fd20:ce::254", Some(Refusal::Metadata)),
            ("168.63.129.16", Some(Refusal::Metadata)),
            ("::ffff:0:a9fe:a9fe", Some(Refusal::Metadata)),
            ("64:ff9b:1::a9fe:a9fe", Some(Refusal::Metadata)),
            ("2002:a9fe:a9fe::1", Some(Refusal::Metadata)),
            ("2002:0a00:0001::1", Some(Refusal::Private)),
            ("2001:0:4136:e378::1", Some(Refusal::Reserved)),
            ("::ffff:169.254.169.254", Some(Refusal::Metadata)),
            ("64:ff9b::a9fe:a9fe", Some(Refusal::Metadata)),
            ("169.254.1.2", Some(Refusal::LinkLocal)),
            ("fe80::1", Some(Refusal::LinkLocal)),
            ("127.0.0.1", Some(Refusal::Loopback)),
            ("127.8.9.10", Some(Refusal::Loopback)),
            ("::1", Some(Refusal::Loopback)),
            ("::ffff:127.0.0.1", Some(Refusal::Loopback)),
            ("10.1.2.3", Some(Refusal::Private)),
            ("172.16.0.1", Some(Refusal::Private)),
            ("172.31.255.255", Some(Refusal::Private)),
            ("192.168.1.1", Some(Refusal::Private)),
            ("100.64.0.1", Some(Refusal::Private)),
            ("fd12:3456::1", Some(Refusal::Private)),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("0.0.0.0", Some(Refusal::Reserved)),
            ("0.1.2.3", Some(Refusal::Reserved)),
            ("255.255.255.255", Some(Refusal::Reserved)),
            ("224.0.0.1", Some(Refusal::Reserved)),
            ("240.0.0.1", Some(Refusal::Reserved)),
            ("192.0.2.1", Some(Refusal::Reserved)),
            ("198.18.0.1", Some(Refusal::Reserved)),
            ("::", Some(Refusal::Reserved)),
            ("ff02::1", Some(Refusal::Reserved)),
            ("2001:db8::1", Some(Refusal::Reserved)),
        ];
        for (ip, expected) in table {
            assert_eq!(classify(ip.parse().unwrap()), *expected, "{ip}");
        }
    }

    #[test]
    fn allowing_opens_only_what_is_named() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let none = NetworkPolicy::default();
        let local = NetworkPolicy::LOCAL;
        assert_eq!(none.check(ip("127.0.0.1")), Err(Refusal::Loopback));
        assert_eq!(none.check(ip("10.0.0.1")), Err(Refusal::Private));
        assert_eq!(NetworkPolicy { loopback: true, private: false }.check(ip("10.0.0.1")), Err(Refusal::Private));
        local.check(ip("127.0.0.1")).unwrap();
        local.check(ip("172.17.0.1")).unwrap();
        for always in ["169.254.169.254", "169.254.170.2", "fd00:ec2::254", "169.254.0.1", "0.0.0.0", "::ffff:169.254.170.2"] {
            assert!(local.check(ip(always)).is_err(), "{always} is refused even when local networks are allowed");
        }
    }

    #[test]
    fn urls_are_parsed_as_a_browser_parses_them() {
        let none = NetworkPolicy::default();
        let refused = |url: &str| none.check_url(url, WEB).unwrap_err();
        // Numeric forms a browser accepts for 169.254.169.254 and 127.0.0.1.
        for url in [
            "http://2852039166/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://0251.0376.0251.0376/",
            "http://169.254.43518/",
            "http://[::ffff:a9fe:a9fe]/",
        ] {
            assert_eq!(refused(url), UrlRefusal::Address(Refusal::Metadata), "{url}");
        }
        for url in ["http://0x7f.1/", "http://localhost:8080/", "http://app.localhost/", "http://LOCALHOST./", "http://[::1]/"] {
            assert_eq!(refused(url), UrlRefusal::Address(Refusal::Loopback), "{url}");
        }
        assert_eq!(refused("http://metadata.google.internal/computeMetadata/v1/"), UrlRefusal::Address(Refusal::Metadata));
        assert_eq!(refused("http://user:pw@169.254.170.2/v2/credentials"), UrlRefusal::Address(Refusal::Metadata));
        for url in ["file:///etc/passwd", "javascript:alert(1)", "chrome://settings", "ftp://example.com/"] {
            assert!(matches!(refused(url), UrlRefusal::Scheme(_)), "{url}");
        }
        assert!(matches!(refused("meet.example.com/x"), UrlRefusal::Syntax(_)));
        assert!(matches!(refused("https://"), UrlRefusal::Syntax(_) | UrlRefusal::NoHost));
        assert_eq!(none.check_url("https://Meet.Example.com./a?b#c", WEB), Ok(Target::Name("meet.example.com".into())));
        assert_eq!(none.check_url("https://93.184.216.34/m", WEB), Ok(Target::Ip("93.184.216.34".parse().unwrap())));
        assert_eq!(NetworkPolicy::LOCAL.check_url("http://127.0.0.1:9/m", WEB), Ok(Target::Ip(Ipv4Addr::LOCALHOST.into())));
    }

    #[test]
    fn the_flag_names_its_classes() {
        assert_eq!(NetworkPolicy::parse("loopback, private").unwrap(), NetworkPolicy::LOCAL);
        assert_eq!(NetworkPolicy::parse("").unwrap(), NetworkPolicy::default());
        assert!(NetworkPolicy::parse("public").unwrap_err().contains("public"));
        for policy in [NetworkPolicy::default(), NetworkPolicy::LOCAL, NetworkPolicy { loopback: false, private: true }] {
            assert_eq!(NetworkPolicy::parse(&policy.to_string()).unwrap(), policy, "round trip");
        }
    }
}
