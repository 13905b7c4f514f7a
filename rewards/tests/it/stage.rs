//! Stage rewards G_k with hand-computed numbers.
use super::fixtures::{case, close};
use spar_core::Stage;
use spar_core::recipe::{DdxDiscount, StageRewardConfig};
use spar_core::sample::{Role, Turn};
use spar_core::traits::StageScorer;
use spar_rewards::ClinicalStageScorer;
use spar_rewards::stage::icd10_chapter;

fn s() -> ClinicalStageScorer {
    ClinicalStageScorer::default()
}

fn r(x: &str) -> Vec<String> {
    vec![x.to_string()]
}

#[test]
fn inquiry_weighted_coverage_counts_questions_only() {
    // Items fever 2, smoking 1, allergy 3; red flag 2 x 1.0: total 8.
    let c = case();
    let g = s().score(
        &c,
        Stage::Inquiry,
        &r("Any fever? Do you smoke? You have a cough."),
        &[],
    );
    close(g.score, 3.0 / 8.0);
    let dialogue = vec![Turn::new(
        Role::Assistant,
        "<think>allergy?</think>Have you been coughing up blood?",
    )];
    let g = s().score(
        &c,
        Stage::Inquiry,
        &r("Any fever? Do you smoke? Penicillin allergy is common."),
        &dialogue,
    );
    close(g.score, 5.0 / 8.0); // the allergy statement is not a question; thinking does not count
    assert!(g.parsed);
}

#[test]
fn ddx_is_rank_aware() {
    let c = case();
    let reply = "<ddx>\n1. Acute bronchitis (J20.9)\n2. Pneumonia (J18.9)\n</ddx>";
    close(
        s().score(&c, Stage::Ddx, &r(reply), &[]).score,
        1.0 / 3f64.log2(),
    );
    let recip = ClinicalStageScorer::new(StageRewardConfig {
        ddx_discount: DdxDiscount::Reciprocal,
        ..Default::default()
    });
    close(recip.score(&c, Stage::Ddx, &r(reply), &[]).score, 0.5);
    close(
        s().score(&c, Stage::Ddx, &r("<ddx>1. Pneumonia (J18.9)</ddx>"), &[])
            .score,
        1.0,
    );
    let short = ClinicalStageScorer::new(StageRewardConfig {
        ddx_max_len: 1,
        ..Default::default()
    });
    close(short.score(&c, Stage::Ddx, &r(reply), &[]).score, 0.2); // only rank 1 counts: chapter credit
    let bad = s().score(&c, Stage::Ddx, &r("Probably pneumonia."), &[]);
    assert!(!bad.parsed);
    close(bad.score, 0.0);
}

#[test]
fn lab_weighted_f1() {
    // Essential CXR 2 + CBC 2, optional sputum culture 1; recommended CXR, CBC, MRI (extra 1).
    // P = 4 / 5, R = 4 / 5: F1 = 0.8.
    let c = case();
    let g = s().score(
        &c,
        Stage::Lab,
        &r("<tests>\n- Chest X-ray (PA)\n- CBC\n- MRI brain\n</tests>"),
        &[],
    );
    close(g.score, 0.8);
    // Only the optional test: P = 1, R = 1/5: F1 = 2 * 0.2 / 1.2.
    let g = s().score(&c, Stage::Lab, &r("<tests>- Sputum culture</tests>"), &[]);
    close(g.score, 2.0 * 0.2 / 1.2);
    // The same test twice counts once; the repeat is an extra.
    let g = s().score(
        &c,
        Stage::Lab,
        &r("<tests>\n- CXR\n- chest x-ray\n</tests>"),
        &[],
    );
    let (p, rc) = (2.0 / 3.0, 2.0 / 5.0);
    close(g.score, 2.0 * p * rc / (p + rc));
}

#[test]
fn diag_hierarchical_icd10() {
    let c = case();
    let d = |x: &str| {
        s().score(
            &c,
            Stage::Diag,
            &r(&format!("<diagnosis>{x}</diagnosis>")),
            &[],
        )
        .score
    };
    close(d("Pneumonia (J18.9)"), 1.0);
    close(d("Lobar pneumonia (J18.1)"), 0.5);
    close(d("Asthma (J45.909)"), 0.2);
    close(d("Migraine (G43.909)"), 0.0);
    close(d("Pneumonia, unspecified organism"), 1.0);
    close(d("Pneumonia"), 0.5);
    // The latest parseable reply counts.
    let g = s().score(
        &c,
        Stage::Diag,
        &[
            "<diagnosis>Asthma (J45.909)</diagnosis>".to_string(),
            "On reflection: <diagnosis>Pneumonia (J18.9)</diagnosis>".to_string(),
        ],
        &[],
    );
    close(g.score, 1.0);
    assert_eq!(
        [
            icd10_chapter("A00"),
            icd10_chapter("D50.1"),
            icd10_chapter("H60"),
            icd10_chapter("z00.0")
        ],
        [Some(1), Some(3), Some(8), Some(21)]
    );
}
