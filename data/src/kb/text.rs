//! Text handling shared by the knowledge-base loaders and the claim verifier: folding (lower case, accents
//! removed, the same folding `scripts/build-kb.py` applies), tokenising, phrase lexicons with longest match,
//! quantities with units, and negation cues.
use regex::Regex;
use std::collections::HashMap;
use std::sync::LazyLock;

/// Lower case, Latin accents removed, typographic quotes and dashes made ASCII, whitespace collapsed, and
/// spaces around hyphens removed ("beta- bloquants" and "beta-bloquants" fold alike).
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars().flat_map(char::to_lowercase) {
        match ch {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => out.push('a'),
            'ç' => out.push('c'),
            'è' | 'é' | 'ê' | 'ë' => out.push('e'),
            'ì' | 'í' | 'î' | 'ï' => out.push('i'),
            'ñ' => out.push('n'),
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' => out.push('o'),
            'ù' | 'ú' | 'û' | 'ü' => out.push('u'),
            'ý' | 'ÿ' => out.push('y'),
            'œ' => out.push_str("oe"),
            'æ' => out.push_str("ae"),
            '’' | '‘' | '`' => out.push('\''),
            '–' | '—' | '−' | '‐' => out.push('-'),
            'µ' | 'μ' => out.push('u'),
            _ => out.push(ch),
        }
    }
    static HYPHEN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\s*-\s*").unwrap());
    static SPACE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\s+").unwrap());
    let out = HYPHEN.replace_all(&out, "-");
    SPACE.replace_all(&out, " ").trim().to_string()
}

/// Word tokens of already-folded text: runs of letters, digits and the in-word marks `' - / +`, with those
/// marks trimmed from the ends ("st. john's wort" -> `st`, `john's`, `wort`).
pub fn tokens(folded: &str) -> Vec<&str> {
    folded
        .split(|c: char| !(c.is_alphanumeric() || matches!(c, '\'' | '-' | '/' | '+')))
        .map(|t| t.trim_matches(|c| matches!(c, '\'' | '-' | '/' | '+')))
        .filter(|t| !t.is_empty())
        .collect()
}

/// A phrase key: folded, tokenised and joined by single spaces, so lexicon entries and claim text meet in the
/// same form.
pub fn phrase_key(s: &str) -> String {
    tokens(&fold(s)).join(" ")
}

/// One phrase found in a token stream: which entry, and where (token indices, half-open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mention<T: Copy> {
    pub value: T,
    pub start: usize,
    pub end: usize,
}

/// Phrases (up to `MAX_WORDS` words) mapped to values; matching takes the longest phrase at each position and
/// never overlaps two mentions.
#[derive(Clone, Debug)]
pub struct Lexicon<T: Copy> {
    map: HashMap<String, T>,
    max_words: usize,
}

impl<T: Copy> Default for Lexicon<T> {
    fn default() -> Self {
        Lexicon {
            map: HashMap::new(),
            max_words: 1,
        }
    }
}

impl<T: Copy> Lexicon<T> {
    /// Adds `phrase` unless it is already there (the first entry for a phrase wins: callers add preferred
    /// names first).
    pub fn insert(&mut self, phrase: &str, value: T) {
        let key = phrase_key(phrase);
        if key.is_empty() {
            return;
        }
        self.max_words = self.max_words.max(key.split(' ').count());
        self.map.entry(key).or_insert(value);
    }

    pub fn get(&self, phrase: &str) -> Option<T> {
        self.map.get(&phrase_key(phrase)).copied()
    }

    /// Every mention in `toks`, left to right, longest first at each position.
    pub fn find(&self, toks: &[&str]) -> Vec<Mention<T>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            let mut hit = None;
            for n in (1..=self.max_words.min(toks.len() - i)).rev() {
                if let Some(v) = self.map.get(&toks[i..i + n].join(" ")) {
                    hit = Some((n, *v));
                    break;
                }
            }
            match hit {
                Some((n, value)) => {
                    out.push(Mention {
                        value,
                        start: i,
                        end: i + n,
                    });
                    i += n;
                }
                None => i += 1,
            }
        }
        out
    }
}

/// Words that negate the statement they sit in.
pub fn is_negator(tok: &str) -> bool {
    matches!(tok, "not" | "no" | "never" | "cannot" | "neither" | "nor") || tok.ends_with("n't")
}

/// True when a negator appears among the `window` tokens before index `at`.
pub fn negated_before(toks: &[&str], at: usize, window: usize) -> bool {
    toks[at.saturating_sub(window)..at]
        .iter()
        .any(|t| is_negator(t))
}

/// A number with its unit as written in a claim (folded text; byte offsets into it).
#[derive(Clone, Debug, PartialEq)]
pub struct Quantity {
    /// The larger end of a range ("500-1000 mg" gives 1000, `low` 500).
    pub value: f64,
    pub low: f64,
    /// Unit as written, folded and trimmed (e.g. "mg", "mmol/l", "g/dl").
    pub unit: String,
    pub start: usize,
    pub end: usize,
    /// Written as a range ("a-b", "a to b", "between a and b").
    pub is_range: bool,
}

static QUANTITY: LazyLock<Regex> = LazyLock::new(|| {
    // number [(-|to|and) number] unit; the unit is a word with optional /denominator ("mmol/l", "mg/dl").
    Regex::new(
        r"(?x)
        (?P<a>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:[.,]\d+)?)
        (?:\s*(?:-|to|and)\s*(?P<b>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:[.,]\d+)?))?
        \s*
        (?P<u>(?:x\s*10\^?\d+/l|10\^?\d+/l|10\*\d+/ul|%|°\s*[cf]|[a-z][a-z0-9\[\]\{\}*._]*(?:/[a-z0-9.\[\]\{\}_]+)*))?
        ",
    )
    .unwrap()
});

/// Numbers with units in folded text. Numbers without a unit are returned with an empty unit.
pub fn quantities(folded: &str) -> Vec<Quantity> {
    let mut out = Vec::new();
    for c in QUANTITY.captures_iter(folded) {
        let whole = c.get(0).unwrap();
        // Skip digits glued to letters on their left (ICD codes like "j18.9", "covid19", "b12").
        if folded[..whole.start()]
            .chars()
            .next_back()
            .is_some_and(|ch| ch.is_alphabetic())
        {
            continue;
        }
        let num = |m: regex::Match| parse_number(m.as_str());
        let Some(a) = num(c.name("a").unwrap()) else {
            continue;
        };
        let b = c.name("b").and_then(num);
        // A sentence-final period is not part of the unit ("4 g.", "mmol/l.").
        let unit = c
            .name("u")
            .map(|m| {
                m.as_str()
                    .replace(' ', "")
                    .trim_end_matches('.')
                    .to_string()
            })
            .unwrap_or_default();
        let between = folded[..whole.start()].trim_end().ends_with("between");
        let is_range = b.is_some()
            && (c.get(0).unwrap().as_str().contains('-')
                || c.get(0).unwrap().as_str().contains("to")
                || between);
        let (low, value) = match b {
            Some(b) if is_range => (a.min(b), a.max(b)),
            _ => (a, a),
        };
        out.push(Quantity {
            value,
            low,
            unit,
            start: whole.start(),
            end: whole.end(),
            is_range,
        });
    }
    out
}

/// "1,500" is fifteen hundred (thousands separator); "1,5" is one and a half (decimal comma).
fn parse_number(s: &str) -> Option<f64> {
    static THOUSANDS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^\d{1,3}(?:,\d{3})+(?:\.\d+)?$").unwrap());
    if THOUSANDS.is_match(s) {
        s.replace(',', "").parse().ok()
    } else {
        s.replace(',', ".").parse().ok()
    }
}

/// A mass converted to milligrams, or `None` when `unit` is not a mass unit.
pub fn to_mg(value: f64, unit: &str) -> Option<f64> {
    let factor = match unit {
        "mg" | "milligram" | "milligrams" | "mgs" => 1.0,
        "g" | "gm" | "gram" | "grams" | "gr" => 1000.0,
        "mcg" | "ug" | "microgram" | "micrograms" => 0.001,
        "kg" => 1_000_000.0,
        _ => return None,
    };
    Some(value * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_and_tokens() {
        assert_eq!(
            fold("Kétoconazole  Œdème – bêta- bloquants"),
            "ketoconazole oedeme-beta-bloquants"
        );
        assert_eq!(
            tokens("st. john's wort, 5-fu!"),
            vec!["st", "john's", "wort", "5-fu"]
        );
    }

    #[test]
    fn lexicon_prefers_longest() {
        let mut lx = Lexicon::default();
        lx.insert("asthma", 1);
        lx.insert("aspirin-sensitive asthma", 2);
        lx.insert("aspirin", 3);
        let f = fold("Aspirin is contraindicated in aspirin-sensitive asthma");
        let found: Vec<_> = lx.find(&tokens(&f)).into_iter().map(|m| m.value).collect();
        assert_eq!(found, vec![3, 2]);
    }

    #[test]
    fn quantities_with_units_and_ranges() {
        let q = quantities(
            "take 500 mg twice daily, k 3.5-5.0 mmol/l, between 70 and 99 mg/dl, j18.9, 1,5 g, 1,000 mg",
        );
        let got: Vec<_> = q
            .iter()
            .map(|q| (q.low, q.value, q.unit.as_str(), q.is_range))
            .collect();
        assert_eq!(
            got,
            vec![
                (500.0, 500.0, "mg", false),
                (3.5, 5.0, "mmol/l", true),
                (70.0, 99.0, "mg/dl", true),
                (1.5, 1.5, "g", false),
                (1000.0, 1000.0, "mg", false)
            ]
        );
        assert_eq!(to_mg(2.0, "g"), Some(2000.0));
        assert_eq!(to_mg(250.0, "mcg"), Some(0.25));
        assert_eq!(to_mg(1.0, "ml"), None);
    }
}
