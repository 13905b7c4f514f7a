//! Hand-built cases and samples for the reward tests.
use spar_core::case::*;
use spar_core::sample::*;
use spar_core::{Case, Sample, Stage};

pub fn rule(any: &[&str]) -> Option<RuleCheck> {
    Some(RuleCheck {
        any: any.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

pub fn item(criterion: &str, points: i32, any: &[&str]) -> RubricItem {
    RubricItem {
        criterion: criterion.into(),
        points,
        tags: vec![],
        rule: rule(any),
    }
}

pub fn case() -> Case {
    let inq = |id: &str, kw: &[&str], w: f32| InquiryItem {
        id: id.into(),
        topic: id.into(),
        keywords: kw.iter().map(|s| s.to_string()).collect(),
        answer: format!("answer about {id}"),
        weight: w,
        critical: false,
    };
    let test = |n: &str, aliases: &[&str]| TestItem {
        name: n.into(),
        aliases: aliases.iter().map(|s| s.to_string()).collect(),
        loinc: None,
        result: None,
    };
    Case {
        id: "resp-0001".into(),
        department: "respiratory".into(),
        demographics: Demographics {
            age: 54,
            sex: Sex::Male,
        },
        chief_complaint: "cough and fever for 3 days".into(),
        hpi: "Productive cough, fever up to 39 C.".into(),
        past_history: vec![],
        medications: vec![],
        allergies: vec!["penicillin".into()],
        family_history: vec![],
        social_history: vec!["smokes".into()],
        exam_findings: vec![],
        inquiry_items: vec![
            inq("fever", &["fever", "temperature"], 2.0),
            inq("smoking", &["smoke", "smoking"], 1.0),
            inq("allergy", &["allergy", "allergic"], 3.0),
        ],
        red_flags: vec![RedFlag {
            id: "hemoptysis".into(),
            description: "coughing blood".into(),
            keywords: vec!["blood".into(), "coughing up blood".into()],
            present: true,
            answer: "Yes, there was some blood when I coughed this morning.".into(),
            weight: 2.0,
        }],
        diagnosis: Diagnosis {
            name: "Pneumonia, unspecified organism".into(),
            icd10: "J18.9".into(),
        },
        differential: vec![Diagnosis {
            name: "Acute bronchitis".into(),
            icd10: "J20.9".into(),
        }],
        tests: Tests {
            essential: vec![
                test("Chest X-ray", &["cxr"]),
                test("Complete blood count", &["cbc"]),
            ],
            optional: vec![test("Sputum culture", &[])],
        },
        rubric: vec![
            item("Asks about penicillin allergy", 5, &["allergy", "allergic"]),
            item("Asks about smoking", 3, &["smoke", "smoking"]),
            item(
                "Prescribes antibiotics without an exam",
                -7,
                &["prescribe amoxicillin"],
            ),
            item("Dismisses the symptoms", -2, &["nothing to worry"]),
        ],
        source: "test".into(),
    }
}

/// A sample whose turns are `(role, text)`; every assistant turn is a sampled step of `stage` (the first
/// `prefix_replies` assistant turns are prefix, not steps). Token ids are one per word plus template tokens.
pub fn sample(
    group: &str,
    idx: u32,
    stages: &[Stage],
    turns: &[(Role, &str)],
    prefix_replies: usize,
) -> Sample {
    let (mut ids, mut mask, mut steps, mut lp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut out_turns = Vec::new();
    let mut seen_replies = 0;
    for (role, text) in turns {
        // three template tokens per turn
        for _ in 0..3 {
            ids.push(1);
            mask.push(0);
            lp.push(0.0);
        }
        let n = text.split_whitespace().count().max(1) + 1; // + <|im_end|>
        let sampled = *role == Role::Assistant && seen_replies >= prefix_replies;
        let start = ids.len();
        for k in 0..n {
            ids.push(10 + k as u32);
            mask.push(u8::from(sampled));
            lp.push(if sampled { -0.5 } else { 0.0 });
        }
        if *role == Role::Assistant {
            if sampled {
                steps.push(StepSpan {
                    stage: stages[stages.len() - 1],
                    start,
                    end: ids.len(),
                });
            }
            seen_replies += 1;
        }
        let mut t = Turn::new(*role, *text);
        if *role == Role::Assistant {
            t.stage = Some(stages[stages.len() - 1]);
        }
        out_turns.push(t);
    }
    Sample {
        schema_version: SCHEMA_VERSION,
        run_id: "run".into(),
        case_id: "resp-0001".into(),
        group_id: group.into(),
        sample_idx: idx,
        stages: stages.to_vec(),
        mode: EpisodeMode::Fresh,
        policy_version: 0,
        end_reason: EndReason::Done,
        token_ids: ids,
        loss_mask: mask,
        rollout_logprobs: lp,
        routed_experts: None,
        steps,
        turns: out_turns,
    }
}

pub fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-9, "{a} != {b}");
}
