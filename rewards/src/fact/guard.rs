//! What two claims must share before one may stand for the other (semantic cache hits, claim clustering):
//! the same negations and the same numbers with their units. Embeddings alone put "X is contraindicated in
//! pregnancy" next to "X is not contraindicated in pregnancy", and "5 mg" next to "50 mg".
use crate::text::words;
use regex::Regex;
use std::sync::LazyLock;

static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(\d+(?:[.,]\d+)*)\s*(%|[A-Za-zµμ]+(?:/[A-Za-z0-9]+)?)?").unwrap()
});

const NEGATIONS: [&str; 10] = [
    "not", "no", "never", "without", "none", "neither", "nor", "cannot", "nothing", "nobody",
];

/// The negation cues and number-with-unit mentions of a claim, sorted (order does not matter, count does).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Signature {
    pub negations: Vec<String>,
    pub quantities: Vec<String>,
}

impl Signature {
    pub fn of(claim: &str) -> Signature {
        let mut negations: Vec<String> = words(claim)
            .into_iter()
            .filter_map(|w| {
                if NEGATIONS.contains(&w.as_str()) {
                    Some(w)
                } else if w.ends_with("n't") {
                    Some("n't".to_string())
                } else {
                    None
                }
            })
            .collect();
        negations.sort();
        let mut quantities: Vec<String> = NUMBER
            .captures_iter(claim)
            .map(|c| {
                let num = c[1].replace(',', ".");
                let num = num.trim_end_matches(".0").to_string();
                match c.get(2) {
                    Some(u) => format!("{num} {}", u.as_str().to_lowercase().replace('μ', "µ")),
                    None => num,
                }
            })
            .collect();
        quantities.sort();
        Signature {
            negations,
            quantities,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negation_and_units_separate_claims() {
        let a = Signature::of("Warfarin is contraindicated in pregnancy");
        let b = Signature::of("Warfarin is not contraindicated in pregnancy");
        let c = Signature::of("Warfarin isn't contraindicated in pregnancy");
        assert_ne!(a, b);
        assert_ne!(b, c, "different cues count as different wording; safe side");
        assert_ne!(
            Signature::of("Give 5 mg daily"),
            Signature::of("Give 50 mg daily")
        );
        assert_ne!(
            Signature::of("Give 5 mg daily"),
            Signature::of("Give 5 g daily")
        );
        assert_eq!(
            Signature::of("Give 5mg daily"),
            Signature::of("give 5 MG daily.")
        );
    }
}
