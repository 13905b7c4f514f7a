//! `[trainer]`: losses, optimizer, schedule, checkpoints. Owner: trainer.
use super::check;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

recipe_enum! {
    /// The training objective.
    pub enum PolicyLoss {
        /// SPAR: clipped objective with one importance ratio per step (segment) z_j.
        SegmentGspo = "segment_gspo",
        /// GSPO: one importance ratio per sequence.
        Gspo = "gspo",
        /// PPO: token-level clipped ratio.
        Ppo = "ppo",
        /// Supervised fine-tuning only (`sft_steps` on scripted expert consultations, no RL).
        Sft = "sft",
        /// Offline distillation from teachers with Clip-Forward-KL (`[trainer.distill]`).
        Distill = "distill",
    }
}

recipe_enum! {
    /// How per-token losses become one scalar (verl's four modes).
    pub enum LossAgg {
        /// Sum over every unmasked token of the mini-batch / number of such tokens.
        TokenMean = "token-mean",
        /// Mean over sequences of the per-sequence token sum.
        SeqMeanTokenSum = "seq-mean-token-sum",
        /// Mean over sequences of the per-sequence token mean.
        SeqMeanTokenMean = "seq-mean-token-mean",
        /// Mean over sequences of (token sum / `l_max`), `l_max` a constant (Dr. GRPO, Baichuan-M2).
        SeqMeanTokenSumNorm = "seq-mean-token-sum-norm",
    }
}

recipe_enum! {
    /// Estimator of KL(pi || pi_ref) from samples of pi (Schulman's k1, k2, k3).
    pub enum KlEstimator {
        /// log(pi / pi_ref): unbiased, can be negative.
        K1 = "k1",
        /// (log(pi / pi_ref))^2 / 2: biased, low variance.
        K2 = "k2",
        /// r - 1 - log r with r = pi_ref / pi: unbiased and always >= 0.
        K3 = "k3",
    }
}

recipe_enum! {
    /// Learning-rate decay after the linear warmup.
    pub enum LrDecay {
        /// The base rate throughout.
        Constant = "constant",
        /// Cosine decay to 0 at `steps`.
        Cosine = "cosine",
    }
}

recipe_enum! {
    /// How AdamW keeps its state for bf16 weights.
    pub enum OptimizerState {
        /// fp32 master weights and fp32 moments: 12 bytes a parameter.
        Fp32 = "fp32",
        /// A bf16 compensation of each weight's rounding instead of an fp32 master, a bf16 first moment and an
        /// fp32 second moment: 8 bytes a parameter (`trainer/src/adamw.rs`).
        Compact = "compact",
        /// The compact state in fewer bits: an int8 compensation (1/256ths of the weight's bf16 ulp), a bf16
        /// first moment, the second moment in 24 bits: 6 bytes a parameter, 10 in all with the bf16 weight and
        /// gradient.
        Packed = "packed",
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerSection {
    /// The training objective.
    pub policy_loss: PolicyLoss,
    pub eps_low: f64,
    pub eps_high: f64,
    /// Dual-clip constant c (> 1), 0 = off.
    pub dual_clip: f64,
    /// How per-token losses become one scalar.
    pub loss_agg: LossAgg,
    /// l_max of seq-mean-token-sum-norm.
    pub l_max: usize,
    /// Weight of the KL to the reference policy (`[model] reference`, else the policy entering RL); 0 = off.
    pub kl_coef: f64,
    /// KL estimator of the reference penalty.
    pub kl_estimator: KlEstimator,
    /// The KL joins each token's reward (GAE's token rewards, else the token's advantage) instead of the loss.
    pub kl_in_reward: bool,
    pub entropy_coef: f64,
    /// Truncated importance sampling cap C for the rollout/train mismatch (0 = off).
    pub tis_cap: f64,
    /// Use the rollout's expert choices in the training forward (MoE routing replay).
    pub routing_replay: bool,
    pub lr: f64,
    pub weight_decay: f64,
    pub betas: [f64; 2],
    pub warmup_steps: usize,
    /// Learning-rate decay after warmup.
    pub schedule: LrDecay,
    pub grad_clip: f64,
    pub steps: usize,
    pub micro_batch: usize,
    /// Token budget per micro-batch for dynamic batching (0 = by count).
    pub token_budget: usize,
    /// PPO epochs over each rollout batch.
    pub ppo_epochs: usize,
    /// Measure KL(pi_old || pi_new) after each RL update (`rl/kl_old_new`): one more no-grad forward over the
    /// round's batch.
    pub update_kl: bool,
    pub bf16: bool,
    /// Skip a step with a non-finite loss or gradient; stop after this many in a row.
    pub max_bad_steps: usize,
    pub out_dir: PathBuf,
    pub save_every: usize,
    pub keep_last: usize,
    pub log_every: usize,
    /// One-step off-policy: round t+1's rollout is generated with the weights of round t, before round t's
    /// update lands (staleness 1, samples stamped with that policy version); pi_old is recomputed by the
    /// trainer and the engine's log-probs drive the truncated-IS mismatch correction.
    pub off_policy_one_step: bool,
    /// SFT steps on scripted expert consultations before RL (the demo pipeline).
    pub sft_steps: usize,
    pub sft_lr: f64,
    /// Evaluate on held-out cases every N steps (0 = only at start and end).
    pub eval_every: usize,
    /// Transcripts per SFT step.
    pub sft_batch: usize,
    /// Share of the training cases SFT sees (per diagnosis, in file order; at least one case each). RL plays
    /// all of them: below 1, RL meets patients the SFT model never memorised, so its reward has room to move
    /// (with 1, a small SFT model recites its training cases and RL on them only overfits).
    pub sft_fraction: f64,
    /// Train a byte-level BPE of this size on the case text (tiny CPU demo; 0 = the model's own tokenizer).
    pub bpe_vocab_size: usize,
    /// Pack several samples into one row (block-diagonal attention) instead of padding.
    pub pack_sequences: bool,
    /// MoE load-balancing loss coefficient (None: the model config's `router_aux_loss_coef`).
    pub aux_loss_coef: Option<f64>,
    /// The load-balancing loss coefficient of RL updates only (None: `aux_loss_coef`'s). An RL-only key, so an
    /// ablation arm can turn the balance loss off in RL while sharing one SFT checkpoint.
    pub rl_aux_loss_coef: Option<f64>,
    /// Park the optimizer state (Adam moments, fp32 masters; this rank's chunks when sharded) in host
    /// memory while each RL round is played, and bring it back for the update (verl's `optimizer_offload`):
    /// the GPU then holds only the weights and the engine's KV cache during rollout. Costs two host-link
    /// copies of the state per round; no effect on a CPU model. Does not change the results.
    pub offload_optimizer: bool,
    /// AdamW's state for bf16 weights: fp32 masters and moments, or compact (bf16 compensation and first
    /// moment). Plain learners only: a sharded learner's masters are fp32 chunks already.
    pub optimizer_state: OptimizerState,
    /// Record the supervised micro-step (forward, loss, backward of one micro-batch shape) as a CUDA graph and
    /// replay it (PyTorch's `make_graphed_callables` for the whole step): on a GPU the eager step of a small
    /// model is bound by the host's op dispatch. Dense models on one process only; MoE and distributed
    /// learners stay eager. Off by default.
    pub learner_cuda_graphs: bool,
    /// Teachers of the distillation stages (`[trainer.distill]`): offline Clip-Forward-KL when
    /// `policy_loss = "distill"`, on-policy reverse KL added to the RL advantages otherwise.
    pub distill: DistillConfig,
    /// Critic and GAE knobs (`[trainer.gae]`), used when `rewards.spar.estimator = "gae"`.
    pub gae: GaeConfig,
    /// The teacher SFT imitates (`[trainer.sft_expert]`): the full scripted expert unless `partial = true`.
    pub sft_expert: SftExpertConfig,
    /// Placebo control: each round's step advantages are shuffled across the batch's steps before the update, so
    /// the update keeps its size and its advantage distribution but loses what made a step good. An RL run that
    /// beats its placebo learned from the reward, not from the extra updates.
    pub placebo: bool,
    /// The torch profiler over chosen RL rounds (`[trainer.profile]`; off by default).
    pub profile: ProfileConfig,
}

/// `[trainer.profile]`: record chosen RL rounds with the torch profiler (Kineto), as torchtitan's `[profiling]`
/// does for its steps. Each recorded round writes, under `<out_dir>/profile/`, `rl-round-NNNN-rankR.md` (where
/// the time went: spar's phases with the GPU time launched inside each, host ops by self time, GPU kernels,
/// CUDA runtime calls such as `cudaMalloc` and synchronisations) and, with `trace`, the Chrome trace
/// `rl-round-NNNN-rankR.trace.json.gz` (Perfetto, chrome://tracing). Recording slows the round it records;
/// the others run at full speed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileConfig {
    /// RL rounds to record, 1-based (the round numbers of the progress bar); empty = off. Round 1 includes the
    /// engine's first CUDA-graph captures: pick a later round for the steady state.
    pub rounds: Vec<usize>,
    /// Keep the Chrome trace next to the summary (it can be hundreds of MB before compression).
    pub trace: bool,
    /// Record each op's input shapes (torch's `record_shapes`).
    pub record_shapes: bool,
    /// Record the caching allocator's allocations and frees (torch's `profile_memory`).
    pub memory: bool,
    /// Record each op's C++ call stack (torch's `with_stack`).
    pub with_stack: bool,
}

/// `[trainer.sft_expert]`: a good but imperfect SFT teacher, so that RL has behaviour to find that SFT never
/// showed. Off by default (the full scripted expert). Every choice is drawn per case from the recipe seed and the
/// case id, so a run is reproducible; the held-out ceiling stays the full expert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftExpertConfig {
    /// Teach with the partial expert instead of the full one.
    pub partial: bool,
    /// The true diagnosis sits at a rank drawn uniformly from 1..=max_diagnosis_rank of the differential.
    pub max_diagnosis_rank: usize,
    /// The number of optional tests ordered is drawn uniformly from 0..=max_optional_tests.
    pub max_optional_tests: usize,
    /// Probability that each essential test is left out.
    pub drop_essential_test: f64,
    /// Probability that each non-critical inquiry question is skipped.
    pub skip_question: f64,
    /// Probability that a planned question (after the first) is preceded by a re-ask of a topic already covered:
    /// a redundant question (SPAR's `redundant_question` step violation) the stage score does not charge for, as
    /// re-asks only take spare turns. The SPAR-vs-GRPO ablation's teacher (0.3); 0 = off.
    pub reask_rate: f64,
    /// The differential carries one knowledge-base-decidable claim (the diagnosis' ICD-10-CM code and a title):
    /// the Fact-Aware ablation's teacher.
    pub claims: bool,
    /// With `claims`: the share of cases whose claim is false (the title of a differential entry's code), refuted
    /// by the knowledge base (0.3 in the ablation).
    pub false_claim_rate: f64,
}

impl Default for SftExpertConfig {
    fn default() -> Self {
        SftExpertConfig {
            partial: false,
            max_diagnosis_rank: 3,
            max_optional_tests: 3,
            drop_essential_test: 0.25,
            skip_question: 0.4,
            reask_rate: 0.0,
            claims: false,
            false_claim_rate: 0.0,
        }
    }
}

/// `[trainer.distill]`: the M3 distillation stages (method.md section 7).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillConfig {
    /// Teacher policies: HF model folders (config.json + safetensors) sharing the student's tokenizer.
    /// Offline (`policy_loss = "distill"`): round t's prompts are answered by teacher t mod n and the student
    /// trains on those tokens with Clip-Forward-KL. On-policy (any RL loss): every teacher scores the student's
    /// sampled tokens and the reverse-KL advantage, averaged over teachers, is added to the task advantage.
    pub teachers: Vec<PathBuf>,
    /// Weight of the on-policy reverse-KL advantage coef * mean_t(log pi_t - log pi_old).
    pub coef: f64,
    /// Weight of the task advantage (from spar-rewards) in on-policy distillation; 0 = pure distillation.
    pub task_coef: f64,
    /// Offline distillation from a file instead of live teachers: samples (parquet or JSONL, e.g. written by
    /// `spar rollout --model TEACHER`) whose sampled tokens and `rollout_logprobs` are the teacher's. Each round
    /// draws `rollout.groups_per_step * rollout.group_size` of them.
    pub teacher_samples: Option<PathBuf>,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            teachers: Vec::new(),
            coef: 1.0,
            task_coef: 1.0,
            teacher_samples: None,
        }
    }
}

/// `[trainer.gae]`: PPO with a value head (the one estimator that lives in the trainer).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GaeConfig {
    /// Discount per sampled token.
    pub gamma: f64,
    /// GAE lambda (1 = Monte-Carlo returns, 0 = one-step TD).
    pub lambda: f64,
    /// Weight of the value loss in the total loss.
    pub vf_coef: f64,
    /// Clip range of the value update around the old value (PPO's clipped value loss).
    pub value_clip: f64,
    /// Learning rate of the value head (its own AdamW, constant schedule).
    pub critic_lr: f64,
    /// Normalise the advantages over the batch's trained tokens (mean 0, std 1).
    pub whiten: bool,
    /// Let the value loss train the policy's layers too (one shared trunk, as in PPO's shared actor-critic);
    /// off: the value head reads the policy's output detached and only the head learns from the value loss.
    pub shared_trunk: bool,
}

impl Default for GaeConfig {
    fn default() -> Self {
        GaeConfig {
            gamma: 1.0,
            lambda: 0.95,
            vf_coef: 0.5,
            value_clip: 0.2,
            critic_lr: 1e-4,
            whiten: true,
            shared_trunk: false,
        }
    }
}

impl Default for TrainerSection {
    fn default() -> Self {
        TrainerSection {
            policy_loss: PolicyLoss::SegmentGspo,
            eps_low: 3e-4,
            eps_high: 4e-4,
            dual_clip: 0.0,
            loss_agg: LossAgg::SeqMeanTokenMean,
            l_max: 1024,
            kl_coef: 0.0,
            kl_estimator: KlEstimator::K3,
            kl_in_reward: false,
            entropy_coef: 0.0,
            tis_cap: 2.0,
            routing_replay: false,
            lr: 1e-6,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            warmup_steps: 0,
            schedule: LrDecay::Constant,
            grad_clip: 1.0,
            steps: 100,
            micro_batch: 8,
            token_budget: 0,
            ppo_epochs: 1,
            update_kl: true,
            bf16: false,
            max_bad_steps: 5,
            out_dir: PathBuf::from("runs/default"),
            save_every: 10,
            keep_last: 3,
            log_every: 1,
            off_policy_one_step: false,
            sft_steps: 0,
            sft_lr: 1e-4,
            eval_every: 0,
            sft_batch: 16,
            sft_fraction: 1.0,
            bpe_vocab_size: 0,
            pack_sequences: false,
            aux_loss_coef: None,
            rl_aux_loss_coef: None,
            offload_optimizer: false,
            optimizer_state: OptimizerState::Fp32,
            learner_cuda_graphs: false,
            distill: DistillConfig::default(),
            gae: GaeConfig::default(),
            sft_expert: SftExpertConfig::default(),
            placebo: false,
            profile: ProfileConfig::default(),
        }
    }
}

impl TrainerSection {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check(
            self.sft_fraction > 0.0 && self.sft_fraction <= 1.0,
            "sft_fraction",
            "must be in (0, 1]",
        )?;
        check(
            self.eps_low >= 0.0 && self.eps_high >= 0.0,
            "eps_low",
            "clip ranges must be >= 0",
        )?;
        check(
            self.dual_clip == 0.0 || self.dual_clip > 1.0,
            "dual_clip",
            "must be 0 (off) or > 1",
        )?;
        check(
            !self.kl_in_reward || self.kl_coef != 0.0,
            "kl_in_reward",
            "needs kl_coef != 0 (the weight of the KL penalty in the reward)",
        )?;
        check(self.lr > 0.0 && self.lr.is_finite(), "lr", "must be > 0")?;
        for (key, coef) in [
            ("aux_loss_coef", self.aux_loss_coef),
            ("rl_aux_loss_coef", self.rl_aux_loss_coef),
        ] {
            check(
                coef.is_none_or(|c| c >= 0.0 && c.is_finite()),
                key,
                "must be >= 0 and finite",
            )?;
        }
        check(self.micro_batch >= 1, "micro_batch", "must be >= 1")?;
        check(self.keep_last >= 1, "keep_last", "must be >= 1")?;
        check(self.sft_batch >= 1, "sft_batch", "must be >= 1")?;
        check(self.ppo_epochs >= 1, "ppo_epochs", "must be >= 1")?;
        check(
            self.tis_cap == 0.0 || self.tis_cap >= 1.0,
            "tis_cap",
            "must be 0 (off) or >= 1",
        )?;
        check(
            self.bpe_vocab_size == 0 || self.bpe_vocab_size >= 300,
            "bpe_vocab_size",
            "must be 0 or >= 300 (bytes + special tokens)",
        )?;
        check(self.l_max >= 1, "l_max", "must be >= 1")?;
        check(
            self.policy_loss != PolicyLoss::Distill
                || !self.distill.teachers.is_empty()
                || self.distill.teacher_samples.is_some(),
            "distill.teachers",
            "policy_loss = \"distill\" needs at least one teacher (or distill.teacher_samples)",
        )?;
        check(
            self.distill.coef.is_finite() && self.distill.coef >= 0.0,
            "distill.coef",
            "must be >= 0",
        )?;
        check(
            self.distill.task_coef.is_finite() && self.distill.task_coef >= 0.0,
            "distill.task_coef",
            "must be >= 0",
        )?;
        let e = &self.sft_expert;
        check(
            e.max_diagnosis_rank >= 1,
            "sft_expert.max_diagnosis_rank",
            "must be >= 1 (1: the diagnosis always ranks first)",
        )?;
        check(
            (0.0..=1.0).contains(&e.drop_essential_test),
            "sft_expert.drop_essential_test",
            "must be a probability in [0, 1]",
        )?;
        check(
            (0.0..=1.0).contains(&e.skip_question),
            "sft_expert.skip_question",
            "must be a probability in [0, 1]",
        )?;
        for (v, key) in [
            (e.reask_rate, "sft_expert.reask_rate"),
            (e.false_claim_rate, "sft_expert.false_claim_rate"),
        ] {
            check(
                (0.0..=1.0).contains(&v),
                key,
                "must be a probability in [0, 1]",
            )?;
        }
        check(
            e.partial || (e.reask_rate == 0.0 && !e.claims),
            "sft_expert.partial",
            "reask_rate and claims shape the partial expert: set sft_expert.partial = true",
        )?;
        check(
            e.claims || e.false_claim_rate == 0.0,
            "sft_expert.false_claim_rate",
            "needs sft_expert.claims = true",
        )?;
        let g = &self.gae;
        check(
            (0.0..=1.0).contains(&g.gamma),
            "gae.gamma",
            "must be in [0, 1]",
        )?;
        check(
            (0.0..=1.0).contains(&g.lambda),
            "gae.lambda",
            "must be in [0, 1]",
        )?;
        if let Some(r) = self
            .profile
            .rounds
            .iter()
            .find(|&&r| r == 0 || r > self.steps)
        {
            return Err((
                "profile.rounds".into(),
                format!(
                    "round {r} is not an RL round of this run (1..={} with trainer.steps = {})",
                    self.steps, self.steps
                ),
            ));
        }
        check(g.vf_coef >= 0.0, "gae.vf_coef", "must be >= 0")?;
        check(g.value_clip > 0.0, "gae.value_clip", "must be > 0")?;
        check(
            g.critic_lr > 0.0 && g.critic_lr.is_finite(),
            "gae.critic_lr",
            "must be > 0",
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::recipe::Recipe;

    #[test]
    fn nested_distill_and_gae_keys_parse_and_unknown_ones_are_named() {
        let r = Recipe::from_toml_str(
            "[trainer]\npolicy_loss = \"distill\"\n[trainer.distill]\nteachers = [\"t1\", \"t2\"]\ncoef = 0.5\n\
             [trainer.gae]\nlambda = 1.0\n",
            "r.toml",
            &[],
        )
        .unwrap();
        let tr = r.trainer.unwrap();
        assert_eq!(tr.distill.teachers.len(), 2);
        assert_eq!(tr.distill.coef, 0.5);
        assert_eq!(tr.gae.lambda, 1.0);
        let e = Recipe::from_toml_str("[trainer.gae]\nlamda = 1.0\n", "r.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("trainer.gae.lamda"), "{e}");
        let e = Recipe::from_toml_str("[trainer]\npolicy_loss = \"distill\"\n", "r.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("trainer.distill.teachers"), "{e}");
    }

    #[test]
    fn sft_expert_is_off_by_default_and_its_knobs_are_checked() {
        let r = Recipe::from_toml_str("[trainer]\n", "r.toml", &[]).unwrap();
        assert!(!r.trainer.unwrap().sft_expert.partial);
        let r = Recipe::from_toml_str(
            "[trainer.sft_expert]\npartial = true\nskip_question = 0.5\n",
            "r.toml",
            &[],
        )
        .unwrap();
        let e = r.trainer.unwrap().sft_expert;
        assert!(e.partial);
        assert_eq!((e.skip_question, e.drop_essential_test), (0.5, 0.25));
        let err = Recipe::from_toml_str(
            "[trainer.sft_expert]\ndrop_essential_test = 1.5\n",
            "r.toml",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("trainer.sft_expert.drop_essential_test"),
            "{err}"
        );
    }

    #[test]
    fn profile_rounds_parse_from_set_and_a_round_past_the_run_is_named() {
        let r = Recipe::from_toml_str(
            "[trainer]\nsteps = 4\n",
            "r.toml",
            &[
                "trainer.profile.rounds=[2, 4]".into(),
                "trainer.profile.trace=true".into(),
            ],
        )
        .unwrap();
        let p = r.trainer.unwrap().profile;
        assert_eq!((p.rounds, p.trace, p.memory), (vec![2, 4], true, false));
        for bad in ["[5]", "[0]"] {
            let err = Recipe::from_toml_str(
                "[trainer]\nsteps = 4\n",
                "r.toml",
                &[format!("trainer.profile.rounds={bad}")],
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("trainer.profile.rounds") && err.contains("1..=4"),
                "{err}"
            );
        }
    }
}
