//! When outgoing text is PHI-redacted: only for endpoints off this machine (method.md section 9, "Patient data
//! leaving the machine"). Loopback means 127.0.0.0/8, `::1` (also IPv4-mapped) and the name `localhost`;
//! a private-network address is not loopback, since the data still leaves the machine.
use reqwest::Url;
use std::net::{IpAddr, Ipv6Addr};

/// True when `url`'s host is on loopback. An unparseable URL is not loopback (it is redacted, the safe side).
pub fn is_loopback_url(url: &str) -> bool {
    Url::parse(url).is_ok_and(|u| is_loopback(&u))
}

pub(crate) fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => is_loopback_v6(ip),
        Err(_) => bare
            .strip_suffix('.')
            .unwrap_or(bare)
            .eq_ignore_ascii_case("localhost"),
    }
}

fn is_loopback_v6(ip: Ipv6Addr) -> bool {
    ip.is_loopback()
        || ip
            .to_ipv4_mapped()
            .is_some_and(|v4| IpAddr::V4(v4).is_loopback())
}

/// The redaction decision for an endpoint: the recipe's `redact_phi` knob, and a host off loopback.
pub fn should_redact(redact_phi: bool, base_url: &str) -> bool {
    redact_phi && !is_loopback_url(base_url)
}

/// Redacts PHI from one outgoing or logged text.
///
/// Interim: `spar_core::phi` (owned by the data work) is being written; until it lands this applies the
/// identifier patterns below, and then becomes a call to it.
pub fn redact(text: &str) -> String {
    interim::redact(text)
}

mod interim {
    use regex::Regex;
    use std::sync::LazyLock;

    /// (pattern, replacement), applied in order: structured identifiers before the looser number patterns.
    static RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
        [
            (r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b", "[EMAIL]"),
            // Not across quotes or brackets: outgoing text is often JSON, whose structure must survive.
            (r#"(?i)\bhttps?://[^\s"'<>()\[\]{}\\]+"#, "[URL]"),
            (r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b", "[IP]"),
            (r"\b\d{3}-\d{2}-\d{4}\b", "[SSN]"),
            (r"(?i)\b(?:mrn|medical record(?: number)?|account(?: number)?|acct|member id|policy(?: number)?)\s*[:#]?\s*[a-z0-9-]*\d[a-z0-9-]*", "[ID]"),
            (r"(?:\+?1[ .-]?)?\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b", "[PHONE]"),
            (r"\b\d{4}-\d{2}-\d{2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b", "[DATE]"),
        ]
        .into_iter()
        .map(|(p, r)| (Regex::new(p).expect("valid regex"), r))
        .collect()
    });

    pub(super) fn redact(text: &str) -> String {
        let mut out = text.to_string();
        for (re, with) in RULES.iter() {
            out = re.replace_all(&out, *with).into_owned();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for u in [
            "http://127.0.0.1:8000/v1",
            "http://127.9.8.7/v1",
            "http://localhost:1/v1",
            "https://LOCALHOST./v1",
            "http://[::1]:8000/v1",
            "http://[::ffff:127.0.0.1]/v1",
        ] {
            assert!(is_loopback_url(u), "{u} is loopback");
            assert!(!should_redact(true, u), "{u} is not redacted");
        }
    }

    #[test]
    fn identifiers_are_redacted_and_clinical_numbers_kept() {
        let r = redact(
            "Call 555-123-4567 or jane.doe@example.org, MRN: 00123456, seen 03/14/2024; SSN 123-45-6789.",
        );
        for gone in [
            "555-123-4567",
            "jane.doe",
            "00123456",
            "03/14/2024",
            "123-45-6789",
        ] {
            assert!(!r.contains(gone), "{gone} in {r}");
        }
        let clinical =
            "Amoxicillin 500 mg three times a day for 7 days; temperature 38.5 C; BP 120/80.";
        assert_eq!(redact(clinical), clinical);
    }

    #[test]
    fn remote_hosts() {
        for u in [
            "http://10.0.0.5:8000/v1",
            "http://192.168.1.2/v1",
            "https://api.openai.com/v1",
            "http://localhost.evil.com/v1",
            "http://0.0.0.0:8000/v1",
            "http://[::]:8000/v1",
            "http://[fe80::1]/v1",
            "not a url",
            "http://128.0.0.1/v1",
        ] {
            assert!(!is_loopback_url(u), "{u} is not loopback");
            assert!(should_redact(true, u), "{u} is redacted");
            assert!(
                !should_redact(false, u),
                "the knob turns redaction off for {u}"
            );
        }
    }
}
