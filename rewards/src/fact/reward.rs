//! The Fact-Aware reward's equations on plain numbers: claim clustering and saliency (Eqs. 10-11), R_fact
//! (Eq. 12), the gate (Eqs. 13-14) and the naive penalty (Eq. 9).
use super::encoder::cosine;
use super::guard::Signature;

/// Eq. 10: greedy clustering in claim order. A claim joins the first earlier representative with cosine >=
/// `threshold` and the same negations and numbers (a negated claim is never folded into its opposite);
/// otherwise it starts a cluster. Returns, for each claim, the index of its cluster's representative.
pub fn cluster(embeddings: &[Vec<f32>], signatures: &[Signature], threshold: f64) -> Vec<usize> {
    let mut reps: Vec<usize> = Vec::new();
    let mut of = Vec::with_capacity(embeddings.len());
    for i in 0..embeddings.len() {
        match reps.iter().find(|&&r| {
            signatures[r] == signatures[i] && cosine(&embeddings[r], &embeddings[i]) >= threshold
        }) {
            Some(&r) => of.push(r),
            None => {
                reps.push(i);
                of.push(i);
            }
        }
    }
    of
}

/// Eq. 11: w(c*) = max_j cos(E(c*), E(s_j)) over the response's sentences, in [0, 1] (0 without sentences;
/// the clamp at 1 absorbs f32 rounding of identical texts).
pub fn saliency(claim: &[f32], sentences: &[Vec<f32>]) -> f64 {
    sentences
        .iter()
        .map(|s| cosine(claim, s))
        .fold(0.0, f64::max)
        .min(1.0)
}

/// Eq. 12: R_fact = - sum_k w_k I_k / (sum_k w_k + eps), over cluster representatives, I_k = 1 when the
/// representative is Refuted or Uncertain. In [-1, 0]; 0 without claims.
pub fn r_fact(weights: &[f64], flawed: &[bool], eps: f64) -> f64 {
    let num: f64 = weights
        .iter()
        .zip(flawed)
        .filter(|(_, f)| **f)
        .map(|(w, _)| w)
        .sum();
    let den: f64 = weights.iter().sum::<f64>() + eps;
    if num == 0.0 { 0.0 } else { -num / den }
}

/// Eqs. 13-14: lambda(R_task) = sigmoid(kappa (R_task - mu) / Delta), mu = (tau_min + tau_max) / 2,
/// Delta = tau_max - tau_min. Hallucination is penalised in full only once the task is solved.
pub fn gate_lambda(r_task: f64, kappa: f64, tau_min: f64, tau_max: f64) -> f64 {
    let mu = (tau_min + tau_max) / 2.0;
    let delta = tau_max - tau_min;
    1.0 / (1.0 + (-kappa * (r_task - mu) / delta).exp())
}

/// Eq. 9's fact term: -N_flawed / N_total (0 without claims); the naive reward is R_task + alpha * this.
pub fn naive_fact(flawed: &[bool]) -> f64 {
    if flawed.is_empty() {
        0.0
    } else {
        -(flawed.iter().filter(|f| **f).count() as f64) / flawed.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn eq13_14_gate_below_inside_above() {
        // mu = 0.85, Delta = 0.2, kappa = 10: lambda = sigmoid(50 (R - 0.85)).
        close(gate_lambda(0.85, 10.0, 0.75, 0.95), 0.5);
        close(
            gate_lambda(0.95, 10.0, 0.75, 0.95),
            1.0 / (1.0 + (-5.0f64).exp()),
        ); // 0.993307
        close(
            gate_lambda(0.75, 10.0, 0.75, 0.95),
            1.0 / (1.0 + 5.0f64.exp()),
        ); // 0.006693
        close(
            gate_lambda(0.5, 10.0, 0.75, 0.95),
            1.0 / (1.0 + 17.5f64.exp()),
        ); // below the zone: ~2.5e-8
        close(
            gate_lambda(0.9, 10.0, 0.75, 0.95),
            1.0 / (1.0 + (-2.5f64).exp()),
        ); // inside: 0.924142
        assert!(gate_lambda(1.0, 10.0, 0.75, 0.95) > 0.9994);
        // R = R_task + lambda R_fact with R_task = 0.9, R_fact = -0.5: 0.9 - 0.462071 = 0.437929.
        close(
            0.9 + gate_lambda(0.9, 10.0, 0.75, 0.95) * -0.5,
            0.9 - 0.5 / (1.0 + (-2.5f64).exp()),
        );
    }

    #[test]
    fn eq11_12_by_hand() {
        // Two representatives: saliencies 0.8 (Refuted) and 0.2 (Supported): R_fact = -0.8 / (1.0 + eps).
        close(
            r_fact(&[0.8, 0.2], &[true, false], 1e-8),
            -0.8 / (1.0 + 1e-8),
        );
        close(r_fact(&[0.0, 0.0], &[true, true], 1e-8), 0.0);
        close(r_fact(&[], &[], 1e-8), 0.0);
        close(
            r_fact(&[0.5, 0.5], &[true, true], 1e-8),
            -1.0 / (1.0 + 1e-8),
        );
        let s = [vec![1.0f32, 0.0], vec![0.6, 0.8]];
        // f32 embeddings: 0.6^2 + 0.8^2 is 1 only to f32 precision.
        assert!((saliency(&[0.6, 0.8], &s) - 1.0).abs() < 1e-6);
        assert!((saliency(&[0.0, 1.0], &s) - 0.8).abs() < 1e-6);
        close(saliency(&[-1.0, 0.0], &s), 0.0);
        close(naive_fact(&[true, false, false, true]), -0.5);
    }

    #[test]
    fn eq10_clusters_respect_negation() {
        let e = vec![
            vec![1.0f32, 0.0],
            vec![0.99, 0.141],
            vec![0.0, 1.0],
            vec![1.0, 0.0],
        ];
        let s = vec![
            Signature::of("a"),
            Signature::of("a"),
            Signature::of("b"),
            Signature::of("not a"),
        ];
        assert_eq!(cluster(&e, &s, 0.9), vec![0, 0, 2, 3]);
    }
}
