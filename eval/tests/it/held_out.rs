//! `spar_eval::HeldOutEval` reproduces the held-out evaluation `spar train` ran before it moved into spar-eval:
//! the same summary numbers, bit for bit, and the same transcript text, for the scripted expert and for a tiny
//! random-init model on shipped cases. The reference below is `HeldOut::run` + `whole_episodes_once` of
//! `trainer/src/run.rs` (commit 037472a), copied verbatim apart from taking its inputs as arguments.
use anyhow::{Context, Result};
use spar_core::recipe::{EvalSection, RolloutSection};
use spar_core::sample::Role;
use spar_core::traits::StageScorer;
use spar_core::{Case, Stage};
use spar_data::splits::Split;
use spar_eval::{EvalSummary, HeldOutEval};
use spar_model::{Qwen3Config, Qwen3Model};
use spar_rewards::RewardPipeline;
use spar_rollout::codec::TextCodec;
use spar_rollout::env::ExpertDoctor;
use spar_rollout::testing::CharCodec;
use spar_rollout::{Policy, Rollout, SimulatorChoice};
use std::collections::HashMap;
use std::sync::Arc;

/// `trainer/src/run.rs::whole_episodes_once`.
fn whole_episodes_once(
    mut cfg: RolloutSection,
    cases: &[Case],
    codec: Arc<dyn TextCodec>,
    scorer: Arc<dyn StageScorer>,
    run_id: &str,
) -> Result<Rollout> {
    cfg.segmented = false;
    cfg.interruption_rate = 0.0;
    Ok(Rollout::new(
        cfg,
        cases.to_vec(),
        codec,
        scorer,
        SimulatorChoice::Fixed(Arc::new(
            spar_rollout::simulator::scripted::ScriptedPatient::new(),
        )),
        run_id,
    )?
    .single_sample())
}

/// The inputs of the trainer's `HeldOut`.
struct Reference<'a> {
    cases: &'a [Case],
    rollout_sec: &'a RolloutSection,
    eval_sec: &'a EvalSection,
    codec: Arc<dyn TextCodec>,
    scorer: Arc<dyn StageScorer>,
    pipeline: &'a RewardPipeline,
    rt: &'a tokio::runtime::Runtime,
    by_id: &'a HashMap<String, Case>,
    seed: u64,
}

impl Reference<'_> {
    /// `trainer/src/run.rs::HeldOut::run` (the progress bar left out).
    fn run(&self, policy: Policy<'_>) -> Result<(EvalSummary, String)> {
        let Reference {
            cases,
            rollout_sec,
            eval_sec,
            codec,
            scorer,
            pipeline,
            rt,
            by_id,
            seed,
        } = self;
        let (codec, scorer, seed) = (codec.clone(), scorer.clone(), *seed);
        let mut cfg = (*rollout_sec).clone();
        cfg.max_batch = eval_sec.concurrency.max(1);
        cfg.kv_slots = 0;
        cfg.sampling.temperature = eval_sec.temperature;
        cfg.sampling.max_new_tokens = eval_sec.max_new_tokens;
        cfg.seed = Some(seed);
        let mut ro = whole_episodes_once(cfg, cases, codec, scorer.clone(), "eval")?;
        let groups = ro.collect_groups(policy, cases.len())?;
        let mut summary = EvalSummary {
            episodes: groups.len(),
            ..Default::default()
        };
        let mut md = String::from("# Held-out consultations (greedy, scripted patient)\n\n");
        let (mut parsed, mut scored_stages) = (0usize, 0usize);
        let (mut hall, mut nclaims) = (0.0, 0usize);
        for g in &groups {
            let case = by_id
                .get(&g.case_id)
                .with_context(|| format!("unknown case {}", g.case_id))?;
            let s0 = &g.samples[0];
            let sc = rt.block_on(pipeline.score_group(case, &g.samples));
            let reward = sc.first().map(|s| s.reward).unwrap_or(0.0);
            summary.reward_mean += reward;
            for c in sc.first().map(|s| s.claims.as_slice()).unwrap_or(&[]) {
                hall += c.label.hallucination_weight();
                nclaims += 1;
            }
            md.push_str(&format!("## case {} (reward {reward:.3})\n\n", g.case_id));
            for st in Stage::ALL {
                let replies = spar_rollout::env::stage_replies(&s0.turns, st);
                let score = scorer.score(case, st, &replies, &s0.turns);
                summary.stage_means[st.index()] += score.score;
                parsed += score.parsed as usize;
                scored_stages += 1;
                md.push_str(&format!(
                    "- {}: {:.3}{}\n",
                    st.name(),
                    score.score,
                    if score.parsed { "" } else { " (unparsed)" }
                ));
            }
            md.push('\n');
            for t in &s0.turns {
                let who = match t.role {
                    Role::System => continue,
                    Role::User => "patient / instruction",
                    Role::Assistant => "doctor",
                };
                md.push_str(&format!("**{who}**: {}\n\n", t.text.replace('\n', " ")));
            }
        }
        let n = groups.len().max(1) as f64;
        summary.reward_mean /= n;
        for v in &mut summary.stage_means {
            *v /= n;
        }
        summary.parsed_rate = parsed as f64 / scored_stages.max(1) as f64;
        summary.hallucination_rate = hall / nclaims.max(1) as f64;
        Ok((summary, md))
    }
}

/// A tiny random-init Qwen3 over the byte-level test codec.
fn tiny_model() -> Qwen3Model {
    let vocab = CharCodec::vocab_size();
    let json = format!(
        r#"{{"model_type":"qwen3","vocab_size":{vocab},"hidden_size":32,"intermediate_size":64,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,"max_position_embeddings":4096}}"#
    );
    let c = Qwen3Config::from_json_str(&json, "test").unwrap();
    Qwen3Model::random(c, tch::Device::Cpu, tch::Kind::Float, 5).unwrap()
}

/// The first `n` shipped validation cases, a runtime and the default reward pipeline (in-memory claim cache).
fn validation_cases_and_pipeline(n: usize) -> (Vec<Case>, tokio::runtime::Runtime, RewardPipeline) {
    let dir = spar_data::shipped::cases_dir().unwrap();
    let cases: Vec<Case> = spar_data::load_split(&dir, None, Split::Validation)
        .unwrap()
        .into_iter()
        .take(n)
        .collect();
    assert_eq!(cases.len(), n);
    let (rt, pipeline) = super::common::runtime_and_pipeline();
    (cases, rt, pipeline)
}

fn same(a: &EvalSummary, b: &EvalSummary) {
    assert_eq!(a.episodes, b.episodes);
    // Bit for bit: the same floats summed in the same order.
    assert_eq!(
        a.reward_mean.to_bits(),
        b.reward_mean.to_bits(),
        "{a:?} {b:?}"
    );
    for (x, y) in a.stage_means.iter().zip(&b.stage_means) {
        assert_eq!(x.to_bits(), y.to_bits(), "{a:?} {b:?}");
    }
    assert_eq!(a.parsed_rate.to_bits(), b.parsed_rate.to_bits());
    assert_eq!(
        a.hallucination_rate.to_bits(),
        b.hallucination_rate.to_bits()
    );
}

#[test]
fn held_out_matches_the_trainers_evaluation_for_the_expert_and_a_tiny_model() {
    let (cases, rt, pipeline) = validation_cases_and_pipeline(3);
    let by_id: HashMap<String, Case> = cases.iter().map(|c| (c.id.clone(), c.clone())).collect();
    let scorer = pipeline.stage_scorer();
    let codec: Arc<dyn TextCodec> = Arc::new(CharCodec);
    let model = tiny_model();
    // (policy, rollout, eval): the expert with room for its gold replies; the tiny model with short turns so the
    // test stays quick, two consultations in the engine's batch.
    let expert_rollout = RolloutSection {
        turn_limits: [6, 2, 2, 2],
        ..Default::default()
    };
    let expert_eval = EvalSection {
        max_new_tokens: 1024,
        concurrency: 3,
        ..Default::default()
    };
    let model_rollout = RolloutSection {
        turn_limits: [3, 1, 1, 1],
        max_seq_len: 1024,
        ..Default::default()
    };
    let model_eval = EvalSection {
        max_new_tokens: 12,
        concurrency: 2,
        ..Default::default()
    };
    let runs: [(Policy<'_>, &RolloutSection, &EvalSection); 2] = [
        (
            Policy::Scripted(Arc::new(ExpertDoctor::with_inquiry_turns(6))),
            &expert_rollout,
            &expert_eval,
        ),
        (Policy::Builtin(&model), &model_rollout, &model_eval),
    ];
    for (i, (policy, rollout, eval)) in runs.into_iter().enumerate() {
        let seed = 7;
        let reference = Reference {
            cases: &cases,
            rollout_sec: rollout,
            eval_sec: eval,
            codec: codec.clone(),
            scorer: scorer.clone(),
            pipeline: &pipeline,
            rt: &rt,
            by_id: &by_id,
            seed,
        };
        let held_out = HeldOutEval {
            cases: &cases,
            rollout,
            eval,
            codec: codec.clone(),
            scorer: scorer.clone(),
            pipeline: &pipeline,
            rt: &rt,
            seed,
            samples_per_case: 1,
            simulator: Arc::new(spar_rollout::simulator::ScriptedPatient),
            backend: None,
        };
        let (want, want_md) = reference.run(policy.clone()).unwrap();
        let (got, got_md) = held_out.run(policy).unwrap();
        same(&got, &want);
        assert_eq!(got_md, want_md, "run {i}");
        assert_eq!(got.episodes, 3);
        if i == 0 {
            // The expert is the ceiling: every stage output parses, the diagnosis is right.
            assert_eq!(got.parsed_rate, 1.0, "{got:?}");
            assert_eq!(got.stage_means[Stage::Diag.index()], 1.0, "{got:?}");
        } else {
            assert!(
                got.parsed_rate < 0.5,
                "a random model follows no grammar: {got:?}"
            );
        }
        // The file form too.
        let out = tempfile::tempdir().unwrap();
        let again = held_out
            .run_and_write(
                match i {
                    0 => Policy::Scripted(Arc::new(ExpertDoctor::with_inquiry_turns(6))),
                    _ => Policy::Builtin(&model),
                },
                out.path(),
                "x",
            )
            .unwrap();
        same(&again, &want);
        let written = std::fs::read_to_string(out.path().join("transcripts/x.md")).unwrap();
        assert_eq!(written, want_md);
    }
}

/// Several consultations a case (`[eval.sampled]`): every sample is an episode of the summary's means. The
/// scripted expert plays the same consultation each time, so three a case average to its one-a-case scores;
/// a tiny model sampled at T = 1 plays each sample apart and the transcripts name every one.
#[test]
fn sampled_held_out_averages_every_sample_of_every_case() {
    let (cases, rt, pipeline) = validation_cases_and_pipeline(2);
    let codec: Arc<dyn TextCodec> = Arc::new(CharCodec);
    let expert_rollout = RolloutSection {
        turn_limits: [6, 2, 2, 2],
        ..Default::default()
    };
    let expert_eval = EvalSection {
        max_new_tokens: 1024,
        concurrency: 3,
        ..Default::default()
    };
    let held_out = |rollout, eval, samples_per_case| HeldOutEval {
        cases: &cases,
        rollout,
        eval,
        codec: codec.clone(),
        scorer: pipeline.stage_scorer(),
        pipeline: &pipeline,
        rt: &rt,
        seed: 11,
        samples_per_case,
        simulator: Arc::new(spar_rollout::simulator::ScriptedPatient),
        backend: None,
    };
    let expert = || Policy::Scripted(Arc::new(ExpertDoctor::with_inquiry_turns(6)));
    let (one, _) = held_out(&expert_rollout, &expert_eval, 1)
        .run(expert())
        .unwrap();
    let (three, md) = held_out(&expert_rollout, &expert_eval, 3)
        .run(expert())
        .unwrap();
    assert_eq!((one.episodes, three.episodes), (2, 6));
    assert!(
        (one.reward_mean - three.reward_mean).abs() < 1e-12,
        "{one:?} {three:?}"
    );
    for (a, b) in one.stage_means.iter().zip(&three.stage_means) {
        assert!((a - b).abs() < 1e-12, "{one:?} {three:?}");
    }
    assert!((one.hallucination_rate - three.hallucination_rate).abs() < 1e-12);
    assert!((one.claims_per_episode - three.claims_per_episode).abs() < 1e-12);
    assert!(
        md.starts_with("# Held-out consultations (3 a case, temperature 0,"),
        "{md}"
    );

    let model = tiny_model();
    let model_rollout = RolloutSection {
        turn_limits: [2, 1, 1, 1],
        max_seq_len: 1024,
        ..Default::default()
    };
    let sampled_eval = EvalSection {
        max_new_tokens: 8,
        concurrency: 4,
        temperature: 1.0,
        ..Default::default()
    };
    let (s, md) = held_out(&model_rollout, &sampled_eval, 3)
        .run(Policy::Builtin(&model))
        .unwrap();
    assert_eq!(s.episodes, 6);
    for c in &cases {
        for i in 0..3 {
            let head = format!("## case {}, sample {i} (reward", c.id);
            assert!(md.contains(&head), "no {head}");
        }
    }
    // Sampled at T = 1, a random model's replies differ between samples: the doctor's lines are not all one.
    let doctor: std::collections::BTreeSet<&str> =
        md.lines().filter(|l| l.starts_with("**doctor**")).collect();
    assert!(doctor.len() > 2, "{doctor:?}");
}
