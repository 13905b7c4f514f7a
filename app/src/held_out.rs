//! The held-out evaluation `spar train` makes around its phases: greedy whole consultations on the evaluation
//! cases with the evaluation simulator; stage scores from the stage scorer, the final reward from the run's
//! reward pipeline. Any policy: the model at each phase, or the scripted expert (the ceiling).
use crate::builder::{Builder, whole_episodes};
use anyhow::{Context, Result};
use spar_core::recipe::{EvalSection, RolloutSection};
use spar_core::sample::Role;
use spar_core::{Case, Stage};
use spar_rewards::RewardPipeline;
use spar_rollout::codec::TextCodec;
use spar_rollout::{Policy, Rollout, SimulatorChoice};
use spar_trainer::parts::{EvalSummary, Evaluator};
use std::collections::HashMap;
use std::sync::Arc;

pub struct HeldOut {
    cases: Vec<Case>,
    by_id: HashMap<String, Case>,
    cfg: RolloutSection,
    codec: Arc<dyn TextCodec>,
    simulator: SimulatorChoice,
    pipeline: Arc<RewardPipeline>,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl HeldOut {
    pub fn new(
        builder: &Builder,
        cases: Vec<Case>,
        by_id: HashMap<String, Case>,
        codec: Arc<dyn TextCodec>,
        pipeline: Arc<RewardPipeline>,
        runtime: Arc<tokio::runtime::Runtime>,
    ) -> Result<HeldOut> {
        let eval: EvalSection = builder.recipe().eval.clone().unwrap_or_default();
        let mut cfg = whole_episodes(builder.rollout_section());
        // One greedy sample per case, `eval.concurrency` consultations in flight: a batch's composition moves
        // float sums and so near-tie argmaxes, and concurrency 1 makes two evaluations of the same weights agree
        // exactly (the recipe's choice between speed and a noise-free before/after comparison).
        cfg.max_batch = eval.concurrency.max(1);
        cfg.kv_slots = 0;
        cfg.sampling.temperature = eval.temperature;
        cfg.sampling.max_new_tokens = eval.max_new_tokens;
        cfg.seed = Some(builder.seed());
        Ok(HeldOut {
            cases,
            by_id,
            cfg,
            codec,
            simulator: builder.eval_simulator()?,
            pipeline,
            runtime,
        })
    }
}

fn bar(len: u64) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>6} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_prefix("eval");
    b
}

impl Evaluator for HeldOut {
    fn cases(&self) -> usize {
        self.cases.len()
    }

    fn evaluate(&self, policy: Policy<'_>) -> Result<(EvalSummary, String)> {
        let scorer = self.pipeline.stage_scorer();
        let mut ro = Rollout::new(
            self.cfg.clone(),
            self.cases.clone(),
            self.codec.clone(),
            scorer.clone(),
            self.simulator.clone(),
            "eval",
        )?
        .single_sample();
        let pb = bar(self.cases.len() as u64);
        ro.set_progress(Some(pb.clone()));
        let groups = ro.collect_groups(policy, self.cases.len())?;
        pb.finish();
        let mut summary = EvalSummary {
            episodes: groups.len(),
            ..Default::default()
        };
        let mut md = String::from("# Held-out consultations (greedy, scripted patient)\n\n");
        let (mut parsed, mut scored_stages) = (0usize, 0usize);
        let (mut hall, mut nclaims) = (0.0, 0usize);
        for g in &groups {
            let case = self
                .by_id
                .get(&g.case_id)
                .with_context(|| format!("unknown case {}", g.case_id))?;
            let s0 = &g.samples[0];
            let sc = self
                .runtime
                .block_on(self.pipeline.score_group(case, &g.samples));
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
