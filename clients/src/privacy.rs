//! When outgoing text is PHI-redacted: only for endpoints off this machine (method.md section 9, "Patient data
//! leaving the machine"). Loopback means 127.0.0.0/8, `::1` (also IPv4-mapped) and the name `localhost`;
//! a private-network address is not loopback, since the data still leaves the machine.
use crate::fence;
use reqwest::Url;
use serde_json::Value;
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

/// Redacts PHI from one outgoing or logged text (`spar_core::phi`, all identifier kinds).
pub fn redact(text: &str) -> String {
    spar_core::phi::redact(text)
}

/// Redacts a prompt that may hold fenced JSON data blocks (`fence::data_block`): inside a block every JSON
/// string value is redacted on its own and the block re-written, so the redactor can never eat a quote or an
/// escape and break the JSON; the text around blocks is redacted as plain text.
pub fn redact_prompt(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((before, id, value, after)) = fence::next_block(rest) {
        out.push_str(&redact(before));
        out.push_str(&fence::data_block(id, &redact_strings(value)));
        rest = after;
    }
    out.push_str(&redact(rest));
    out
}

fn redact_strings(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(redact(&s)),
        Value::Array(a) => Value::Array(a.into_iter().map(redact_strings).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, redact_strings(v))).collect())
        }
        other => other,
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
