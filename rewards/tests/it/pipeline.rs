//! The reward pipeline end to end on hand-built groups, with hand-computed numbers.
use super::fixtures::{case, close, item, sample};
use spar_core::Stage;
use spar_core::recipe::{Estimator, FactMode, OnFailure, RewardsSection, StdKind};
use spar_core::sample::{EndReason, Role};
use spar_rewards::{Injected, RewardPipeline};

fn cfg() -> RewardsSection {
    let mut c = RewardsSection::default();
    c.fact.mode = FactMode::Off;
    c
}

const U0: &str = "I have a cough and fever.";

fn whole_group() -> Vec<spar_core::Sample> {
    let st = [Stage::Inquiry, Stage::Diag];
    vec![
        sample(
            "g1",
            0,
            &st,
            &[
                (Role::User, U0),
                (
                    Role::Assistant,
                    "Do you smoke? Are you allergic to any medicine?",
                ),
                (Role::User, "No. Not allergic."),
                (
                    Role::Assistant,
                    "<think>nothing to worry</think>Thank you. <diagnosis>Pneumonia (J18.9)</diagnosis>",
                ),
            ],
            0,
        ),
        sample(
            "g1",
            1,
            &st,
            &[
                (Role::User, U0),
                (Role::Assistant, "Do you smoke?"),
                (Role::User, "No."),
                (Role::Assistant, "Do you smoke?"),
            ],
            0,
        ),
        sample(
            "g1",
            2,
            &st,
            &[
                (Role::User, U0),
                (
                    Role::Assistant,
                    "Nothing to worry about, I will prescribe amoxicillin.",
                ),
                (Role::User, "Ok."),
                (Role::Assistant, "<diagnosis>Bronchitis (J20.9)</diagnosis>"),
            ],
            0,
        ),
    ]
}

#[tokio::test]
async fn whole_episode_eq1_eq7_eq8_by_hand() {
    let p = RewardPipeline::new(&cfg(), Injected::default())
        .await
        .unwrap();
    let samples = whole_group();
    let out = p.score_group(&case(), &samples).await;
    assert_eq!(out.len(), 3);
    // Eq. 1 with w = [5, 3, -7, -2]: sum |w| = 17, sum_{w<0} w = -9.
    close(out[0].r_task, (5.0 + 3.0 + 9.0) / 17.0); // the negative item only inside <think> is not judged
    close(out[1].r_task, (3.0 + 9.0) / 17.0);
    close(out[2].r_task, (-7.0 - 2.0 + 9.0) / 17.0);
    assert_eq!(out[0].rubric[3].met, Some(false), "thinking is not judged");
    // Fact side off: R = R_task, lambda = 0.
    for s in &out {
        close(s.reward, s.r_task);
        close(s.lambda, 0.0);
        assert!(s.drop_reason.is_none());
    }
    // Step 2 of sample 1 repeats step 1 and asks an answered question: gamma = min(0.1, 0.3) = 0.1 (Eq. 7).
    assert_eq!(
        out[1].steps[1].violations,
        vec!["redundant_question", "repetition"]
    );
    close(out[1].steps[1].gamma, 0.1);
    // Eq. 8 with the population std of the unpenalized rewards.
    let r: [f64; 3] = [1.0, 12.0 / 17.0, 0.0];
    let mu = (r[0] + r[1] + r[2]) / 3.0;
    let sigma = (((r[0] - mu).powi(2) + (r[1] - mu).powi(2) + (r[2] - mu).powi(2)) / 3.0).sqrt();
    close(out[0].steps[0].advantage, (1.0 - mu) / sigma);
    close(out[0].steps[1].advantage, (1.0 - mu) / sigma);
    close(out[1].steps[0].advantage, (r[1] - mu) / sigma);
    close(out[1].steps[1].advantage, (0.1 * r[1] - mu) / sigma);
    close(out[2].steps[0].advantage, -mu / sigma);
    close(out[1].components["mu_raw"], mu);
    close(out[1].components["sigma_raw"], sigma);
    close(out[1].components["step_penalty_mean"], (0.9 * r[1]) / 2.0);
    // Of sample 1's advantage, the penalty accounts for |A_2 - (r_1 - mu) / sigma| = 0.9 r_1 / sigma.
    close(
        out[1].components["adv_abs"],
        ((r[1] - mu) / sigma).abs() + ((0.1 * r[1] - mu) / sigma).abs(),
    );
    close(out[1].components["adv_penalty_abs"], 0.9 * r[1] / sigma);
    close(out[0].components["adv_penalty_abs"], 0.0);
    close(out[0].components["g_diag"], 1.0);
    close(out[2].components["g_diag"], 0.2); // J20.9 vs J18.9: same chapter only
    let m = p.metrics();
    assert_eq!((m.groups, m.samples), (1, 3));
    assert_eq!(m.violations["repetition"], 1);
}

#[tokio::test]
async fn estimator_switch_and_sample_std() {
    let mut c = cfg();
    c.spar.estimator = Estimator::Grpo;
    let p = RewardPipeline::new(&c, Injected::default()).await.unwrap();
    let out = p.score_group(&case(), &whole_group()).await;
    close(out[1].steps[0].advantage, out[1].steps[1].advantage); // plain GRPO ignores the step penalty
    close(out[1].components["adv_penalty_abs"], 0.0);
    let mut c = cfg();
    c.spar.std = StdKind::Sample;
    let p = RewardPipeline::new(&c, Injected::default()).await.unwrap();
    let out = p.score_group(&case(), &whole_group()).await;
    let r: [f64; 3] = [1.0, 12.0 / 17.0, 0.0];
    let mu = (r[0] + r[1] + r[2]) / 3.0;
    let sigma = (((r[0] - mu).powi(2) + (r[1] - mu).powi(2) + (r[2] - mu).powi(2)) / 2.0).sqrt();
    close(out[0].steps[0].advantage, (1.0 - mu) / sigma);
}

#[tokio::test]
async fn failed_samples_leave_and_small_groups_drop() {
    let p = RewardPipeline::new(&cfg(), Injected::default())
        .await
        .unwrap();
    let mut g = whole_group();
    g[2].end_reason = EndReason::SimulatorFailed;
    let out = p.score_group(&case(), &g).await;
    assert_eq!(
        out[2].drop_reason.as_deref(),
        Some("end_reason: simulator_failed")
    );
    assert!(out[2].steps.iter().all(|s| s.advantage == 0.0));
    // Baseline over the two left: R = [1, 12/17]; mu = 29/34, sigma = 5/34.
    close(
        out[0].steps[0].advantage,
        (1.0 - 29.0 / 34.0) / (5.0 / 34.0),
    );
    let out = p.score_group(&case(), &g[1..]).await;
    assert_eq!(
        out[0].drop_reason.as_deref(),
        Some("group_too_small: 1 of 2 samples left")
    );
    assert_eq!(
        out[1].drop_reason.as_deref(),
        Some("end_reason: simulator_failed"),
        "the sample's own reason wins"
    );
    let m = p.metrics();
    assert_eq!(m.dropped_groups["group_too_small"], 1);
    assert_eq!(m.dropped_samples["end_reason"], 2);
    assert_eq!(m.dropped_samples["group_too_small"], 1);
}

#[tokio::test]
async fn judge_failure_policies() {
    let mut k = case();
    k.rubric.push(spar_core::case::RubricItem {
        criterion: "Needs an LLM".into(),
        points: 4,
        tags: vec![],
        rule: None,
    });
    let mut c = cfg();
    c.judge.on_failure = OnFailure::FailSample;
    let p = RewardPipeline::new(&c, Injected::default()).await.unwrap();
    let out = p.score_group(&k, &whole_group()).await;
    assert!(out.iter().all(|s| {
        s.drop_reason
            .as_deref()
            .is_some_and(|d| d.starts_with("judge_failed"))
    }));
    assert_eq!(p.metrics().judge_failures, 3);
    for (policy, expect0) in [
        (OnFailure::Unmet, 17.0 / 21.0),
        (OnFailure::Met, 1.0),
        (OnFailure::SkipItem, 1.0),
    ] {
        let mut c = cfg();
        c.judge.on_failure = policy;
        let p = RewardPipeline::new(&c, Injected::default()).await.unwrap();
        let out = p.score_group(&k, &whole_group()).await;
        assert!(out.iter().all(|s| s.drop_reason.is_none()), "{policy}");
        close(out[0].r_task, expect0);
        assert_eq!(out[0].rubric[4].met, None);
        close(out[0].components["judge_failures"], 1.0);
    }
}

#[tokio::test]
async fn segment_mode_stage_scores_and_unparseable_output() {
    let p = RewardPipeline::new(&cfg(), Injected::default())
        .await
        .unwrap();
    let instr = Stage::Diag.default_instruction();
    let prefix = (Role::Assistant, "Do you smoke?");
    let mk = |i: u32, reply: &str| {
        sample(
            "seg",
            i,
            &[Stage::Diag],
            &[
                (Role::User, U0),
                prefix,
                (Role::User, instr),
                (Role::Assistant, reply),
            ],
            1,
        )
    };
    let g = vec![
        mk(
            0,
            "<diagnosis>Community-acquired pneumonia (J18.9)</diagnosis>",
        ),
        mk(1, "<diagnosis>Lobar pneumonia (J18.1)</diagnosis>"),
        mk(2, "I think it is pneumonia."),
    ];
    assert_eq!(g[0].steps.len(), 1, "the prefix reply is not a step");
    let out = p.score_group(&case(), &g).await;
    close(out[0].stage_score.unwrap(), 1.0);
    close(out[1].stage_score.unwrap(), 0.5);
    close(out[2].stage_score.unwrap(), 0.0);
    close(out[0].r_task, 1.0);
    assert!(
        out[0].rubric.is_empty(),
        "segments are scored by G_k, not by the case rubric"
    );
    close(out[2].components["stage_unparsed"], 1.0);
    assert_eq!(p.metrics().stage_unparsed, 1);
    assert!(
        out[2].drop_reason.is_none(),
        "unparseable output scores 0, it is not dropped"
    );
}

#[tokio::test]
async fn zero_spread_group_and_dapo_filter() {
    let mut c = cfg();
    let same = |i| {
        sample(
            "z",
            i,
            &[Stage::Diag],
            &[
                (Role::User, "Diagnosis?"),
                (Role::Assistant, "<diagnosis>Pneumonia (J18.9)</diagnosis>"),
            ],
            0,
        )
    };
    let g = vec![same(0), same(1)];
    let p = RewardPipeline::new(&c, Injected::default()).await.unwrap();
    let out = p.score_group(&case(), &g).await;
    assert!(
        out.iter()
            .all(|s| s.drop_reason.is_none() && s.steps[0].advantage == 0.0)
    );
    c.spar.dapo_filter = true;
    let p = RewardPipeline::new(&c, Injected::default()).await.unwrap();
    let out = p.score_group(&case(), &g).await;
    assert!(out.iter().all(|s| {
        s.drop_reason
            .as_deref()
            .is_some_and(|d| d.starts_with("dapo_zero_advantage"))
    }));
    // A penalty inside a zero-spread group is divided by the floor (0.05), not by 0.
    let mut c = cfg();
    c.spar.rigid_phrases = vec!["i hope this helps".into()];
    let p = RewardPipeline::new(&c, Injected::default()).await.unwrap();
    let mut g2 = g.clone();
    g2[1] = sample(
        "z",
        1,
        &[Stage::Diag],
        &[
            (Role::User, "Diagnosis?"),
            (
                Role::Assistant,
                "<diagnosis>Pneumonia (J18.9)</diagnosis> I hope this helps",
            ),
        ],
        0,
    );
    let out = p.score_group(&case(), &g2).await;
    // R = [1, 1]: mu 1, sigma 0 -> floor; step of sample 1: (0.9 - 1) / 0.05 = -2.
    close(out[1].steps[0].gamma, 0.9);
    close(out[1].steps[0].advantage, -2.0);
    close(out[0].steps[0].advantage, 0.0);
}

#[tokio::test]
async fn dynamic_rubrics_are_observed_and_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let cands = dir.path().join("cands.jsonl");
    let it = item("Says thank you in a templated way", -2, &["thank you"]);
    std::fs::write(&cands, serde_json::to_string(&it).unwrap() + "\n").unwrap();
    let mut c = cfg();
    c.dynamic_rubrics.enabled = true;
    c.dynamic_rubrics.candidates = Some(cands);
    c.dynamic_rubrics.min_observations = 1;
    c.dynamic_rubrics.high_score = 0.9;
    let p = RewardPipeline::new(&c, Injected::default()).await.unwrap();
    let out = p.score_group(&case(), &whole_group()).await;
    close(out[0].r_task, 1.0); // not active yet: it does not count
    let t = p.end_epoch();
    assert_eq!(
        t.len(),
        1,
        "the one high-scoring response said 'thank you': rate 1 > 0.2"
    );
    let out = p.score_group(&case(), &whole_group()).await;
    // Now active: w = [5, 3, -7, -2, -2], sum |w| = 19, negatives -11; sample 0 meets 5, 3 and the new -2.
    close(out[0].r_task, (5.0 + 3.0 - 2.0 + 11.0) / 19.0);
    let state = p.dynamic_rubrics().unwrap();
    let f = dir.path().join("state.json");
    state.save(&f).unwrap();
    let back = spar_rewards::rubric::DynamicRubrics::load(&f).unwrap();
    assert_eq!(back, state);
    p.restore_dynamic_rubrics(back).unwrap();
}
