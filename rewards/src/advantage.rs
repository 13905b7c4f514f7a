//! Every advantage estimator of spar (design.md, "Single owners"), on plain `f64` slices so that they are
//! testable by hand and reusable by the trainer, the evaluator and `spar score` alike.
//!
//! Conventions (method.md section 9): `rewards[i]` is sample i's unpenalized reward R (SPAR's R_global);
//! `gammas[i][j]` is gamma_j of step j of sample i (Eq. 7). The result holds one advantage per step of each
//! sample; estimators that give one advantage per trajectory repeat it over the trajectory's steps.
pub use spar_core::recipe::StdKind;
use spar_core::recipe::{Estimator, SparConfig};

/// Knobs every estimator shares, lifted out of [`SparConfig`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdvantageParams {
    pub estimator: Estimator,
    pub std: StdKind,
    /// A_j divides by max(sigma, sigma_floor): a group whose rewards nearly agree must not turn a small penalty
    /// into a huge advantage.
    pub sigma_floor: f64,
    /// |A_j| is clipped to this.
    pub adv_clip: f64,
}

impl AdvantageParams {
    pub fn from_config(c: &SparConfig) -> AdvantageParams {
        AdvantageParams {
            estimator: c.estimator,
            std: c.std,
            sigma_floor: c.sigma_floor,
            adv_clip: c.adv_clip,
        }
    }
}

impl Default for AdvantageParams {
    fn default() -> Self {
        AdvantageParams::from_config(&SparConfig::default())
    }
}

/// Mean and standard deviation of `xs` (0, 0 for an empty slice).
pub fn mean_std(xs: &[f64], kind: StdKind) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let mu = xs.iter().sum::<f64>() / n;
    let ss: f64 = xs.iter().map(|x| (x - mu) * (x - mu)).sum();
    let denom = match kind {
        StdKind::Population => n,
        StdKind::Sample => n - 1.0,
    };
    let sigma = if denom > 0.0 {
        (ss / denom).sqrt()
    } else {
        0.0
    };
    (mu, sigma)
}

/// gamma_j of Eq. 7: 1 with no violation, else the smallest lambda_v among the step's violation types (only the
/// most severe counts). Types without a lambda are ignored (they are logged but do not penalize).
pub fn step_gamma<S: AsRef<str>>(
    violations: &[S],
    lambdas: &std::collections::BTreeMap<String, f64>,
) -> f64 {
    violations
        .iter()
        .filter_map(|v| lambdas.get(v.as_ref()).copied())
        .fold(1.0, f64::min)
}

/// The penalized reward of a step: R - (1 - gamma)|R|. Equals gamma * R for R >= 0 (Eq. 8) and never raises a
/// negative reward (method.md section 9).
pub fn penalize(r: f64, gamma: f64) -> f64 {
    r - (1.0 - gamma) * r.abs()
}

fn clip(a: f64, c: f64) -> f64 {
    a.clamp(-c, c)
}

/// SPAR (Eq. 8, section 9): A_j = (R - (1 - gamma_j)|R| - mu_raw) / max(sigma_raw, floor), clipped, with mu_raw
/// and sigma_raw over the **unpenalized** rewards of the group.
pub fn spar(rewards: &[f64], gammas: &[Vec<f64>], p: &AdvantageParams) -> Vec<Vec<f64>> {
    let (mu, sigma) = mean_std(rewards, p.std);
    let d = sigma.max(p.sigma_floor);
    rewards
        .iter()
        .zip(gammas)
        .map(|(&r, g)| {
            g.iter()
                .map(|&gj| clip((penalize(r, gj) - mu) / safe(d), p.adv_clip))
                .collect()
        })
        .collect()
}

/// Plain GRPO: one advantage (R - mu) / max(sigma, floor) per trajectory; step penalties are ignored.
pub fn grpo(rewards: &[f64], gammas: &[Vec<f64>], p: &AdvantageParams) -> Vec<Vec<f64>> {
    let (mu, sigma) = mean_std(rewards, p.std);
    let d = sigma.max(p.sigma_floor);
    spread(
        rewards
            .iter()
            .map(|&r| clip((r - mu) / safe(d), p.adv_clip)),
        gammas,
    )
}

/// The trajectory-level penalty of the "global penalty" ablation: the most severe step's gamma anywhere in the
/// trajectory (Eq. 7 lifted from steps to the trajectory).
pub fn global_gamma(gammas: &[f64]) -> f64 {
    gammas.iter().copied().fold(1.0, f64::min)
}

/// GRPO + global penalty (the ablation SPAR is compared with): every step's penalty is folded into the
/// trajectory reward R' = R - (1 - min_j gamma_j)|R|, and GRPO runs on R' (so the baseline moves with penalties).
pub fn grpo_global_penalty(
    rewards: &[f64],
    gammas: &[Vec<f64>],
    p: &AdvantageParams,
) -> Vec<Vec<f64>> {
    let penalized: Vec<f64> = rewards
        .iter()
        .zip(gammas)
        .map(|(&r, g)| penalize(r, global_gamma(g)))
        .collect();
    grpo(&penalized, gammas, p)
}

/// M2 "enhanced GRPO": A = R - group mean, no std division, one advantage per trajectory (clipped).
pub fn mean_only(rewards: &[f64], gammas: &[Vec<f64>], p: &AdvantageParams) -> Vec<Vec<f64>> {
    let (mu, _) = mean_std(rewards, p.std);
    spread(rewards.iter().map(|&r| clip(r - mu, p.adv_clip)), gammas)
}

/// RLOO: A_i = R_i - mean of the other samples' rewards (0 for a group of one).
pub fn rloo(rewards: &[f64], gammas: &[Vec<f64>], p: &AdvantageParams) -> Vec<Vec<f64>> {
    let n = rewards.len();
    let total: f64 = rewards.iter().sum();
    let adv = rewards.iter().map(|&r| {
        if n > 1 {
            clip(r - (total - r) / (n - 1) as f64, p.adv_clip)
        } else {
            0.0
        }
    });
    spread(adv, gammas)
}

/// Runs the estimator `p.estimator` names. GAE needs the critic and lives in the trainer: for it every step's
/// advantage is 0 here and the trainer fills it in.
pub fn estimate(rewards: &[f64], gammas: &[Vec<f64>], p: &AdvantageParams) -> Vec<Vec<f64>> {
    assert_eq!(rewards.len(), gammas.len(), "one gamma list per reward");
    match p.estimator {
        Estimator::Spar => spar(rewards, gammas, p),
        Estimator::Grpo => grpo(rewards, gammas, p),
        Estimator::GrpoGlobalPenalty => grpo_global_penalty(rewards, gammas, p),
        Estimator::MeanOnly => mean_only(rewards, gammas, p),
        Estimator::Rloo => rloo(rewards, gammas, p),
        Estimator::Gae => gammas.iter().map(|g| vec![0.0; g.len()]).collect(),
    }
}

/// DAPO dynamic sampling: a group carries no signal, and is dropped when the filter is on, only when every
/// advantage in it is exactly 0.
pub fn all_zero(advantages: &[Vec<f64>]) -> bool {
    advantages.iter().flatten().all(|&a| a == 0.0)
}

/// M2 length bonus for a response of `sampled_tokens` tokens: `weight * 4 / sqrt(|o|)`, granted only when every
/// rubric score of the group clears `threshold` (shorter answers win only among answers that are all good).
/// Returns one bonus per sample (all 0 when `weight` is 0 or the group does not qualify).
pub fn length_bonus(
    rubric_scores: &[f64],
    sampled_tokens: &[usize],
    weight: f64,
    threshold: f64,
) -> Vec<f64> {
    let qualifies =
        weight > 0.0 && !rubric_scores.is_empty() && rubric_scores.iter().all(|&s| s >= threshold);
    sampled_tokens
        .iter()
        .map(|&n| {
            if qualifies && n > 0 {
                weight * 4.0 / (n as f64).sqrt()
            } else {
                0.0
            }
        })
        .collect()
}

fn safe(d: f64) -> f64 {
    // sigma_floor = 0 with identical rewards: every numerator is then (penalized R - mu) <= 0; dividing by a tiny
    // number keeps the sign and the clip bounds the size, instead of producing NaN.
    if d > 0.0 { d } else { f64::MIN_POSITIVE }
}

fn spread(per_traj: impl Iterator<Item = f64>, gammas: &[Vec<f64>]) -> Vec<Vec<f64>> {
    per_traj
        .zip(gammas)
        .map(|(a, g)| vec![a; g.len()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(est: Estimator, std: StdKind) -> AdvantageParams {
        AdvantageParams {
            estimator: est,
            std,
            sigma_floor: 0.05,
            adv_clip: 5.0,
        }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn eq7_gamma_is_the_most_severe_lambda() {
        let l: std::collections::BTreeMap<String, f64> = [
            ("repetition".to_string(), 0.1),
            ("rigid_phrasing".to_string(), 0.9),
        ]
        .into();
        close(step_gamma::<&str>(&[], &l), 1.0);
        close(step_gamma(&["rigid_phrasing"], &l), 0.9);
        close(step_gamma(&["rigid_phrasing", "repetition"], &l), 0.1);
        close(step_gamma(&["unknown_type"], &l), 1.0);
    }

    #[test]
    fn eq8_by_hand_population_and_sample_std() {
        // R = [1, 0.5, 0]: mu = 0.5; population sigma = sqrt(((0.5)^2 + 0 + (0.5)^2) / 3) = sqrt(1/6) = 0.408248...
        let r = [1.0, 0.5, 0.0];
        let g = vec![vec![1.0, 0.5], vec![1.0], vec![0.1]];
        let a = spar(&r, &g, &p(Estimator::Spar, StdKind::Population));
        let s = (1.0f64 / 6.0).sqrt();
        close(a[0][0], 0.5 / s); // (1*1 - 0.5) / s
        close(a[0][1], 0.0); // (0.5*1 - 0.5) / s: the penalty pulls step 2 down to the baseline
        close(a[1][0], 0.0);
        close(a[2][0], -0.5 / s); // R = 0: gamma changes nothing
        // sample std: sqrt(0.5 / 2) = 0.5
        let a = spar(&r, &g, &p(Estimator::Spar, StdKind::Sample));
        close(a[0][0], 1.0);
        close(a[0][1], 0.0);
        close(a[2][0], -1.0);
    }

    #[test]
    fn zero_std_group_uses_the_floor_and_the_clip() {
        let r = [0.8, 0.8, 0.8, 0.8];
        let g = vec![vec![1.0], vec![0.9], vec![1.0], vec![1.0]];
        let a = spar(&r, &g, &p(Estimator::Spar, StdKind::Population));
        close(a[0][0], 0.0);
        // (0.9 * 0.8 - 0.8) / 0.05 = -1.6
        close(a[1][0], -1.6);
        let mut q = p(Estimator::Spar, StdKind::Population);
        q.sigma_floor = 0.0;
        let a = spar(&r, &g, &q);
        close(a[1][0], -5.0); // clipped, not -inf
        assert!(!all_zero(&a));
        let a = grpo(&r, &g, &p(Estimator::Grpo, StdKind::Population));
        assert!(
            all_zero(&a),
            "plain GRPO ignores penalties: identical rewards give no signal"
        );
    }

    #[test]
    fn negative_reward_is_never_raised_by_a_penalty() {
        close(penalize(-0.4, 0.5), -0.6);
        close(penalize(0.4, 0.5), 0.2);
        let a = spar(
            &[-0.4, 0.4],
            &[vec![1.0, 0.5], vec![1.0]],
            &p(Estimator::Spar, StdKind::Population),
        );
        // mu = 0, sigma = 0.4: step 1 of sample 0 is -0.6 / 0.4 = -1.5 (below its unpenalized -1).
        close(a[0][0], -1.0);
        close(a[0][1], -1.5);
        close(a[1][0], 1.0);
    }

    #[test]
    fn ablation_estimators_by_hand() {
        let r = [1.0, 0.0];
        let g = vec![vec![0.5, 1.0], vec![1.0]];
        // GRPO: mu 0.5, sigma 0.5: +1 on every step of sample 0.
        assert_eq!(
            grpo(&r, &g, &p(Estimator::Grpo, StdKind::Population)),
            vec![vec![1.0, 1.0], vec![-1.0]]
        );
        // Global penalty: R' = [0.5, 0]; mu 0.25, sigma 0.25.
        assert_eq!(
            grpo_global_penalty(
                &r,
                &g,
                &p(Estimator::GrpoGlobalPenalty, StdKind::Population)
            ),
            vec![vec![1.0, 1.0], vec![-1.0]]
        );
        assert_eq!(
            mean_only(&r, &g, &p(Estimator::MeanOnly, StdKind::Population)),
            vec![vec![0.5, 0.5], vec![-0.5]]
        );
        let r3 = [1.0, 0.0, 0.5];
        let g3 = vec![vec![1.0]; 3];
        let a = rloo(&r3, &g3, &p(Estimator::Rloo, StdKind::Population));
        close(a[0][0], 0.75);
        close(a[1][0], -0.75);
        close(a[2][0], 0.0);
    }

    #[test]
    fn length_bonus_only_when_every_score_clears() {
        assert_eq!(
            length_bonus(&[0.9, 0.7], &[16, 100], 1.0, 0.5),
            vec![1.0, 0.4]
        );
        assert_eq!(
            length_bonus(&[0.9, 0.4], &[16, 100], 1.0, 0.5),
            vec![0.0, 0.0]
        );
        assert_eq!(length_bonus(&[0.9], &[16], 0.0, 0.5), vec![0.0]);
    }
}
