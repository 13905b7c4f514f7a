//! Playing the consultations: every case as whole episodes through `spar_rollout::Rollout`, the environment
//! training plays in. There is no second implementation of the protocol here: the simulator opens, the doctor
//! takes the history until `<ready/>`, the patient ends it, or the Inquiry turn limit; then each of DDX, Lab and
//! Diag opens with its stage instruction p_k and ends when `spar_core::grammar::completes` says so, or at its turn
//! limit; a final diagnosis given in any earlier stage ends the consultation (`grammar::ends_consultation`). A
//! reply cut at the token limit is scored as it stands and flagged.
use super::record::run_records;
use super::{ConsultationConfig, EpisodeRecord, EvalEnv};
use crate::policy::EvalPolicy;
use anyhow::Result;
use spar_core::Case;
use spar_core::recipe::RolloutSection;
use spar_core::traits::{PatientSimulator, RolloutBackend, StageScorer};
use spar_rollout::codec::TextCodec;
use spar_rollout::{Group, Policy, Rollout, SimulatorChoice};
use std::sync::Arc;

/// Run id of evaluation rollouts. It seeds every request (`group_id#sample`), so it is fixed: two evaluations of
/// the same weights on the same cases sample the same tokens.
pub const EVAL_RUN_ID: &str = "eval";

/// A played round: the rollout (its runtime runs the scoring that follows) and one group per case, in case order,
/// each with `samples` samples.
pub struct Played {
    pub rollout: Rollout,
    pub groups: Vec<Group>,
}

/// Plays `samples` whole consultations of every case (in one round; the built-in engine batches
/// `cfg.max_batch` of them) with `simulator` as the patient. `cfg` is the evaluation's `[rollout]` section
/// ([`ConsultationConfig::rollout_section`]); the episodes are recorded with `codec`. With `keep_policy_failures`
/// a failed generator call ends only its episode (`EndReason::PolicyFailed`); without it the round fails.
#[allow(clippy::too_many_arguments)]
pub fn play(
    policy: Policy<'_>,
    backend: Option<Arc<dyn RolloutBackend>>,
    cases: &[Case],
    cfg: RolloutSection,
    samples: usize,
    codec: Arc<dyn TextCodec>,
    scorer: Arc<dyn StageScorer>,
    simulator: Arc<dyn PatientSimulator>,
    keep_policy_failures: bool,
    progress: Option<indicatif::ProgressBar>,
) -> Result<Played> {
    let mut rollout = Rollout::new(
        cfg,
        cases.to_vec(),
        codec,
        scorer,
        SimulatorChoice::Fixed(simulator),
        EVAL_RUN_ID,
    )?
    .with_group_size(samples.max(1));
    if keep_policy_failures {
        rollout = rollout.keep_policy_failures();
    }
    if let Some(b) = backend {
        rollout = rollout.with_backend(b);
    }
    rollout.set_progress(progress.clone());
    let groups = rollout.collect_groups(policy, cases.len())?;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    Ok(Played { rollout, groups })
}

/// Plays `cfg.samples_per_case` consultations of every case and scores them: records in case order, then
/// `sample_idx` order. Failed episodes are kept, marked, and left out of the score means by
/// [`super::summarize`]. Call from a plain thread (not inside a tokio runtime): the built-in engine runs on this
/// thread while the episodes run on the rollout's runtime.
pub fn evaluate_consultations(
    policy: &EvalPolicy<'_>,
    cases: &[Case],
    env: &EvalEnv<'_>,
    cfg: &ConsultationConfig,
) -> Result<Vec<EpisodeRecord>> {
    let mut section = cfg.rollout_section();
    if policy.is_text() {
        // The episode records the policy's own text byte for byte: no tokenizer bounds its context (an endpoint
        // answers with its own limits), and the scripted expert's gold replies are never cut.
        section.max_seq_len = usize::MAX / 4;
        if matches!(policy.play(), Policy::Scripted(_)) {
            section.sampling.max_new_tokens = u32::MAX / 4;
        }
    }
    let played = play(
        policy.play(),
        policy.backend(),
        cases,
        section,
        cfg.samples_per_case,
        policy.stream_codec(),
        env.scorer.clone(),
        env.simulator.clone(),
        true,
        Some(crate::progress::bar(
            (cases.len() * cfg.samples_per_case.max(1)) as u64,
            "consultations",
        )),
    )?;
    played
        .rollout
        .block_on(run_records(&played.groups, cases, env, cfg))
}
