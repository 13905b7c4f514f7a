//! RL diagnostics of one round, from its samples and scores (issue 14): how much signal the round carried and
//! where it came from. Part of `crate::report::round_metrics` (`rl/*` in `metrics.jsonl` / TensorBoard), so with
//! data-parallel ranks they are the whole round's: `rl_phase` gathers every rank's scores and sample stages once
//! for all the round's metrics.
//!
//! - `rl/zero_variance_groups` (and `/<stage>`): share of groups whose rewards R all agree, so GRPO-style
//!   baselines give them no advantage but step penalties (SPAR);
//! - `rl/informative_samples`: share of samples with a non-zero advantage on some step;
//! - `rl/adv_mean|std|min|max`: over every step of every sample; `rl/penalized_steps`: share of steps with
//!   gamma_j < 1 (a step detector fired);
//! - `rl/stage_mix/<stage>`: share of the round's samples (segments) that play each stage;
//! - `rl/penalty_adv_share`: sum |A_j - A_j(no penalties)| / sum |A_j| over steps, the share of the advantage
//!   the step penalties account for (0 for plain GRPO);
//! - `rl/claims_per_sample`, `rl/lambda_gt_half` (share of samples whose Fact-Aware gate lambda > 0.5),
//!   `rl/r_fact_negative` (share with R_fact < 0: a refuted claim cost reward), `rl/r_fact_p10|p50|p90`
//!   (R_fact's quantiles over the samples that stated a claim), `rl/claim_cache_hit_rate` (share of claim
//!   lookups the claim cache answered without the verifier);
//! - `rl/gate_pass` (of the samples of a stage before Diagnosis that finished it, the share whose stage score
//!   reached tau, Eqs. 5-6) and `rl/gate_pass_groups` (share of such groups with a sample through the gate:
//!   the groups that can promote one to the next stage's pool).
use spar_core::sample::EndReason;
use spar_core::{Sample, Scored, Stage};
use spar_rewards::components as C;
use std::collections::{BTreeMap, HashMap};

/// The stage each sample (group id, sample index) plays: its first one (a segment has one).
pub(crate) fn stage_of(samples: &[Sample]) -> HashMap<(&str, u32), Stage> {
    samples
        .iter()
        .filter_map(|s| Some(((s.group_id.as_str(), s.sample_idx), *s.stages.first()?)))
        .collect()
}

/// Counts and sums of one round, turned into shares by [`RoundTally::metrics`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoundTally {
    groups: f64,
    zero_variance_groups: f64,
    /// Per stage (`Stage::ALL` order; a group counts under its first sample's stage).
    stage_groups: [f64; 4],
    stage_zero_variance: [f64; 4],
    stage_samples: [f64; 4],
    samples: f64,
    informative: f64,
    steps: f64,
    adv_sum: f64,
    adv_sq_sum: f64,
    penalized_steps: f64,
    claims: f64,
    lambda_gt_half: f64,
    r_fact_negative: f64,
    adv_max: f64,
    adv_min: f64,
    /// R_fact of every sample with at least one claim.
    r_facts: Vec<f64>,
    cache_hits: f64,
    cache_lookups: f64,
    adv_abs: f64,
    adv_penalty_abs: f64,
    /// Samples of Inquiry / DDX / Lab that ended Done (through the gate) or GatedOut.
    gate_passed: f64,
    gate_judged: f64,
    /// Groups of those stages, and those with a sample through the gate.
    gate_groups: f64,
    gate_groups_passing: f64,
}

impl RoundTally {
    /// Tallies `scored` (with its `samples`, for their stages). Samples without a score are not counted.
    pub fn of(samples: &[Sample], scored: &[Scored]) -> RoundTally {
        let mut t = RoundTally {
            adv_max: f64::NEG_INFINITY,
            adv_min: f64::INFINITY,
            ..Default::default()
        };
        let stage_of = stage_of(samples);
        // Segments only (one stage each): a whole consultation's Done is not a gate decision.
        let end_of: HashMap<(&str, u32), EndReason> = samples
            .iter()
            .filter(|s| s.stages.len() == 1)
            .map(|s| ((s.group_id.as_str(), s.sample_idx), s.end_reason))
            .collect();
        let mut groups: BTreeMap<&str, Vec<&Scored>> = BTreeMap::new();
        for s in scored {
            groups.entry(s.group_id.as_str()).or_default().push(s);
        }
        for (gid, members) in &groups {
            let stage = members
                .iter()
                .find_map(|s| stage_of.get(&(*gid, s.sample_idx)).copied());
            let lo = members
                .iter()
                .map(|s| s.reward)
                .fold(f64::INFINITY, f64::min);
            let hi = members
                .iter()
                .map(|s| s.reward)
                .fold(f64::NEG_INFINITY, f64::max);
            let flat = (hi - lo).abs() <= 1e-9;
            t.groups += 1.0;
            t.zero_variance_groups += flat as u8 as f64;
            if let Some(st) = stage {
                t.stage_groups[st.index()] += 1.0;
                t.stage_zero_variance[st.index()] += flat as u8 as f64;
            }
            if stage.is_some_and(|st| st != Stage::Diag) {
                let ends: Vec<EndReason> = members
                    .iter()
                    .filter_map(|s| end_of.get(&(*gid, s.sample_idx)).copied())
                    .filter(|e| matches!(e, EndReason::Done | EndReason::GatedOut))
                    .collect();
                let passed = ends.iter().filter(|e| **e == EndReason::Done).count() as f64;
                t.gate_passed += passed;
                t.gate_judged += ends.len() as f64;
                t.gate_groups += 1.0;
                t.gate_groups_passing += (passed > 0.0) as u8 as f64;
            }
            for s in members {
                t.samples += 1.0;
                if let Some(st) = stage_of.get(&(*gid, s.sample_idx)) {
                    t.stage_samples[st.index()] += 1.0;
                }
                t.informative += s.steps.iter().any(|x| x.advantage != 0.0) as u8 as f64;
                for x in &s.steps {
                    t.steps += 1.0;
                    t.adv_sum += x.advantage;
                    t.adv_sq_sum += x.advantage * x.advantage;
                    t.penalized_steps += (x.gamma < 1.0) as u8 as f64;
                    t.adv_max = t.adv_max.max(x.advantage);
                    t.adv_min = t.adv_min.min(x.advantage);
                }
                t.claims += s.claims.len() as f64;
                if !s.claims.is_empty() {
                    t.r_facts.push(s.r_fact);
                }
                let comp = |k: &str| s.components.get(k).copied().unwrap_or(0.0);
                t.cache_hits += comp(C::CLAIMS_CACHED);
                t.cache_lookups += comp(C::CLAIMS_CACHED) + comp(C::CLAIMS_VERIFIED);
                t.adv_abs += comp(C::ADV_ABS);
                t.adv_penalty_abs += comp(C::ADV_PENALTY_ABS);
                t.lambda_gt_half += (s.lambda > 0.5) as u8 as f64;
                t.r_fact_negative += (s.r_fact < 0.0) as u8 as f64;
            }
        }
        t
    }

    /// The metrics (see the module doc); shares of an empty count are left out.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        let mut share = |k: String, n: f64, d: f64| {
            if d > 0.0 {
                out.push((k, n / d));
            }
        };
        share(
            "rl/zero_variance_groups".into(),
            self.zero_variance_groups,
            self.groups,
        );
        for st in Stage::ALL {
            let i = st.index();
            share(
                format!("rl/zero_variance_groups/{}", st.name()),
                self.stage_zero_variance[i],
                self.stage_groups[i],
            );
            share(
                format!("rl/stage_mix/{}", st.name()),
                self.stage_samples[i],
                self.samples,
            );
        }
        share(
            "rl/informative_samples".into(),
            self.informative,
            self.samples,
        );
        share(
            "rl/penalized_steps".into(),
            self.penalized_steps,
            self.steps,
        );
        share("rl/claims_per_sample".into(), self.claims, self.samples);
        share(
            "rl/lambda_gt_half".into(),
            self.lambda_gt_half,
            self.samples,
        );
        share(
            "rl/r_fact_negative".into(),
            self.r_fact_negative,
            self.samples,
        );
        share(
            "rl/claim_cache_hit_rate".into(),
            self.cache_hits,
            self.cache_lookups,
        );
        share("rl/gate_pass".into(), self.gate_passed, self.gate_judged);
        share(
            "rl/penalty_adv_share".into(),
            self.adv_penalty_abs,
            self.adv_abs,
        );
        share(
            "rl/gate_pass_groups".into(),
            self.gate_groups_passing,
            self.gate_groups,
        );
        if !self.r_facts.is_empty() {
            let mut v = self.r_facts.clone();
            v.sort_by(f64::total_cmp);
            // Nearest-rank quantile: the smallest value with at least q of the samples at or below it.
            let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
            out.push(("rl/r_fact_p10".into(), q(0.1)));
            out.push(("rl/r_fact_p50".into(), q(0.5)));
            out.push(("rl/r_fact_p90".into(), q(0.9)));
        }
        if self.steps > 0.0 {
            let mean = self.adv_sum / self.steps;
            let var = (self.adv_sq_sum / self.steps - mean * mean).max(0.0);
            out.push(("rl/adv_mean".into(), mean));
            out.push(("rl/adv_std".into(), var.sqrt()));
            out.push(("rl/adv_max".into(), self.adv_max));
            out.push(("rl/adv_min".into(), self.adv_min));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spar_core::sample::StepScore;

    fn scored(group: &str, idx: u32, reward: f64, adv: &[(f64, f64)]) -> Scored {
        let mut s: Scored = serde_json::from_value(serde_json::json!({
            "schema_version": 1, "run_id": "r", "case_id": "c", "group_id": group, "sample_idx": idx,
            "R_task": reward, "rubric": [], "claims": [], "R_fact": 0.0, "lambda": 0.0, "R": reward, "steps": []
        }))
        .unwrap();
        s.steps = adv
            .iter()
            .map(|&(a, g)| StepScore {
                violations: vec![],
                gamma: g,
                advantage: a,
            })
            .collect();
        s
    }

    #[test]
    fn counts_flat_groups_informative_samples_and_advantage_extremes() {
        let sc = vec![
            // A flat group whose one penalized step still carries an advantage (SPAR).
            scored("g1", 0, 0.5, &[(0.0, 1.0), (-0.4, 0.5)]),
            scored("g1", 1, 0.5, &[(0.0, 1.0)]),
            // A group with variance.
            scored("g2", 0, 1.0, &[(1.0, 1.0)]),
            scored("g2", 1, 0.0, &[(-1.0, 1.0)]),
        ];
        let t = RoundTally::of(&[], &sc);
        let m: BTreeMap<String, f64> = t.metrics().into_iter().collect();
        assert_eq!(m["rl/zero_variance_groups"], 0.5);
        assert_eq!(m["rl/informative_samples"], 0.75);
        assert_eq!(m["rl/penalized_steps"], 0.2);
        assert_eq!(m["rl/adv_max"], 1.0);
        assert_eq!(m["rl/adv_min"], -1.0);
        assert!((m["rl/adv_mean"] - (-0.4 / 5.0)).abs() < 1e-12);
        // No samples given: no stage is known, so no group counts under a stage and no sample in the mix.
        assert!(!m.contains_key("rl/zero_variance_groups/inquiry"));
        assert_eq!(m["rl/stage_mix/inquiry"], 0.0);
    }

    fn sample(group: &str, idx: u32, stage: &str) -> Sample {
        serde_json::from_value(serde_json::json!({
            "schema_version": 1, "run_id": "r", "case_id": "c", "group_id": group, "sample_idx": idx,
            "stages": [stage], "mode": "fresh", "policy_version": 0, "end_reason": "done", "token_ids": [],
            "loss_mask": [], "rollout_logprobs": [], "steps": [], "turns": []
        }))
        .unwrap()
    }

    #[test]
    fn groups_and_samples_count_under_their_stage() {
        let samples = vec![
            sample("a", 0, "inquiry"),
            sample("a", 1, "inquiry"),
            sample("b", 0, "ddx"),
            sample("b", 1, "ddx"),
            sample("c", 0, "ddx"),
            sample("c", 1, "ddx"),
        ];
        let sc = vec![
            scored("a", 0, 0.3, &[(0.0, 1.0)]),
            scored("a", 1, 0.3, &[(0.0, 1.0)]),
            scored("b", 0, 1.0, &[(1.0, 1.0)]),
            scored("b", 1, 0.0, &[(-1.0, 1.0)]),
            scored("c", 0, 0.5, &[(0.0, 1.0)]),
            scored("c", 1, 0.5, &[(0.0, 1.0)]),
        ];
        let m: BTreeMap<String, f64> = RoundTally::of(&samples, &sc)
            .metrics()
            .into_iter()
            .collect();
        assert_eq!(m["rl/zero_variance_groups/inquiry"], 1.0);
        assert_eq!(m["rl/zero_variance_groups/ddx"], 0.5);
        assert!(!m.contains_key("rl/zero_variance_groups/lab"));
        assert!((m["rl/stage_mix/inquiry"] - 1.0 / 3.0).abs() < 1e-12);
        assert!((m["rl/stage_mix/ddx"] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m["rl/stage_mix/lab"], 0.0);
    }

    #[test]
    fn gate_passes_cache_hits_and_r_fact_quantiles() {
        let mut samples = vec![
            sample("a", 0, "inquiry"),
            sample("a", 1, "inquiry"),
            sample("b", 0, "ddx"),
            sample("b", 1, "ddx"),
            sample("d", 0, "diag"),
        ];
        samples[1].end_reason = EndReason::GatedOut;
        samples[2].end_reason = EndReason::GatedOut;
        samples[3].end_reason = EndReason::GatedOut;
        let mut sc = vec![
            scored("a", 0, 0.3, &[(0.0, 1.0)]),
            scored("a", 1, 0.3, &[(0.0, 1.0)]),
            scored("b", 0, 1.0, &[(1.0, 1.0)]),
            scored("b", 1, 0.0, &[(-1.0, 1.0)]),
            scored("d", 0, 0.5, &[(0.0, 1.0)]),
        ];
        let claim: spar_core::sample::ClaimRecord = serde_json::from_value(serde_json::json!({
            "text": "x", "label": "refuted", "saliency": 1.0
        }))
        .unwrap();
        for (i, r) in [(0, -1.0), (2, -0.5), (4, 0.0)] {
            sc[i].claims = vec![claim.clone()];
            sc[i].r_fact = r;
            sc[i].components.insert("claims_cached".into(), 1.0);
            sc[i].components.insert("claims_verified".into(), 2.0);
            sc[i].components.insert("adv_abs".into(), 2.0);
            sc[i].components.insert("adv_penalty_abs".into(), 0.5);
        }
        let m: BTreeMap<String, f64> = RoundTally::of(&samples, &sc)
            .metrics()
            .into_iter()
            .collect();
        // Inquiry: 1 of 2 through the gate; DDX: 0 of 2; the Diagnosis group has no gate.
        assert_eq!(m["rl/gate_pass"], 0.25);
        assert_eq!(m["rl/gate_pass_groups"], 0.5);
        assert!((m["rl/claim_cache_hit_rate"] - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(m["rl/r_fact_p10"], -1.0);
        assert_eq!(m["rl/r_fact_p50"], -0.5);
        assert_eq!(m["rl/r_fact_p90"], 0.0);
        assert_eq!(m["rl/penalty_adv_share"], 0.25);
    }
}
