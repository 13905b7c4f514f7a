//! Loss aggregation over tokens and sequences (verl's four modes), written so that gradient accumulation over
//! micro-batches gives exactly the loss of the whole mini-batch: each micro-batch divides by the mini-batch's
//! token and sequence counts, never by its own.
use tch::{Kind, Tensor};

/// How per-token losses become one scalar: recipe key `trainer.loss_agg`, matched here exhaustively.
pub use spar_core::recipe::LossAgg as AggMode;

/// Aggregation with the denominators of the whole mini-batch.
#[derive(Clone, Copy, Debug)]
pub struct Aggregator {
    pub mode: AggMode,
    pub l_max: f64,
    /// Unmasked tokens in the whole mini-batch.
    pub total_tokens: f64,
    /// Sequences (samples) in the whole mini-batch.
    pub total_seqs: f64,
}

impl Aggregator {
    /// An aggregator whose mini-batch is exactly the given tensors (no accumulation).
    pub fn local(mode: AggMode, l_max: usize, mask: &Tensor, seq_ids: &Tensor) -> Self {
        let total_tokens = mask.sum(Kind::Double).double_value(&[]);
        let total_seqs = count_seqs(mask, seq_ids) as f64;
        Aggregator {
            mode,
            l_max: l_max as f64,
            total_tokens,
            total_seqs,
        }
    }

    /// Aggregates `loss` ([B, T] per token) under `mask` ([B, T], 0/1 float). `seq_ids` ([B, T] int64) names the
    /// sample each token belongs to (indices `0..n_seqs` of this micro-batch; -1 on padding), so packed rows
    /// holding several samples aggregate per sample, not per row.
    pub fn apply(&self, loss: &Tensor, mask: &Tensor, seq_ids: &Tensor, n_seqs: usize) -> Tensor {
        let masked = loss * mask;
        let k = float_kind(loss);
        if self.total_tokens <= 0.0 || self.total_seqs <= 0.0 {
            return masked.sum(k) * 0.0;
        }
        match self.mode {
            AggMode::TokenMean => masked.sum(k) / self.total_tokens,
            mode => {
                let (sums, counts) = per_seq(&masked, mask, seq_ids, n_seqs);
                let per = match mode {
                    AggMode::SeqMeanTokenSum => sums,
                    AggMode::SeqMeanTokenMean => sums / counts.clamp_min(1.0),
                    AggMode::SeqMeanTokenSumNorm => sums / self.l_max,
                    AggMode::TokenMean => unreachable!(),
                };
                per.sum(k) / self.total_seqs
            }
        }
    }
}

/// Per-sequence sums of `values` and token counts of `mask`, over sequence ids `0..n` (-1 ignored).
pub fn per_seq(values: &Tensor, mask: &Tensor, seq_ids: &Tensor, n: usize) -> (Tensor, Tensor) {
    let k = float_kind(values);
    let opts = (k, values.device());
    let valid = seq_ids.ge(0);
    let idx = seq_ids.clamp_min(0).reshape([-1]);
    let v = values
        .where_self(&valid, &values.zeros_like())
        .reshape([-1])
        .to_kind(k);
    let m = mask
        .where_self(&valid, &mask.zeros_like())
        .reshape([-1])
        .to_kind(k);
    let sums = Tensor::zeros([n as i64], opts).index_add(0, &idx, &v);
    let counts = Tensor::zeros([n as i64], opts).index_add(0, &idx, &m);
    (sums, counts)
}

/// Number of sequences with at least one unmasked token.
pub fn count_seqs(mask: &Tensor, seq_ids: &Tensor) -> usize {
    let n = (seq_ids.max().int64_value(&[]) + 1).max(0) as usize;
    if n == 0 {
        return 0;
    }
    let (_, counts) = per_seq(mask, mask, seq_ids, n);
    counts.gt(0.0).sum(Kind::Int64).int64_value(&[]) as usize
}

/// float64 stays float64 (gradient checks); everything else computes in float32.
pub fn float_kind(t: &Tensor) -> Kind {
    if t.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}
