//! `authorized_keys` lines and the options podsftp honours, like OpenSSH's sshd(8) "AUTHORIZED_KEYS
//! FILE FORMAT": `from="pattern-list"` and `expiry-time="timespec"` are enforced; options that
//! only take away (or give back) what podsftp never offers (forwarding, a PTY, rc files) are
//! satisfied as they stand; every other option makes the key unusable, so a restriction its owner
//! wrote is never widened into full access.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::keys::PublicKey;

/// One usable key with its enforced restrictions.
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    pub key: PublicKey,
    /// `from=`: the client address must match this pattern list.
    from: Option<Vec<String>>,
    /// `expiry-time=`: the key stops working at this instant.
    expires: Option<SystemTime>,
}

/// Why a line gives no usable key (its line number is added by the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyLineError {
    #[error("no OpenSSH public key on the line")]
    NoKey,
    #[error("malformed options (unbalanced quotes or an empty option)")]
    Malformed,
    #[error("option {0}= needs a quoted value")]
    MissingValue(String),
    #[error(
        "option command=\"{0}\": podsftp cannot run a forced command (only command=\"internal-sftp\" is accepted), so the key is refused rather than given SFTP"
    )]
    ForcedCommand(String),
    #[error("option {0} is not enforced by podsftp, so the key is refused rather than used without it")]
    Unsupported(String),
    #[error("from=\"{0}\" has an invalid address/prefix pattern")]
    BadFrom(String),
    #[error("expiry-time=\"{0}\" is not YYYYMMDD[HHMM[SS]][Z]")]
    BadExpiry(String),
}

/// Options that only restrict or re-allow forwarding, PTYs, rc files or environment: podsftp
/// offers none of these (only the sftp subsystem), so the key is exactly as limited with or
/// without them. `restrict` in OpenSSH still allows the sftp subsystem, as here.
const SATISFIED: &[&str] = &[
    "restrict",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-user-rc",
    "no-x11-forwarding",
    "agent-forwarding",
    "port-forwarding",
    "pty",
    "user-rc",
    "x11-forwarding",
    "permitopen",
    "permitlisten",
    "environment",
    "tunnel",
];

/// Unicode whitespace separates fields (OpenSSH: space and tab), so a key pasted with a
/// non-breaking space still parses.
fn split_field(text: &str) -> (&str, &str) {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (&text[..i], &text[i + c.len_utf8()..]),
            _ => {}
        }
    }
    (text, "")
}

/// Parses one non-comment line.
pub fn parse_line(line: &str) -> Result<AuthorizedKey, KeyLineError> {
    let line = line.trim();
    if let Ok(key) = PublicKey::from_openssh(line) {
        return Ok(AuthorizedKey { key, from: None, expires: None });
    }
    let (options, rest) = split_field(line);
    let key = PublicKey::from_openssh(rest.trim_start()).map_err(|_| KeyLineError::NoKey)?;
    let mut authorized = AuthorizedKey { key, from: None, expires: None };
    for (name, value) in parse_options(options)? {
        let lower = name.to_ascii_lowercase();
        match (lower.as_str(), value) {
            ("from", Some(value)) => {
                let patterns: Vec<String> = value.split(',').map(str::to_string).collect();
                if patterns.iter().any(|p| p.contains('/') && parse_cidr(p.trim_start_matches('!')).is_none()) {
                    return Err(KeyLineError::BadFrom(value));
                }
                authorized.from = Some(patterns);
            }
            ("expiry-time", Some(value)) => {
                let expires = parse_expiry(&value).ok_or(KeyLineError::BadExpiry(value))?;
                // Several expiry-time options: the earliest counts, as in OpenSSH.
                authorized.expires = Some(authorized.expires.map_or(expires, |e| e.min(expires)));
            }
            ("command", Some(value)) if value == "internal-sftp" => {}
            ("command", Some(value)) => return Err(KeyLineError::ForcedCommand(value)),
            ("from" | "expiry-time" | "command", None) => return Err(KeyLineError::MissingValue(name)),
            (option, _) if SATISFIED.contains(&option) => {}
            _ => return Err(KeyLineError::Unsupported(name)),
        }
    }
    Ok(authorized)
}

/// `name` or `name="value"` separated by commas; `\"` inside a value is a quote.
fn parse_options(text: &str) -> Result<Vec<(String, Option<String>)>, KeyLineError> {
    let mut options = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == ',' || c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            return Err(KeyLineError::Malformed);
        }
        let value = if chars.peek() == Some(&'=') {
            chars.next();
            if chars.next() != Some('"') {
                return Err(KeyLineError::MissingValue(name));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => return Err(KeyLineError::Malformed),
                    Some('"') => break,
                    Some('\\') if chars.peek() == Some(&'"') => {
                        chars.next();
                        value.push('"');
                    }
                    Some(c) => value.push(c),
                }
            }
            Some(value)
        } else {
            None
        };
        options.push((name, value));
        match chars.next() {
            None => return Ok(options),
            Some(',') => {}
            Some(_) => return Err(KeyLineError::Malformed),
        }
    }
}

impl AuthorizedKey {
    /// Whether this key may log in from `client` at `now`.
    pub fn allows(&self, client: IpAddr, now: SystemTime) -> bool {
        let fresh = self.expires.is_none_or(|expires| now < expires);
        let from_ok = self.from.as_deref().is_none_or(|patterns| address_matches(patterns, client));
        fresh && from_ok
    }

    /// Which restrictions the key carries, for the load log line.
    pub fn restrictions(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(from) = &self.from {
            parts.push(format!("from={}", from.join(",")));
        }
        if let Some(expires) = self.expires {
            let seconds = expires.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            parts.push(format!("expires at unix time {seconds}"));
        }
        (!parts.is_empty()).then(|| parts.join(" "))
    }
}

/// OpenSSH's `match_host_and_ip` without DNS (`UseDNS no`): an address/prefix entry or a
/// `*`/`?` wildcard over the address text; any matching `!` entry refuses.
fn address_matches(patterns: &[String], client: IpAddr) -> bool {
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    };
    let text = client.to_string();
    let mut allowed = false;
    for pattern in patterns {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, pattern.as_str()),
        };
        let matched = match parse_cidr(pattern) {
            Some((network, prefix)) => in_network(client, network, prefix),
            None => wildcard(pattern.to_ascii_lowercase().as_bytes(), text.as_bytes()),
        };
        if matched && negated {
            return false;
        }
        allowed |= matched;
    }
    allowed
}

/// `address/prefix` (or a bare address, the full prefix).
fn parse_cidr(pattern: &str) -> Option<(IpAddr, u32)> {
    let (address, prefix) = match pattern.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (pattern, None),
    };
    let address: IpAddr = address.parse().ok()?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p.parse().ok().filter(|p| *p <= max)?,
        None => max,
    };
    Some((address, prefix))
}

fn in_network(client: IpAddr, network: IpAddr, prefix: u32) -> bool {
    match (client, network) {
        (IpAddr::V4(c), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            u32::from(c) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(c), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            u128::from(c) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// `*` matches any run, `?` one byte (OpenSSH's match_pattern).
fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, at)) => {
                    p = star + 1;
                    t = at + 1;
                    backtrack = Some((star, at + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// `YYYYMMDD[HHMM[SS]]`, optionally ending in `Z`. OpenSSH reads it in the system time zone
/// unless `Z` is given; the sidecar's image has no time zone, which is UTC, so both are UTC.
fn parse_expiry(text: &str) -> Option<SystemTime> {
    let digits = text.strip_suffix(['Z', 'z']).unwrap_or(text);
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u64> { digits.get(range).map_or(Some(0), |s| s.parse().ok()) };
    let (year, month, day) = (number(0..4)?, number(4..6)?, number(6..8)?);
    let (hour, minute, second) = (number(8..10)?, number(10..12)?, number(12..14)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + hour * 3600 + minute * 60 + second))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm), year ≥ 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHAQWEYjPIlQDW3ZmxYEL0s3fJc1ZA7MmbzNAXWXQpCd user@host";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn at(date: &str) -> SystemTime {
        parse_expiry(date).unwrap()
    }

    #[test]
    fn from_is_enforced_with_cidr_wildcards_and_negation() {
        let key = parse_line(&format!(r#"from="10.0.0.0/8,!10.9.9.9,192.168.1.*,2001:db8::/32",no-pty {KEY}"#)).unwrap();
        let now = SystemTime::now();
        assert!(key.allows(ip("10.1.2.3"), now));
        assert!(key.allows(ip("::ffff:10.1.2.3"), now), "IPv4-mapped addresses are IPv4");
        assert!(!key.allows(ip("10.9.9.9"), now), "negated entry refuses");
        assert!(key.allows(ip("192.168.1.77"), now));
        assert!(!key.allows(ip("192.168.2.77"), now));
        assert!(key.allows(ip("2001:db8:1::5"), now));
        assert!(!key.allows(ip("127.0.0.1"), now));
        let only_negated = parse_line(&format!(r#"from="!127.0.0.1" {KEY}"#)).unwrap();
        assert!(!only_negated.allows(ip("10.0.0.1"), now), "OpenSSH: a list without a positive match refuses");
    }

    #[test]
    fn expiry_time_is_enforced() {
        let key = parse_line(&format!(r#"expiry-time="20300615" {KEY}"#)).unwrap();
        assert!(key.allows(ip("127.0.0.1"), at("20300614235959")));
        assert!(!key.allows(ip("127.0.0.1"), at("20300615")));
        assert_eq!(parse_expiry("19700101").unwrap(), UNIX_EPOCH);
        assert_eq!(parse_expiry("20000301120000Z").unwrap(), UNIX_EPOCH + Duration::from_secs(951_912_000));
        for bad in ["2030", "20301301", "2030061525", "203006151261", "x0300615", "20300615 "] {
            assert!(parse_expiry(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn options_podsftp_does_not_enforce_refuse_the_key() {
        for (options, expected) in [
            (r#"command="/bin/backup""#, KeyLineError::ForcedCommand("/bin/backup".into())),
            ("cert-authority", KeyLineError::Unsupported("cert-authority".into())),
            (r#"principals="a""#, KeyLineError::Unsupported("principals".into())),
            ("verify-required", KeyLineError::Unsupported("verify-required".into())),
            ("no-touch-required", KeyLineError::Unsupported("no-touch-required".into())),
            ("made-up", KeyLineError::Unsupported("made-up".into())),
            ("from", KeyLineError::MissingValue("from".into())),
            (r#"from="10.0.0.0/33""#, KeyLineError::BadFrom("10.0.0.0/33".into())),
            (r#"expiry-time="soon""#, KeyLineError::BadExpiry("soon".into())),
            (r#"from="a,b"#, KeyLineError::NoKey),
            ("no-pty,,restrict", KeyLineError::Malformed),
        ] {
            assert_eq!(parse_line(&format!("{options} {KEY}")).err(), Some(expected), "{options}");
        }
    }

    #[test]
    fn restrictions_podsftp_already_satisfies_are_accepted() {
        let line = format!(r#"restrict,NO-PTY,permitopen="h:1",environment="A=\"b c\"",command="internal-sftp" {KEY}"#);
        let key = parse_line(&line).unwrap();
        assert!(key.allows(ip("203.0.113.9"), SystemTime::now()));
        assert!(key.restrictions().is_none());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard(b"10.0.*", b"10.0.12.1"));
        assert!(wildcard(b"*.1", b"10.0.12.1"));
        assert!(wildcard(b"10.?.1.1", b"10.0.1.1"));
        assert!(!wildcard(b"10.?.1.1", b"10.00.1.1"));
        assert!(wildcard(b"*", b""));
        assert!(!wildcard(b"", b"x"));
    }
}
