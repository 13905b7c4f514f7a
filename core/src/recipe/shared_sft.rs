//! Which recipe keys a run may change when it starts RL from another run's SFT checkpoint (a shared SFT, as
//! `spar train --from-sft DIR` and `spar ablate` use it): the keys that only the RL phase reads. Anything else
//! (model, data, tokenizer, seed, `trainer.sft_*`, the optimizer knobs SFT shares with RL, the held-out
//! `[eval]`, the rollout environment SFT is played in) would make the shared checkpoint something the run's own
//! recipe would not have produced, so such a change is refused.
//!
//! The comparison is over the recipes as `spar train` reads them: an absent section counts as its defaults.
use super::Recipe;
use serde_json::Value;

/// Keys (dotted paths; an entry also covers every key below it) that only RL reads. `[rewards]` is RL's reward;
/// a run from a shared SFT measures its held-out evaluations with the SFT run's `[rewards]`, so the instrument
/// stays the same across runs that differ here. `trainer.placebo` is listed for the placebo control.
pub const RL_ONLY_KEYS: &[&str] = &[
    "name",
    "rewards",
    "rollout.groups_per_step",
    "rollout.group_size",
    "rollout.sampling",
    "rollout.segmented",
    "rollout.interruption_rate",
    "rollout.tau",
    "rollout.top_m",
    "rollout.max_batch",
    "rollout.kv_slots",
    "rollout.batch_invariant",
    "trainer.steps",
    "trainer.lr",
    "trainer.policy_loss",
    "trainer.eps_low",
    "trainer.eps_high",
    "trainer.dual_clip",
    "trainer.loss_agg",
    "trainer.l_max",
    "trainer.kl_coef",
    "trainer.kl_estimator",
    "trainer.kl_in_reward",
    "trainer.entropy_coef",
    "trainer.tis_cap",
    "trainer.routing_replay",
    "trainer.ppo_epochs",
    "trainer.update_kl",
    "trainer.off_policy_one_step",
    "trainer.out_dir",
    "trainer.save_every",
    "trainer.keep_last",
    "trainer.log_every",
    "trainer.eval_every",
    "trainer.gae",
    "trainer.distill",
    "trainer.placebo",
    "trainer.rl_aux_loss_coef",
    "trainer.offload_optimizer",
    "trainer.profile",
];

/// Whether `key` is RL-only ([`RL_ONLY_KEYS`]).
pub fn is_rl_only(key: &str) -> bool {
    RL_ONLY_KEYS.iter().any(|k| {
        key == *k
            || key
                .strip_prefix(k)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Every dotted key whose value differs between `a` and `b` (an absent section counts as its defaults;
/// arrays compare whole), sorted.
pub fn changed_keys(a: &Recipe, b: &Recipe) -> Vec<String> {
    let (va, vb) = (normalized(a), normalized(b));
    let mut out = Vec::new();
    diff("", &va, &vb, &mut out);
    out.sort();
    out
}

/// The keys that `run` changes from `sft` and that SFT (or the held-out evaluation before RL) reads: a run of
/// `run` cannot start from `sft`'s checkpoint when this is not empty.
pub fn sft_invalidating_changes(sft: &Recipe, run: &Recipe) -> Vec<String> {
    changed_keys(sft, run)
        .into_iter()
        .filter(|k| !is_rl_only(k))
        .collect()
}

/// The recipe as JSON with every absent section filled with its defaults.
fn normalized(r: &Recipe) -> Value {
    let mut r = r.clone();
    r.model.get_or_insert_with(Default::default);
    r.data.get_or_insert_with(Default::default);
    r.rollout.get_or_insert_with(Default::default);
    r.rewards.get_or_insert_with(Default::default);
    r.trainer.get_or_insert_with(Default::default);
    r.eval.get_or_insert_with(Default::default);
    r.distributed.get_or_insert_with(Default::default);
    serde_json::to_value(&r).unwrap_or(Value::Null)
}

fn diff(prefix: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(ma), Value::Object(mb)) => {
            let keys: std::collections::BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
            for k in keys {
                let (x, y) = (
                    ma.get(k).unwrap_or(&Value::Null),
                    mb.get(k).unwrap_or(&Value::Null),
                );
                diff(&join(k), x, y, out);
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(sets: &[&str]) -> Recipe {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Recipe::from_toml_str("[trainer]\nsteps = 3\n", "r.toml", &sets).unwrap()
    }

    #[test]
    fn rl_knobs_are_accepted_and_sft_knobs_refused() {
        let sft = recipe(&["trainer.steps=0"]);
        let arm = recipe(&[
            "trainer.steps=5",
            "trainer.lr=1e-4",
            "rewards.spar.estimator=\"grpo\"",
            "rollout.groups_per_step=3",
            "trainer.rl_aux_loss_coef=0.0",
        ]);
        assert_eq!(
            changed_keys(&sft, &arm),
            vec![
                "rewards.spar.estimator",
                "rollout.groups_per_step",
                "trainer.lr",
                "trainer.rl_aux_loss_coef",
                "trainer.steps"
            ]
        );
        assert!(sft_invalidating_changes(&sft, &arm).is_empty());
        let bad = recipe(&[
            "trainer.sft_lr=1e-2",
            "seed=3",
            "trainer.sft_expert.partial=true",
            "data.max_cases=3",
            "eval.max_cases=2",
            "trainer.warmup_steps=7",
            "trainer.aux_loss_coef=0.0",
        ]);
        assert_eq!(
            sft_invalidating_changes(&sft, &bad),
            vec![
                "data.max_cases",
                "eval.max_cases",
                "seed",
                "trainer.aux_loss_coef",
                "trainer.sft_expert.partial",
                "trainer.sft_lr",
                "trainer.warmup_steps"
            ]
        );
    }

    #[test]
    fn an_absent_section_is_its_defaults() {
        let a = Recipe::from_toml_str("", "a.toml", &[]).unwrap();
        let b = Recipe::from_toml_str("[rollout]\n[eval]\n", "b.toml", &[]).unwrap();
        assert!(changed_keys(&a, &b).is_empty());
    }

    #[test]
    fn prefixes_cover_only_whole_path_segments() {
        assert!(is_rl_only("trainer.gae.gamma"));
        assert!(is_rl_only("trainer.lr"));
        assert!(!is_rl_only("trainer.lr_extra"));
        assert!(!is_rl_only("trainer.sft_lr"));
        assert!(!is_rl_only("trainer.stepsize"));
    }
}
