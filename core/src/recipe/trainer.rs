//! `[trainer]`: losses, optimizer, schedule, checkpoints. Owner: trainer.
use super::check;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerSection {
    /// "segment_gspo" (SPAR) | "gspo" | "ppo" (token-level clip) | "sft" | "distill".
    pub policy_loss: String,
    pub eps_low: f64,
    pub eps_high: f64,
    /// Dual-clip constant c (> 1), 0 = off.
    pub dual_clip: f64,
    /// "token-mean" | "seq-mean-token-sum" | "seq-mean-token-mean" | "seq-mean-token-sum-norm".
    pub loss_agg: String,
    /// l_max of seq-mean-token-sum-norm.
    pub l_max: usize,
    pub kl_coef: f64,
    /// "k1" | "k2" | "k3".
    pub kl_estimator: String,
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
    /// "constant" | "cosine".
    pub schedule: String,
    pub grad_clip: f64,
    pub steps: usize,
    pub micro_batch: usize,
    /// Token budget per micro-batch for dynamic batching (0 = by count).
    pub token_budget: usize,
    /// PPO epochs over each rollout batch.
    pub ppo_epochs: usize,
    pub bf16: bool,
    /// Skip a step with a non-finite loss or gradient; stop after this many in a row.
    pub max_bad_steps: usize,
    pub out_dir: PathBuf,
    pub save_every: usize,
    pub keep_last: usize,
    pub log_every: usize,
    /// One-step off-policy: generate batch t+1 while learning on batch t.
    pub off_policy_one_step: bool,
    /// SFT steps on scripted expert consultations before RL (the demo pipeline).
    pub sft_steps: usize,
    pub sft_lr: f64,
    /// Evaluate on held-out cases every N steps (0 = only at start and end).
    pub eval_every: usize,
    /// Transcripts per SFT step.
    pub sft_batch: usize,
    /// Train a byte-level BPE of this size on the case text (tiny CPU demo; 0 = the model's own tokenizer).
    pub bpe_vocab_size: usize,
    /// Pack several samples into one row (block-diagonal attention) instead of padding.
    pub pack_sequences: bool,
    /// MoE load-balancing loss coefficient (None: the model config's `router_aux_loss_coef`).
    pub aux_loss_coef: Option<f64>,
}

impl Default for TrainerSection {
    fn default() -> Self {
        TrainerSection {
            policy_loss: "segment_gspo".into(),
            eps_low: 3e-4,
            eps_high: 4e-4,
            dual_clip: 0.0,
            loss_agg: "seq-mean-token-mean".into(),
            l_max: 1024,
            kl_coef: 0.0,
            kl_estimator: "k3".into(),
            kl_in_reward: false,
            entropy_coef: 0.0,
            tis_cap: 2.0,
            routing_replay: false,
            lr: 1e-6,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            warmup_steps: 0,
            schedule: "constant".into(),
            grad_clip: 1.0,
            steps: 100,
            micro_batch: 8,
            token_budget: 0,
            ppo_epochs: 1,
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
            bpe_vocab_size: 0,
            pack_sequences: false,
            aux_loss_coef: None,
        }
    }
}

impl TrainerSection {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check(
            ["segment_gspo", "gspo", "ppo", "sft", "distill"].contains(&self.policy_loss.as_str()),
            "policy_loss",
            "must be segment_gspo, gspo, ppo, sft or distill",
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
            [
                "token-mean",
                "seq-mean-token-sum",
                "seq-mean-token-mean",
                "seq-mean-token-sum-norm",
            ]
            .contains(&self.loss_agg.as_str()),
            "loss_agg",
            "must be token-mean, seq-mean-token-sum, seq-mean-token-mean or seq-mean-token-sum-norm",
        )?;
        check(
            ["k1", "k2", "k3"].contains(&self.kl_estimator.as_str()),
            "kl_estimator",
            "must be k1, k2 or k3",
        )?;
        check(self.lr > 0.0 && self.lr.is_finite(), "lr", "must be > 0")?;
        check(
            ["constant", "cosine"].contains(&self.schedule.as_str()),
            "schedule",
            "must be constant or cosine",
        )?;
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
        check(self.l_max >= 1, "l_max", "must be >= 1")
    }
}
