//! The held-out evaluation `spar train` runs: before training (the floor), for the scripted expert (the ceiling),
//! after SFT and after RL. Greedy (the recipe's `[eval]` temperature) whole consultations of the evaluation cases
//! with the evaluation patient (`[eval.simulator]`, scripted by default), one per case, played by [`crate::consultation::play`], the code `spar eval` plays
//! with; stage scores from the stage scorer, the final reward from the reward pipeline, transcripts as markdown.
//! With `[eval.sampled]` it also plays several sampled consultations a case after SFT and after RL: the expected
//! score of the policy RL trains, which moves smoothly with the weights where a greedy reply flips.
use crate::consultation::{ConsultationConfig, play};
use anyhow::{Context, Result};
use spar_core::recipe::{EvalSection, RolloutSection};
use spar_core::sample::Role;
use spar_core::traits::{PatientSimulator, RolloutBackend, StageScorer};
use spar_core::{Case, Stage};
use spar_rewards::RewardPipeline;
use spar_rollout::Policy;
use spar_rollout::codec::TextCodec;
use spar_rollout::env::stage_replies;
use std::path::Path;
use std::sync::Arc;

pub use spar_core::EvalSummary;

/// What the held-out evaluation plays and scores with. Any policy: the model at each phase
/// (`Policy::Builtin`), the rollout server holding it (`Policy::External`, through `backend`), or the scripted
/// expert (`Policy::Scripted`).
pub struct HeldOutEval<'a> {
    /// The evaluation cases (one consultation each).
    pub cases: &'a [Case],
    /// The protocol as trained: system prompt, stage instructions, turn limits, chat template, context.
    pub rollout: &'a RolloutSection,
    /// Sampling (`temperature`, `max_new_tokens`) and `concurrency`: consultations in the engine's batch. A
    /// batch's composition moves float sums and so near-tie argmaxes; concurrency 1 makes two evaluations of the
    /// same weights agree exactly (the recipe's choice between speed and a noise-free before / after comparison).
    pub eval: &'a EvalSection,
    pub codec: Arc<dyn TextCodec>,
    pub scorer: Arc<dyn StageScorer>,
    pub pipeline: &'a RewardPipeline,
    /// The runtime the reward pipeline was built in (its clients and caches live there).
    pub rt: &'a tokio::runtime::Runtime,
    /// Sampling seed of the consultations.
    pub seed: u64,
    /// Consultations a case: 1 for greedy decoding; more average a sampled policy's scores over its samples
    /// (each a consultation of its own in the summary's means).
    pub samples_per_case: usize,
    /// The evaluation patient (`[eval.simulator]`; the scripted patient by default).
    pub simulator: Arc<dyn PatientSimulator>,
    /// The token backend `Policy::External` plays through (the run's rollout server); None: no such policy.
    pub backend: Option<Arc<dyn RolloutBackend>>,
}

impl HeldOutEval<'_> {
    /// Evaluates `policy` and writes the transcripts to `OUT/transcripts/<name>.md` (atomically).
    pub fn run_and_write(&self, policy: Policy<'_>, out: &Path, name: &str) -> Result<EvalSummary> {
        let (summary, transcripts) = self.run(policy)?;
        spar_core::fsio::write_atomic(
            &out.join("transcripts").join(format!("{name}.md")),
            transcripts.as_bytes(),
        )?;
        Ok(summary)
    }

    /// Returns the summary and the transcripts (markdown). Call from a plain thread (not inside a tokio runtime).
    pub fn run(&self, policy: Policy<'_>) -> Result<(EvalSummary, String)> {
        let samples = self.samples_per_case.max(1);
        let mut consultation = ConsultationConfig::new(self.rollout, self.eval);
        consultation.samples_per_case = samples;
        consultation.seed = self.seed;
        let played = play(
            policy,
            self.backend.clone(),
            self.cases,
            consultation.rollout_section(),
            samples,
            self.codec.clone(),
            self.scorer.clone(),
            self.simulator.clone(),
            false,
            Some(crate::progress::bar(
                (self.cases.len() * samples) as u64,
                "eval",
            )),
        )?;
        let groups = &played.groups;
        let mut summary = EvalSummary {
            episodes: groups.iter().map(|g| g.samples.len()).sum(),
            ..Default::default()
        };
        let mut md = if samples == 1 {
            String::from("# Held-out consultations (greedy, scripted patient)\n\n")
        } else {
            format!(
                "# Held-out consultations ({samples} a case, temperature {}, scripted patient)\n\n",
                self.eval.temperature
            )
        };
        let (mut parsed, mut scored_stages) = (0usize, 0usize);
        let (mut hall, mut nclaims) = (0.0, 0usize);
        // Doctor steps, steps with any violation, and steps flagged per detector type (every detector the recipe
        // runs is reported, at 0 when it never fires, so rows of different evaluations line up).
        let (mut steps, mut violated) = (0usize, 0usize);
        let mut by_kind: std::collections::BTreeMap<String, usize> = self
            .pipeline
            .config()
            .spar
            .detectors
            .iter()
            .map(|k| (k.name().to_string(), 0))
            .collect();
        for g in groups {
            let case = self
                .cases
                .iter()
                .find(|c| c.id == g.case_id)
                .with_context(|| format!("unknown case {}", g.case_id))?;
            let scored = self
                .rt
                .block_on(self.pipeline.score_group(case, &g.samples));
            for (i, sample) in g.samples.iter().enumerate() {
                let sc = scored.get(i);
                let reward = sc.map(|s| s.reward).unwrap_or(0.0);
                summary.reward_mean += reward;
                for c in sc.map(|s| s.claims.as_slice()).unwrap_or(&[]) {
                    hall += c.label.hallucination_weight();
                    nclaims += 1;
                }
                for step in sc.map(|s| s.steps.as_slice()).unwrap_or(&[]) {
                    steps += 1;
                    violated += !step.violations.is_empty() as usize;
                    // A step counts once per type, however many times the type fired in it.
                    let kinds: std::collections::BTreeSet<&String> =
                        step.violations.iter().collect();
                    for k in kinds {
                        *by_kind.entry(k.clone()).or_default() += 1;
                    }
                }
                if samples == 1 {
                    md.push_str(&format!("## case {} (reward {reward:.3})\n\n", g.case_id));
                } else {
                    md.push_str(&format!(
                        "## case {}, sample {i} (reward {reward:.3})\n\n",
                        g.case_id
                    ));
                }
                for st in Stage::ALL {
                    let replies = stage_replies(&sample.turns, st);
                    let score = self.scorer.score(case, st, &replies, &sample.turns);
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
                for t in &sample.turns {
                    let who = match t.role {
                        Role::System => continue,
                        Role::User => "patient / instruction",
                        Role::Assistant => "doctor",
                    };
                    md.push_str(&format!("**{who}**: {}\n\n", t.text.replace('\n', " ")));
                }
            }
        }
        let n = summary.episodes.max(1) as f64;
        summary.reward_mean /= n;
        for v in &mut summary.stage_means {
            *v /= n;
        }
        summary.parsed_rate = parsed as f64 / scored_stages.max(1) as f64;
        summary.hallucination_rate = hall / nclaims.max(1) as f64;
        summary.claims_per_episode = nclaims as f64 / n;
        summary.violation_rate = violated as f64 / steps.max(1) as f64;
        summary.violation_rates = by_kind
            .into_iter()
            .map(|(k, c)| (k, c as f64 / steps.max(1) as f64))
            .collect();
        Ok((summary, md))
    }
}
