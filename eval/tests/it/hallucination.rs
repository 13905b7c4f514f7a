//! The hallucination rate H (Refuted 1.0, Uncertain 0.5, Supported 0), per response and pooled.
use spar_core::sample::ClaimLabel::{Refuted, Supported, Uncertain};
use spar_eval::hallucination::{ClaimCounts, summarize};

#[test]
fn h_weighs_refuted_one_and_uncertain_half() {
    let c = ClaimCounts::of(&[
        Supported, Supported, Supported, Refuted, Uncertain, Uncertain,
    ]);
    assert_eq!(
        (c.supported, c.refuted, c.uncertain, c.total()),
        (3, 1, 2, 6)
    );
    // (1 + 0.5 + 0.5) / 6.
    assert!((c.rate().unwrap() - 2.0 / 6.0).abs() < 1e-12);
    assert_eq!(ClaimCounts::default().rate(), None);
    assert_eq!(ClaimCounts::of(&[Supported]).rate(), Some(0.0));
    assert_eq!(ClaimCounts::of(&[Refuted]).rate(), Some(1.0));
}

#[test]
fn pooled_and_per_response_rates() {
    let a = ClaimCounts::of(&[Refuted, Supported]); // 0.5
    let b = ClaimCounts::of(&[Uncertain, Uncertain, Supported, Supported]); // 0.25
    let s = summarize(&[a, b, ClaimCounts::default()], "x", "kb");
    // Pooled: (1 + 0.5 + 0.5) / 6; per response: mean(0.5, 0.25), the claim-less response left out.
    assert!((s.rate.unwrap() - 2.0 / 6.0).abs() < 1e-12);
    assert!((s.per_response_mean.unwrap() - 0.375).abs() < 1e-12);
    assert_eq!(
        (s.responses, s.responses_without_claims, s.counts.total()),
        (3, 1, 6)
    );
    assert_eq!(summarize(&[], "x", "kb").rate, None);
}

/// H through a whole evaluation: a policy whose replies carry known claims, a rule extractor and verifier of
/// known labels, and the numbers in `report.json` and `report.md` worked out by hand.
mod through_the_report {
    use async_trait::async_trait;
    use spar_core::grammar::{NamedDx, render_ddx, render_diagnosis, render_tests};
    use spar_core::sample::{ClaimLabel, Turn};
    use spar_core::traits::{ClaimExtractor, ClaimVerdict, FactVerifier};
    use spar_core::{Case, Stage};
    use spar_eval::run::{EvalModels, EvalPlan, run_eval};
    use spar_eval::{ConsultationConfig, EvalPolicy, EvalReport, EvalSetup};
    use spar_rollout::env::ScriptedDoctor;
    use std::sync::Arc;

    /// Sentences that start with "Claim:" are claims.
    struct MarkedClaims;

    #[async_trait]
    impl ClaimExtractor for MarkedClaims {
        fn id(&self) -> String {
            "marked".into()
        }
        async fn extract(&self, response: &str, _: &[Turn]) -> spar_core::Result<Vec<String>> {
            Ok(response
                .split("Claim:")
                .skip(1)
                .map(|s| s.split('.').next().unwrap_or("").trim().to_string())
                .collect())
        }
    }

    /// Labels by subject; "unknowable" claims fail, as a verifier endpoint would after its retries.
    struct ByWord;

    #[async_trait]
    impl FactVerifier for ByWord {
        fn id(&self) -> String {
            "by-word".into()
        }
        async fn verify(&self, claim: &str) -> spar_core::Result<ClaimVerdict> {
            let label = if claim.contains("aspirin") || claim.contains("fish oil") {
                ClaimLabel::Supported
            } else if claim.contains("garlic") {
                ClaimLabel::Refuted
            } else if claim.contains("vitamin") {
                ClaimLabel::Uncertain
            } else {
                return Err(spar_core::Error::external("by-word", "no answer", true));
            };
            Ok(ClaimVerdict {
                label,
                evidence: String::new(),
                source: None,
            })
        }
    }

    /// Case 0 (per stage): inquiry aspirin (S) + garlic (R), ddx vitamin (U), lab aspirin (S), diag fish oil (S):
    /// H = (1 + 0.5) / 5 = 0.3. Case 1: inquiry garlic (R) and one claim the verifier fails on: H = 1.
    struct ClaimPolicy {
        first: String,
    }

    impl ScriptedDoctor for ClaimPolicy {
        fn id(&self) -> String {
            "claims".into()
        }
        fn reply(&self, case: &Case, conv: &[Turn]) -> String {
            let a = case.id == self.first;
            let dx = NamedDx {
                name: case.diagnosis.name.clone(),
                icd10: Some(case.diagnosis.icd10.clone()),
            };
            let stage = conv.last().and_then(|t| t.stage).unwrap_or(Stage::Inquiry);
            match (stage, a) {
                (Stage::Inquiry, true) => {
                    "Claim: aspirin thins the blood. Claim: garlic cures cancer. <ready/>"
                        .to_string()
                }
                (Stage::Inquiry, false) => {
                    "Claim: garlic cures cancer. Claim: unknowable thing. <ready/>".to_string()
                }
                (Stage::Ddx, _) => format!(
                    "{}{}",
                    render_ddx(std::slice::from_ref(&dx)),
                    if a {
                        " Claim: vitamin c prevents colds."
                    } else {
                        ""
                    }
                ),
                (Stage::Lab, _) => format!(
                    "{}{}",
                    render_tests(
                        &case
                            .tests
                            .essential
                            .iter()
                            .map(|t| t.name.clone())
                            .collect::<Vec<_>>()
                    ),
                    if a {
                        " Claim: aspirin thins the blood."
                    } else {
                        ""
                    }
                ),
                (Stage::Diag, _) => format!(
                    "{}{}",
                    render_diagnosis(&dx),
                    if a {
                        " Claim: fish oil lowers triglycerides."
                    } else {
                        ""
                    }
                ),
            }
        }
    }

    #[test]
    fn report_states_h_as_computed_by_hand() {
        let (cases, _) = super::super::consultation::validation_cases();
        let cases: Vec<Case> = cases.into_iter().take(2).collect();
        let models = EvalModels {
            simulator: Arc::new(spar_rollout::simulator::ScriptedPatient),
            scorer: Arc::new(spar_rewards::ClinicalStageScorer::default()),
            scorer_id: "clinical".into(),
            facts: Some((Arc::new(MarkedClaims), Arc::new(ByWord))),
            judge: None,
        };
        let plan = EvalPlan {
            cases: cases.clone(),
            seen: None,
            consultation: ConsultationConfig::default(),
            healthbench: vec![],
            healthbench_cfg: Default::default(),
            setup: EvalSetup::default(),
        };
        let policy = EvalPolicy::scripted(
            "claims",
            Arc::new(ClaimPolicy {
                first: cases[0].id.clone(),
            }),
        );
        let report = run_eval(&policy, &plan, &models).unwrap();
        assert!(
            report
                .episodes
                .iter()
                .all(|e| e.end == spar_eval::consultation::EpisodeEnd::Done),
            "{:?}",
            report
                .episodes
                .iter()
                .map(|e| (e.end, &e.error))
                .collect::<Vec<_>>()
        );
        let h = report
            .consultation
            .as_ref()
            .unwrap()
            .hallucination
            .clone()
            .unwrap();
        // Pooled over the 6 verified claims (3 supported, 2 refuted, 1 uncertain): (2 + 0.5) / 6.
        assert_eq!(
            (h.counts.supported, h.counts.refuted, h.counts.uncertain),
            (3, 2, 1)
        );
        assert!((h.rate.unwrap() - 2.5 / 6.0).abs() < 1e-12, "{h:?}");
        // Per consultation: mean(0.3, 1.0).
        assert!((h.per_response_mean.unwrap() - 0.65).abs() < 1e-12, "{h:?}");
        assert_eq!(
            (h.extractor.as_str(), h.verifier.as_str()),
            ("marked", "by-word")
        );
        assert_eq!(
            report.episodes[1].fact_check_failures, 1,
            "a failed verification is counted, not labelled"
        );
        let flagged: Vec<&str> = report.episodes[0]
            .flagged_claims
            .iter()
            .map(|c| c.text.as_str())
            .collect();
        assert_eq!(flagged, ["garlic cures cancer", "vitamin c prevents colds"]);

        let dir = tempfile::tempdir().unwrap();
        let files = report.write(dir.path()).unwrap();
        let md = std::fs::read_to_string(&files.markdown).unwrap();
        assert!(
            md.contains("Hallucination rate H = 0.417 over 6 claims (3 supported, 2 refuted, 1 uncertain; Refuted weighs 1, Uncertain 0.5); mean per consultation 0.650"),
            "{md}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&files.json).unwrap()).unwrap();
        let rate = json["consultation"]["hallucination"]["rate"]
            .as_f64()
            .unwrap();
        assert!((rate - 2.5 / 6.0).abs() < 1e-12);
        assert!(
            (json["consultation"]["overall"]["hallucination"]
                .as_f64()
                .unwrap()
                - 2.5 / 6.0)
                .abs()
                < 1e-12
        );
        let back = EvalReport::read(dir.path()).unwrap();
        assert_eq!(back.consultation.unwrap().hallucination.unwrap(), h);
    }
}
