//! Policy-gradient losses: PPO-clip (token ratio), GSPO (sequence ratio) and segment-level GSPO for SPAR (one
//! ratio per step z_j, method.md section 9), all with asymmetric clipping, optional dual clip, truncated
//! importance sampling against the rollout engine's log-probs, KL to a reference and an entropy bonus.
//!
//! Every tensor is target-aligned `[B, T]`: position t holds the log-prob of token t+1 of the row.
use crate::agg::Aggregator;
use spar_core::recipe::PolicyLoss;
use tch::{Kind, Tensor};

/// Log-ratios are clamped to this before `exp`, so one wild token cannot overflow the loss.
pub const LOG_RATIO_CLAMP: f64 = 20.0;

/// Which tokens share one importance ratio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RatioLevel {
    /// PPO: one ratio per token.
    Token,
    /// GSPO: one ratio per sequence, exp(mean token log-ratio).
    Sequence,
    /// SPAR: one ratio per step (segment) z_j, exp(mean log-ratio over the step's sampled tokens).
    Segment,
}

impl RatioLevel {
    /// The ratio level of recipe key `trainer.policy_loss`; None for `sft` and `distill`, which have no
    /// importance ratio of their own.
    pub fn of(loss: PolicyLoss) -> Option<Self> {
        match loss {
            PolicyLoss::Ppo => Some(RatioLevel::Token),
            PolicyLoss::Gspo => Some(RatioLevel::Sequence),
            PolicyLoss::SegmentGspo => Some(RatioLevel::Segment),
            PolicyLoss::Sft | PolicyLoss::Distill => None,
        }
    }
}

/// KL estimators of log(pi/pi_ref) from samples of pi (Schulman's k1, k2, k3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KlEstimator {
    K1,
    K2,
    K3,
}

impl From<spar_core::recipe::KlEstimator> for KlEstimator {
    /// Recipe key `trainer.kl_estimator`.
    fn from(k: spar_core::recipe::KlEstimator) -> Self {
        match k {
            spar_core::recipe::KlEstimator::K1 => KlEstimator::K1,
            spar_core::recipe::KlEstimator::K2 => KlEstimator::K2,
            spar_core::recipe::KlEstimator::K3 => KlEstimator::K3,
        }
    }
}

impl KlEstimator {
    /// Per-token estimate from `logp` (policy) and `ref_logp` (reference).
    pub fn estimate(self, logp: &Tensor, ref_logp: &Tensor) -> Tensor {
        let d = (logp - ref_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP);
        match self {
            KlEstimator::K1 => d,
            KlEstimator::K2 => d.square() * 0.5,
            // k3 = r - 1 - log r with r = pi_ref / pi: unbiased and always >= 0.
            KlEstimator::K3 => {
                let neg = -&d;
                neg.exp() - neg - 1.0
            }
        }
    }
}

/// Knobs of the policy loss (from `[trainer]`).
#[derive(Clone, Copy, Debug)]
pub struct PolicyLossConfig {
    pub level: RatioLevel,
    pub eps_low: f64,
    pub eps_high: f64,
    /// Dual-clip constant c > 1 (0 = off): for A < 0 the loss is at most -c * A.
    pub dual_clip: f64,
    /// Truncated IS cap C on pi_old / pi_rollout per token (0 = off).
    pub tis_cap: f64,
    /// Weight of the KL to the reference policy (needs reference log-probs; see `kl_in_reward`).
    pub kl_coef: f64,
    pub kl_estimator: KlEstimator,
    /// The KL penalty `-kl_coef * KL_t` joins each token's reward (folded into the advantages before the update,
    /// see `learner::rl_update_with`) instead of being a loss term.
    pub kl_in_reward: bool,
    pub entropy_coef: f64,
    /// The temperature T the rollout sampled at: every log-prob of the update (pi_old, pi_theta, the reference,
    /// the entropy, the teachers') is taken from logits / T, the distribution the tokens were drawn from, as
    /// verl does (method.md section 9). 1 = the policy's own distribution.
    pub temperature: f64,
}

impl PolicyLossConfig {
    /// The clipped ratio objective alone at `level`: no dual clip, no truncated IS, no KL, no entropy term (a
    /// base to set the others on with `..`).
    pub fn clipped(level: RatioLevel, eps_low: f64, eps_high: f64) -> Self {
        PolicyLossConfig {
            level,
            eps_low,
            eps_high,
            dual_clip: 0.0,
            tis_cap: 0.0,
            kl_coef: 0.0,
            kl_estimator: KlEstimator::K3,
            kl_in_reward: false,
            entropy_coef: 0.0,
            temperature: 1.0,
        }
    }
}

/// The temperature training log-probs are taken at for a rollout sampled at `sampling_temperature`: that
/// temperature, or 1 for greedy rollouts (temperature 0 draws from no distribution; its log-probs are the
/// policy's own).
pub fn training_temperature(sampling_temperature: f32) -> f64 {
    if sampling_temperature > 0.0 {
        sampling_temperature as f64
    } else {
        1.0
    }
}

/// One micro-batch's inputs to the policy loss, target-aligned `[B, T]`.
pub struct PolicyLossInput<'a> {
    /// log pi_theta of each target token (carries the gradient).
    pub logp: &'a Tensor,
    /// log pi_old (recomputed by the trainer before the first update on the batch).
    pub old_logp: &'a Tensor,
    /// log pi_rollout (the engine's, for the mismatch correction).
    pub rollout_logp: &'a Tensor,
    pub ref_logp: Option<&'a Tensor>,
    /// Per-token entropy of pi_theta (carries gradient), when the entropy bonus is on.
    pub entropy: Option<&'a Tensor>,
    /// Per-token advantage: A_j spread over step j's tokens.
    pub advantages: &'a Tensor,
    /// 1.0 on trained tokens.
    pub mask: &'a Tensor,
    /// Sample index of each token in this micro-batch (-1 on padding).
    pub seq_ids: &'a Tensor,
    pub n_seqs: usize,
    /// Step (segment) index of each token in this micro-batch (-1 outside every step).
    pub seg_ids: &'a Tensor,
    pub n_segs: usize,
}

/// The loss and its diagnostics. Statistics are sums over this micro-batch's counted tokens (`tokens`), so
/// micro-batches add up; divide by `tokens` to report.
#[derive(Debug)]
pub struct PolicyLossOutput {
    pub loss: Tensor,
    pub stats: LossStats,
}

/// Sums over tokens (and extrema), to be added across micro-batches and normalised once.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LossStats {
    pub tokens: f64,
    pub pg_loss: f64,
    pub clipped_low: f64,
    pub clipped_high: f64,
    pub ratio_sum: f64,
    /// Extrema of the ratio over counted tokens (None: no counted token yet).
    #[serde(default)]
    pub ratio_min: Option<f64>,
    #[serde(default)]
    pub ratio_max: Option<f64>,
    pub kl_sum: f64,
    pub entropy_sum: f64,
    pub mismatch_sum: f64,
    pub mismatch_max: f64,
    pub tis_truncated: f64,
    /// Tokens dropped from the loss because a log-prob was not finite.
    pub non_finite: f64,
    /// Sampled tokens outside every step (segment GSPO cannot train them).
    pub outside_steps: f64,
}

impl LossStats {
    pub fn add(&mut self, o: &LossStats) {
        self.tokens += o.tokens;
        self.pg_loss += o.pg_loss;
        self.clipped_low += o.clipped_low;
        self.clipped_high += o.clipped_high;
        self.ratio_sum += o.ratio_sum;
        self.ratio_min = extremum(self.ratio_min, o.ratio_min, f64::min);
        self.ratio_max = extremum(self.ratio_max, o.ratio_max, f64::max);
        self.kl_sum += o.kl_sum;
        self.entropy_sum += o.entropy_sum;
        self.mismatch_sum += o.mismatch_sum;
        self.mismatch_max = self.mismatch_max.max(o.mismatch_max);
        self.tis_truncated += o.tis_truncated;
        self.non_finite += o.non_finite;
        self.outside_steps += o.outside_steps;
    }

    /// Per-token means for logging.
    pub fn means(&self) -> Vec<(&'static str, f64)> {
        let n = self.tokens.max(1.0);
        let mut out = vec![
            ("clip_frac_low", self.clipped_low / n),
            ("clip_frac_high", self.clipped_high / n),
            ("clip_frac", (self.clipped_low + self.clipped_high) / n),
            ("ratio_mean", self.ratio_sum / n),
            ("kl", self.kl_sum / n),
            ("entropy", self.entropy_sum / n),
            ("mismatch_mean", self.mismatch_sum / n),
            ("mismatch_max", self.mismatch_max),
            ("tis_truncated_frac", self.tis_truncated / n),
            ("non_finite_tokens", self.non_finite),
            ("tokens_outside_steps", self.outside_steps),
        ];
        out.extend(self.ratio_min.map(|v| ("ratio_min", v)));
        out.extend(self.ratio_max.map(|v| ("ratio_max", v)));
        out
    }
}

/// The extremum of two optional values (`pick` = min or max).
fn extremum(a: Option<f64>, b: Option<f64>, pick: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(pick(x, y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Where each statistic sits in [`PolicyLossParts::stats`] (float64 `[STAT_COUNT]`): sums first (added
/// across micro-batches), then extrema (combined by maximum; the ratio's minimum is stored negated).
pub mod stat {
    pub const TOKENS: usize = 0;
    pub const PG_LOSS: usize = 1;
    pub const CLIPPED_LOW: usize = 2;
    pub const CLIPPED_HIGH: usize = 3;
    pub const RATIO_SUM: usize = 4;
    pub const KL_SUM: usize = 5;
    pub const ENTROPY_SUM: usize = 6;
    pub const MISMATCH_SUM: usize = 7;
    pub const TIS_TRUNCATED: usize = 8;
    pub const NON_FINITE: usize = 9;
    pub const OUTSIDE_STEPS: usize = 10;
    /// The sums end here; the extrema follow.
    pub const SUMS: usize = 11;
    pub const NEG_RATIO_MIN: usize = 11;
    pub const RATIO_MAX: usize = 12;
    pub const MISMATCH_MAX: usize = 13;
    pub const STAT_COUNT: usize = 14;
}

impl LossStats {
    /// The statistics of [`policy_loss_parts`]'s tensor (float64 `[stat::STAT_COUNT]`), read from the device
    /// once.
    pub fn read(stats: &Tensor) -> anyhow::Result<LossStats> {
        Self::from_values(&Vec::<f64>::try_from(&stats.to_kind(Kind::Double))?)
    }

    /// The statistics from their values, laid out as [`stat`] says (already read from the device).
    pub fn from_values(v: &[f64]) -> anyhow::Result<LossStats> {
        anyhow::ensure!(
            v.len() == stat::STAT_COUNT,
            "loss statistics: {} values, expected {}",
            v.len(),
            stat::STAT_COUNT
        );
        let counted = v[stat::TOKENS] > 0.0;
        Ok(LossStats {
            tokens: v[stat::TOKENS],
            pg_loss: v[stat::PG_LOSS],
            clipped_low: v[stat::CLIPPED_LOW],
            clipped_high: v[stat::CLIPPED_HIGH],
            ratio_sum: v[stat::RATIO_SUM],
            ratio_min: counted.then(|| -v[stat::NEG_RATIO_MIN]),
            ratio_max: counted.then_some(v[stat::RATIO_MAX]),
            kl_sum: v[stat::KL_SUM],
            entropy_sum: v[stat::ENTROPY_SUM],
            mismatch_sum: v[stat::MISMATCH_SUM],
            mismatch_max: v[stat::MISMATCH_MAX],
            tis_truncated: v[stat::TIS_TRUNCATED],
            non_finite: v[stat::NON_FINITE],
            outside_steps: v[stat::OUTSIDE_STEPS],
        })
    }
}

/// Adds micro-batch statistics `more` into `acc` (both float64 `[stat::STAT_COUNT]` on one device): sums add,
/// extrema take the maximum.
pub fn accumulate_stats(acc: &mut Tensor, more: &Tensor) {
    let _ = acc
        .narrow(0, 0, stat::SUMS as i64)
        .g_add_(&more.narrow(0, 0, stat::SUMS as i64));
    let n = (stat::STAT_COUNT - stat::SUMS) as i64;
    let mut ext = acc.narrow(0, stat::SUMS as i64, n);
    let both = ext.maximum(&more.narrow(0, stat::SUMS as i64, n));
    ext.copy_(&both);
}

/// Statistics with nothing counted yet (sums 0, extrema -inf), to [`accumulate_stats`] into.
pub fn empty_stats(device: tch::Device) -> Tensor {
    let mut v = vec![0.0f64; stat::STAT_COUNT];
    for x in &mut v[stat::SUMS..] {
        *x = f64::NEG_INFINITY;
    }
    // The mismatch's maximum starts at 0, as [`LossStats`]'s default does.
    v[stat::MISMATCH_MAX] = 0.0;
    Tensor::from_slice(&v).to_device(device)
}

fn sum_f64(t: &Tensor) -> Tensor {
    t.sum(Kind::Double)
}

/// Mean of `values` over groups `ids` (`0..n`, -1 ignored) under `mask`, gathered back to every token.
fn group_mean_per_token(values: &Tensor, mask: &Tensor, ids: &Tensor, n: usize) -> Tensor {
    let (sums, counts) = crate::agg::per_seq(values, mask, ids, n.max(1));
    let means = sums / counts.clamp_min(1.0);
    let flat = means.index_select(0, &ids.clamp_min(0).reshape([-1]));
    flat.reshape(values.size())
}

/// The clipped policy-gradient loss (+ KL and entropy terms), aggregated by `agg`, with its statistics read
/// from the device (once).
pub fn policy_loss(
    cfg: &PolicyLossConfig,
    agg: &Aggregator,
    x: &PolicyLossInput,
) -> PolicyLossOutput {
    let parts = policy_loss_parts(cfg, agg, x);
    let stats =
        LossStats::read(&parts.stats).unwrap_or_else(|e| panic!("policy loss statistics: {e:#}"));
    PolicyLossOutput {
        loss: parts.loss,
        stats,
    }
}

/// [`policy_loss`] with its statistics left on the device (no host synchronisation: a CUDA graph may record it).
pub struct PolicyLossParts {
    pub loss: Tensor,
    /// float64 `[stat::STAT_COUNT]`, laid out as [`stat`] says.
    pub stats: Tensor,
}

/// The clipped policy-gradient loss and its statistics as device tensors (see [`policy_loss`]).
pub fn policy_loss_parts(
    cfg: &PolicyLossConfig,
    agg: &Aggregator,
    x: &PolicyLossInput,
) -> PolicyLossParts {
    let finite = x
        .logp
        .isfinite()
        .logical_and(&x.old_logp.isfinite())
        .logical_and(&x.rollout_logp.isfinite());
    let sampled = x.mask.gt(0.0);
    let non_finite = sum_f64(
        &sampled
            .logical_and(&finite.logical_not())
            .to_kind(Kind::Float),
    );
    let mut keep = sampled.logical_and(&finite);
    let zeros = x.logp.zeros_like();
    let zero = || Tensor::zeros([], (Kind::Double, x.logp.device()));
    let logp = x.logp.where_self(&finite, &zeros);
    let old = x.old_logp.where_self(&finite, &zeros).detach();
    let rollout = x.rollout_logp.where_self(&finite, &zeros).detach();
    let mut outside_steps = zero();
    if cfg.level == RatioLevel::Segment {
        let in_step = x.seg_ids.ge(0);
        outside_steps = sum_f64(
            &keep
                .logical_and(&in_step.logical_not())
                .to_kind(Kind::Float),
        );
        keep = keep.logical_and(&in_step);
    }
    let mask = keep.to_kind(Kind::Float);

    let log_ratio_tok = (&logp - &old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP) * &mask;
    let log_ratio = match cfg.level {
        RatioLevel::Token => log_ratio_tok,
        RatioLevel::Sequence => group_mean_per_token(&log_ratio_tok, &mask, x.seq_ids, x.n_seqs),
        RatioLevel::Segment => group_mean_per_token(&log_ratio_tok, &mask, x.seg_ids, x.n_segs),
    };
    let ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp();
    let adv = x.advantages.detach();
    let clipped = ratio.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high);
    let l1 = -&adv * &ratio;
    let l2 = -&adv * &clipped;
    let mut pg = l1.maximum(&l2);
    if cfg.dual_clip > 1.0 {
        let l3 = -&adv * cfg.dual_clip;
        let capped = pg.minimum(&l3);
        pg = capped.where_self(&adv.lt(0.0), &pg);
    }

    // Truncated importance sampling: pi_old / pi_rollout, capped at C, per token; no gradient.
    let diff = (&old - &rollout) * &mask;
    let mismatch = diff.abs();
    let mut tis_truncated = zero();
    if cfg.tis_cap > 0.0 {
        let w_raw = diff.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp();
        tis_truncated = sum_f64(&(w_raw.gt(cfg.tis_cap).to_kind(Kind::Float) * &mask));
        pg = pg * w_raw.clamp_max(cfg.tis_cap);
    }

    let mut loss = agg.apply(&pg, &mask, x.seq_ids, x.n_seqs);
    let mut kl_sum = zero();
    if let Some(ref_logp) = x.ref_logp {
        let kl = cfg
            .kl_estimator
            .estimate(&logp, &ref_logp.where_self(&finite, &zeros).detach());
        kl_sum = sum_f64(&(kl.detach() * &mask));
        if cfg.kl_coef != 0.0 && !cfg.kl_in_reward {
            loss = loss + agg.apply(&kl, &mask, x.seq_ids, x.n_seqs) * cfg.kl_coef;
        }
    }
    let mut entropy_sum = zero();
    if let Some(ent) = x.entropy {
        entropy_sum = sum_f64(&(ent.detach() * &mask));
        if cfg.entropy_coef != 0.0 {
            loss = loss - agg.apply(ent, &mask, x.seq_ids, x.n_seqs) * cfg.entropy_coef;
        }
    }

    let ratio_d = ratio.detach();
    let ratio_masked = ratio_d.to_kind(Kind::Double);
    let off = mask.le(0.0);
    let mut stats: Vec<Tensor> = (0..stat::STAT_COUNT).map(|_| zero()).collect();
    stats[stat::TOKENS] = sum_f64(&mask);
    stats[stat::PG_LOSS] = sum_f64(&(pg.detach() * &mask));
    stats[stat::CLIPPED_LOW] = sum_f64(
        &(ratio_d
            .lt(1.0 - cfg.eps_low)
            .logical_and(&adv.lt(0.0))
            .to_kind(Kind::Float)
            * &mask),
    );
    stats[stat::CLIPPED_HIGH] = sum_f64(
        &(ratio_d
            .gt(1.0 + cfg.eps_high)
            .logical_and(&adv.gt(0.0))
            .to_kind(Kind::Float)
            * &mask),
    );
    stats[stat::RATIO_SUM] = sum_f64(&(&ratio_d * &mask));
    stats[stat::KL_SUM] = kl_sum;
    stats[stat::ENTROPY_SUM] = entropy_sum;
    stats[stat::MISMATCH_SUM] = sum_f64(&mismatch);
    stats[stat::TIS_TRUNCATED] = tis_truncated;
    stats[stat::NON_FINITE] = non_finite;
    stats[stat::OUTSIDE_STEPS] = outside_steps;
    // Extrema over counted tokens (-inf where none is counted: the maximum of an empty set).
    stats[stat::NEG_RATIO_MIN] = (-&ratio_masked).masked_fill(&off, f64::NEG_INFINITY).max();
    stats[stat::RATIO_MAX] = ratio_masked.masked_fill(&off, f64::NEG_INFINITY).max();
    stats[stat::MISMATCH_MAX] = mismatch.max().to_kind(Kind::Double);
    PolicyLossParts {
        loss,
        stats: Tensor::stack(&stats, 0),
    }
}

/// Log-prob of each target under softmax(logits / temperature) ([B, T, V], [B, T] int64 -> [B, T]); float32
/// whatever the model dtype (float64 for double logits). See `spar_model::token_logprobs`.
pub fn gather_logprobs(logits: &Tensor, targets: &Tensor, temperature: f64) -> Tensor {
    spar_model::token_logprobs::logits_logprobs(
        logits,
        targets,
        &spar_model::LogprobOptions::at(temperature),
    )
    .unwrap_or_else(|e| panic!("gather_logprobs: {e:#}"))
    .logp
}
