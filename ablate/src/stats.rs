//! The statistics of an ablation over seeds: the mean, a percentile bootstrap confidence interval of the mean
//! (seeded, so a report is reproducible), and the exact paired sign-flip permutation test.
//!
//! With n seeds the sign-flip test has 2^n equally likely sign patterns under the null (no difference), so its
//! smallest two-sided p-value is 2 / 2^n: 0.0625 for 5 seeds. A p-value above 0.05 with 5 seeds is therefore no
//! evidence of "no effect"; the CI of the paired difference says how large an effect the data allow.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// The seed of every bootstrap (a report recomputed from the same runs gives the same intervals).
pub const BOOTSTRAP_SEED: u64 = 0x5ba5_ab1a;
/// Resamples of the bootstrap CIs in the table.
pub const RESAMPLES: usize = 10_000;
/// Above this many seeds the sign-flip test samples sign patterns instead of enumerating them.
pub const EXACT_MAX_N: usize = 20;

/// Mean of `xs` (NaN when empty).
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        f64::NAN
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// The `q` quantile (0..=1) of sorted `xs`, linearly interpolated between order statistics.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Percentile bootstrap CI at `level` (e.g. 0.95) of the mean of `xs`: `resamples` means of n draws with
/// replacement, RNG seeded with `seed`. One value gives a zero-width interval at it; none gives NaN.
pub fn bootstrap_ci(xs: &[f64], level: f64, resamples: usize, seed: u64) -> (f64, f64) {
    match xs.len() {
        0 => return (f64::NAN, f64::NAN),
        1 => return (xs[0], xs[0]),
        _ => {}
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = xs.len();
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| (0..n).map(|_| xs[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    (quantile(&means, tail), quantile(&means, 1.0 - tail))
}

/// A paired sign-flip permutation test of mean(d) = 0.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct SignFlip {
    /// Two-sided p-value: the share of sign patterns whose |mean| is at least the observed one.
    pub p: f64,
    /// The smallest p-value this many pairs can give (2 / 2^n when exact).
    pub min_p: f64,
    /// Whether every sign pattern was enumerated (else `SAMPLED` patterns were drawn).
    pub exact: bool,
}

/// Sign patterns drawn when n > [`EXACT_MAX_N`].
pub const SAMPLED: usize = 100_000;

/// The exact two-sided sign-flip test over paired differences `d` (sampled above [`EXACT_MAX_N`] pairs, with
/// the observed pattern counted, so p is never 0). Differences within 1e-12 of the observed |mean| count as at
/// least as extreme.
pub fn sign_flip_test(d: &[f64]) -> SignFlip {
    let n = d.len();
    if n == 0 {
        return SignFlip {
            p: f64::NAN,
            min_p: f64::NAN,
            exact: true,
        };
    }
    let observed = d.iter().sum::<f64>().abs();
    let tol = 1e-12 * (1.0 + observed);
    if n <= EXACT_MAX_N {
        let total = 1u64 << n;
        let mut extreme = 0u64;
        for mask in 0..total {
            let s: f64 = d
                .iter()
                .enumerate()
                .map(|(i, x)| if mask >> i & 1 == 1 { -x } else { *x })
                .sum();
            if s.abs() >= observed - tol {
                extreme += 1;
            }
        }
        return SignFlip {
            p: extreme as f64 / total as f64,
            min_p: 2.0 / total as f64,
            exact: true,
        };
    }
    let mut rng = ChaCha8Rng::seed_from_u64(BOOTSTRAP_SEED);
    let mut extreme = 1usize;
    for _ in 0..SAMPLED {
        let s: f64 = d
            .iter()
            .map(|x| if rng.random_bool(0.5) { -x } else { *x })
            .sum();
        if s.abs() >= observed - tol {
            extreme += 1;
        }
    }
    SignFlip {
        p: extreme as f64 / (SAMPLED + 1) as f64,
        min_p: 1.0 / (SAMPLED + 1) as f64,
        exact: false,
    }
}

/// Mean and CI of one arm's values over seeds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Estimate {
    pub n: usize,
    pub mean: f64,
    pub ci: (f64, f64),
}

/// [`Estimate`] of `xs` with the table's bootstrap (95%, [`RESAMPLES`], [`BOOTSTRAP_SEED`]).
pub fn estimate(xs: &[f64]) -> Estimate {
    Estimate {
        n: xs.len(),
        mean: mean(xs),
        ci: bootstrap_ci(xs, 0.95, RESAMPLES, BOOTSTRAP_SEED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let xs = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&xs, 0.0), 1.0);
        assert_eq!(quantile(&xs, 0.5), 3.0);
        assert_eq!(quantile(&xs, 1.0), 5.0);
        assert!((quantile(&xs, 0.125) - 1.5).abs() < 1e-12);
    }

    #[test]
    fn bootstrap_ci_contains_the_mean_and_is_reproducible() {
        let xs = [0.71, 0.74, 0.69, 0.80, 0.77];
        let (lo, hi) = bootstrap_ci(&xs, 0.95, RESAMPLES, 1);
        let m = mean(&xs);
        assert!(lo < m && m < hi, "{lo} {m} {hi}");
        // Bootstrap means never leave the data's range; with 5 points the 95% interval is strictly inside it.
        assert!(lo > 0.69 && hi < 0.80, "{lo} {hi}");
        assert_eq!(bootstrap_ci(&xs, 0.95, RESAMPLES, 1), (lo, hi));
        // A wider level gives a wider interval.
        let (lo99, hi99) = bootstrap_ci(&xs, 0.99, RESAMPLES, 1);
        assert!(lo99 <= lo && hi99 >= hi);
    }

    #[test]
    fn bootstrap_of_two_points_has_the_known_distribution() {
        // Resample means of {0, 1} are 0 (p 1/4), 0.5 (p 1/2), 1 (p 1/4): the 2.5% and 97.5% quantiles are 0 and 1,
        // and the 30% / 70% quantiles 0.5.
        let xs = [0.0, 1.0];
        assert_eq!(bootstrap_ci(&xs, 0.95, RESAMPLES, 7), (0.0, 1.0));
        assert_eq!(bootstrap_ci(&xs, 0.4, RESAMPLES, 7), (0.5, 0.5));
        assert_eq!(bootstrap_ci(&[0.3], 0.95, RESAMPLES, 7), (0.3, 0.3));
        assert_eq!(bootstrap_ci(&[2.0, 2.0, 2.0], 0.95, 100, 7), (2.0, 2.0));
        assert!(bootstrap_ci(&[], 0.95, 100, 7).0.is_nan());
    }

    #[test]
    fn sign_flip_p_values_match_hand_counts() {
        // Five positive differences: only all-plus and all-minus reach |sum| = 15: p = 2/32.
        let t = sign_flip_test(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!((t.p, t.min_p, t.exact), (0.0625, 0.0625, true));
        // [3, 1, 1, 1]: |sum| >= 6 only when all signs agree: 2/16.
        assert_eq!(sign_flip_test(&[3.0, 1.0, 1.0, 1.0]).p, 0.125);
        // [2, 1, 1, -1] (sum 3): the 16 patterns of ±2±1±1±1 sum to ±5 (2 patterns), ±3 (6), ±1 (8); |sum| >= 3
        // in 8 of 16 -> 0.5.
        assert_eq!(sign_flip_test(&[2.0, 1.0, 1.0, -1.0]).p, 0.5);
        // A zero mean: every pattern is at least as extreme.
        assert_eq!(sign_flip_test(&[1.0, -1.0]).p, 1.0);
        // Ten equal positive differences: 2 / 1024.
        let t = sign_flip_test(&[0.1; 10]);
        assert!((t.p - 2.0 / 1024.0).abs() < 1e-15, "{}", t.p);
        assert!(sign_flip_test(&[]).p.is_nan());
    }

    #[test]
    fn sign_flip_samples_above_the_exact_limit() {
        let d: Vec<f64> = (0..24)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let t = sign_flip_test(&d);
        assert!(!t.exact && t.p > 0.9, "{t:?}");
        let t = sign_flip_test(&[1.0; 24]);
        assert!(!t.exact && t.p < 1e-4, "{t:?}");
    }
}
