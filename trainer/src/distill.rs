//! Supervised and distillation losses of the M3 pipeline (method.md section 7): SFT cross-entropy, offline
//! distillation with Clip-Forward-KL, and the reverse-KL signal of on-policy distillation.
use crate::agg::Aggregator;
use tch::Tensor;

/// Cross-entropy on the masked (expert) tokens: -log pi_theta(a|s), aggregated.
pub fn sft_loss(
    logp: &Tensor,
    mask: &Tensor,
    seq_ids: &Tensor,
    n_seqs: usize,
    agg: &Aggregator,
) -> Tensor {
    agg.apply(&(-logp), mask, seq_ids, n_seqs)
}

/// Clip-Forward-KL (M3): L = E[ 1(log pi_theta(a|s) < log pi_t(a|s)) * (-log pi_theta(a|s)) ] on teacher-sampled
/// tokens. Tokens the student already rates at least as high as the teacher give no gradient, so the student
/// is pulled up to the teacher but never pushed past it into over-confidence.
pub fn clip_forward_kl(
    logp: &Tensor,
    teacher_logp: &Tensor,
    mask: &Tensor,
    seq_ids: &Tensor,
    n_seqs: usize,
    agg: &Aggregator,
) -> Tensor {
    let below = logp
        .detach()
        .lt_tensor(teacher_logp)
        .to_kind(tch::Kind::Float);
    agg.apply(&(-logp * below), mask, seq_ids, n_seqs)
}

/// On-policy distillation from one or several teachers: the per-token reward -(log pi_student - log pi_teacher)
/// (reverse KL, sampled from the student), averaged over teachers, scaled by `coef`. It is added to the task
/// advantage of each token and trained with the token-level clipped loss.
pub fn reverse_kl_advantage(student_logp: &Tensor, teacher_logps: &[Tensor], coef: f64) -> Tensor {
    let s = student_logp.detach();
    let mut acc = s.zeros_like();
    for t in teacher_logps {
        acc = acc + (t - &s);
    }
    acc * (coef / teacher_logps.len().max(1) as f64)
}
