//! Small deterministic text helpers shared by the rule judge, the step detectors, the claim extractor, the
//! lexical encoder and the stage rewards.
use std::collections::HashSet;

/// Lower case, whitespace collapsed, surrounding punctuation trimmed: the form texts are compared in.
pub fn normalize(s: &str) -> String {
    let lower = s.to_lowercase();
    let collapsed: Vec<&str> = lower.split_whitespace().collect();
    collapsed
        .join(" ")
        .trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace())
        .to_string()
}

/// Lower-case word tokens (letters, digits, apostrophes inside words).
pub fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// True when `phrase` occurs in `text` starting at a word boundary, case-insensitively. The end is open, so
/// that case keywords and rule phrases may be stems ("allerg" matches "allergic", "radiat" matches
/// "radiates") while "er" still does not match inside "fever".
pub fn contains_phrase(text: &str, phrase: &str) -> bool {
    contains_phrase_lowered(&text.to_lowercase(), phrase)
}

/// [`contains_phrase`] in a text already lowercased with `str::to_lowercase`: for many phrases looked up in one
/// text, which then is lowercased once instead of once a phrase.
pub fn contains_phrase_lowered(lowered: &str, phrase: &str) -> bool {
    let t = lowered;
    let p = phrase.trim().to_lowercase();
    if p.is_empty() {
        return false;
    }
    let is_word = |c: char| c.is_alphanumeric();
    let mut from = 0;
    while let Some(off) = t[from..].find(&p) {
        let start = from + off;
        let before_ok = t[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !is_word(c) || !p.starts_with(is_word));
        if before_ok {
            return true;
        }
        from = start + t[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// Splits text into sentences at `.`, `!`, `?`, `;` and line breaks (a decimal point "2.5" does not split).
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '\n' {
            push_sentence(&mut out, &mut cur);
            continue;
        }
        cur.push(c);
        let next = chars.get(i + 1).copied();
        let decimal = c == '.'
            && i > 0
            && chars[i - 1].is_ascii_digit()
            && next.is_some_and(|n| n.is_ascii_digit());
        if matches!(c, '.' | '!' | '?' | ';') && !decimal && next.is_none_or(char::is_whitespace) {
            push_sentence(&mut out, &mut cur);
        }
    }
    push_sentence(&mut out, &mut cur);
    out
}

fn push_sentence(out: &mut Vec<String>, cur: &mut String) {
    let s = cur.trim();
    if s.chars().any(char::is_alphanumeric) {
        out.push(s.to_string());
    }
    cur.clear();
}

/// Word trigrams of a text (single words for texts shorter than three words).
pub fn trigrams(text: &str) -> HashSet<String> {
    let w = words(text);
    if w.len() < 3 {
        return w.into_iter().collect();
    }
    w.windows(3).map(|t| t.join(" ")).collect()
}

/// Jaccard similarity of two sets (0 when both are empty).
pub fn jaccard(a: &HashSet<String>, b: &HashSet<String>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        0.0
    } else {
        a.intersection(b).count() as f64 / union as f64
    }
}

/// 64-bit FNV-1a: a stable hash (std's hasher is randomly seeded per process, useless for persisted features).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// SHA-256 of a string, hex: cache namespaces and template hashes.
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// True for a sentence that asks the patient something (a question mark, or an interrogative / imperative
/// opening such as "do you", "tell me", "any").
pub fn is_question(sentence: &str) -> bool {
    if sentence.contains('?') {
        return true;
    }
    const OPENERS: [&str; 22] = [
        "do", "does", "did", "have", "has", "had", "are", "is", "was", "were", "can", "could",
        "how", "when", "what", "where", "which", "who", "why", "any", "tell", "describe",
    ];
    words(sentence)
        .first()
        .is_some_and(|w| OPENERS.contains(&w.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_respect_word_boundaries() {
        assert!(contains_phrase("Any FEVER lately?", "fever"));
        assert!(!contains_phrase("fever", "er"));
        assert!(
            contains_phrase("Any allergies?", "allerg"),
            "stems match at a word start"
        );
        assert!(contains_phrase("blood pressure 120/80", "blood pressure"));
        assert!(contains_phrase("ÉCG done", "écg"));
        assert!(!contains_phrase("", "x"));
    }

    #[test]
    fn sentences_keep_decimals() {
        assert_eq!(
            sentences("Take 2.5 mg daily. Any fever?\nOk"),
            vec!["Take 2.5 mg daily.", "Any fever?", "Ok"]
        );
        assert_eq!(
            normalize("  Hello,   World. "),
            "hello,   world".replace("   ", " ")
        );
    }

    #[test]
    fn questions() {
        assert!(is_question("Do you smoke"));
        assert!(is_question("Since when?"));
        assert!(!is_question("You should rest."));
    }
}
