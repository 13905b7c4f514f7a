//! Small fixtures for tests of rollout and of the crates that consume it (trainer, eval): a case, a
//! character-level ChatML codec, and stage scorers with known answers.
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
                result: None,
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

/// The byte-level ChatML codec ([`crate::codec::ByteCodec`]) under its test-fixture name.
pub use crate::codec::{BYTE_CODEC_SPECIALS as CHAR_CODEC_SPECIALS, ByteCodec as CharCodec};

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
        let parsed = doctor_replies.iter().any(|r| grammar::completes(stage, r));
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
    use crate::codec::TextCodec;

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
