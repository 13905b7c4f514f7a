//! Small fixtures for tests of rollout and of the crates that consume it (trainer, eval): a case, a
//! character-level ChatML codec, and stage scorers with known answers.
use crate::codec::TextCodec;
use spar_core::Stage;
use spar_core::case::{
    Case, Demographics, Diagnosis, InquiryItem, RubricItem, Sex, TestItem, Tests,
};
use spar_core::grammar;
use spar_core::sample::Turn;
use spar_core::traits::{StageScore, StageScorer};

/// A small, valid respiratory case.
pub fn tiny_case() -> Case {
    Case {
        id: "resp-0001".into(),
        department: "respiratory".into(),
        demographics: Demographics {
            age: 54,
            sex: Sex::Male,
        },
        chief_complaint: "Cough and fever for 3 days".into(),
        hpi: "Productive cough with yellow sputum, fever up to 39 C.".into(),
        past_history: vec![],
        medications: vec![],
        allergies: vec!["penicillin".into()],
        family_history: vec![],
        social_history: vec!["smokes 10 cigarettes a day".into()],
        exam_findings: vec!["crackles right lower lobe".into()],
        inquiry_items: vec![
            InquiryItem {
                id: "fever".into(),
                topic: "fever".into(),
                keywords: vec!["fever".into(), "temperature".into()],
                answer: "Yes, up to 39 degrees.".into(),
                weight: 2.0,
                critical: false,
            },
            InquiryItem {
                id: "breath".into(),
                topic: "shortness of breath".into(),
                keywords: vec!["breath".into(), "breathing".into()],
                answer: "A little short of breath on stairs.".into(),
                weight: 2.0,
                critical: true,
            },
        ],
        red_flags: vec![],
        diagnosis: Diagnosis {
            name: "Pneumonia, unspecified organism".into(),
            icd10: "J18.9".into(),
        },
        differential: vec![Diagnosis {
            name: "Acute bronchitis".into(),
            icd10: "J20.9".into(),
        }],
        tests: Tests {
            essential: vec![TestItem {
                name: "Chest X-ray".into(),
                aliases: vec!["cxr".into()],
                loinc: None,
            }],
            optional: vec![],
        },
        rubric: vec![RubricItem {
            criterion: "Asks about penicillin allergy".into(),
            points: 5,
            tags: vec![],
            rule: None,
        }],
        source: "test".into(),
    }
}

/// Special tokens of [`CharCodec`], ids 0.. in this order; characters are `256 + byte`.
pub const CHAR_CODEC_SPECIALS: [&str; 6] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<ready/>",
];

/// A byte-level codec with ChatML special tokens: every byte is one token, each special token one id. Exact
/// round trips, no merges: the environment's bookkeeping can be checked token by token.
#[derive(Clone, Debug, Default)]
pub struct CharCodec;

impl CharCodec {
    pub fn vocab_size() -> usize {
        256 + 256
    }
}

impl TextCodec for CharCodec {
    fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut rest = text;
        'outer: while !rest.is_empty() {
            for (i, s) in CHAR_CODEC_SPECIALS.iter().enumerate() {
                if let Some(r) = rest.strip_prefix(s) {
                    out.push(i as u32);
                    rest = r;
                    continue 'outer;
                }
            }
            let c = rest.chars().next().expect("non-empty");
            let mut buf = [0u8; 4];
            out.extend(c.encode_utf8(&mut buf).bytes().map(|b| 256 + b as u32));
            rest = &rest[c.len_utf8()..];
        }
        Ok(out)
    }

    fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            match id {
                0..=5 => bytes.extend_from_slice(CHAR_CODEC_SPECIALS[id as usize].as_bytes()),
                256..=511 => bytes.push((id - 256) as u8),
                _ => {}
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn token_id(&self, token: &str) -> Option<u32> {
        CHAR_CODEC_SPECIALS
            .iter()
            .position(|s| *s == token)
            .map(|i| i as u32)
    }
}

/// A stage scorer that passes a stage when its tagged output parses (1.0), else 0.0. Enough to exercise the
/// gate without the rewards crate's clinical scorer.
#[derive(Clone, Debug, Default)]
pub struct ParseScorer;

impl StageScorer for ParseScorer {
    fn score(
        &self,
        _case: &Case,
        stage: Stage,
        doctor_replies: &[String],
        _dialogue: &[Turn],
    ) -> StageScore {
        let parsed = doctor_replies.iter().any(|r| match stage {
            Stage::Inquiry => grammar::inquiry_done(r),
            Stage::Ddx => grammar::parse_ddx(r).is_ok(),
            Stage::Lab => grammar::parse_tests(r).is_ok(),
            Stage::Diag => grammar::parse_diagnosis(r).is_ok(),
        });
        StageScore {
            score: if parsed { 1.0 } else { 0.0 },
            parsed,
            details: serde_json::Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_codec_round_trips_with_specials() {
        let c = CharCodec;
        let text = "<|im_start|>user\nhé?<|im_end|>\n";
        let ids = c.encode(text).unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(c.decode(&ids).unwrap(), text);
        assert!(tiny_case().validate().is_empty());
    }
}
