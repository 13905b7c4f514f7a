//! The TOML recipe: one file with sections `[model] [data] [rollout] [rewards] [trainer] [eval] [distributed]`.
//! A file with only some sections is a valid recipe for the commands that need only those. Unknown keys are
//! rejected with their dotted path; `--set key.path=value` overrides any key before validation.
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Defines an enum-valued recipe key: a serde enum whose TOML spelling is the string after each variant, with
/// `ALL` (every variant, in order), `name()` (the TOML spelling, for logs and audit output) and `Display`.
/// An unknown value is a deserialisation error ("unknown variant `x`, expected one of ...") that `Recipe::load`
/// reports with the dotted key.
macro_rules! recipe_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $spelling:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $spelling)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [$name; [$($spelling),+].len()] = [$($name::$variant),+];

            /// The value as the recipe spells it.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $spelling, )+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

mod data;
mod distributed;
mod eval;
mod model;
pub mod paths;
mod rewards;
mod rollout;
pub mod shared_sft;
mod trainer;

pub use data::{DataSection, Split};
pub use distributed::{DistributedBackend, DistributedSection, Sharding, WeightsAtRest};
pub use eval::{EvalSection, HealthBenchClip, SampledEvalSection};
pub use model::{Dtype, ModelSection};
pub use rewards::*;
pub use rollout::*;
pub use trainer::*;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Free-form name, used for run directories.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub seed: Option<u64>,
    pub model: Option<ModelSection>,
    pub data: Option<DataSection>,
    pub rollout: Option<RolloutSection>,
    pub rewards: Option<RewardsSection>,
    pub trainer: Option<TrainerSection>,
    pub eval: Option<EvalSection>,
    pub distributed: Option<DistributedSection>,
    /// Where the recipe was read from; relative paths inside it resolve against its folder.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Recipe {
    /// Reads a recipe file, applies `--set` overrides (`a.b.c=value`, value parsed as TOML, else a string),
    /// rejects unknown keys with their path, and validates every present section.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Recipe> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Recipe::from_toml_str(&text, &path.display().to_string(), overrides).map(|mut r| {
            r.source = Some(path.to_path_buf());
            r
        })
    }

    pub fn from_toml_str(text: &str, file: &str, overrides: &[String]) -> Result<Recipe> {
        let mut value: toml::Table = toml::from_str(text).map_err(|e| Error::Recipe {
            file: file.into(),
            key: "-".into(),
            msg: e.to_string(),
        })?;
        for ov in overrides {
            apply_override(&mut value, ov).map_err(|msg| Error::Recipe {
                file: file.into(),
                key: ov.clone(),
                msg,
            })?;
        }
        let recipe: Recipe =
            serde_path_to_error::deserialize(toml::Value::Table(value)).map_err(|e| {
                Error::Recipe {
                    file: file.into(),
                    key: e.path().to_string(),
                    msg: e.inner().to_string(),
                }
            })?;
        recipe.validate().map_err(|(key, msg)| Error::Recipe {
            file: file.into(),
            key,
            msg,
        })?;
        Ok(recipe)
    }

    /// Checks values (ranges, consistency) of every present section, then the checks that span sections;
    /// returns the key path and why (a cross-section message names every key involved).
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        fn prefixed(
            sec: &str,
            r: std::result::Result<(), (String, String)>,
        ) -> std::result::Result<(), (String, String)> {
            r.map_err(|(k, m)| (format!("{sec}.{k}"), m))
        }
        if let Some(s) = &self.model {
            prefixed("model", s.validate())?;
        }
        if let Some(s) = &self.data {
            prefixed("data", s.validate())?;
        }
        if let Some(s) = &self.rollout {
            prefixed("rollout", s.validate())?;
        }
        if let Some(s) = &self.rewards {
            prefixed("rewards", s.validate())?;
        }
        if let Some(s) = &self.trainer {
            prefixed("trainer", s.validate())?;
        }
        if let Some(s) = &self.eval {
            prefixed("eval", s.validate())?;
        }
        if let Some(s) = &self.distributed {
            prefixed("distributed", s.validate())?;
        }
        self.validate_across_sections()
    }

    /// Checks between sections. They apply to training recipes (with `[trainer]`); an absent `[rollout]` or
    /// `[rewards]` counts as its defaults, as `spar train` reads it.
    fn validate_across_sections(&self) -> std::result::Result<(), (String, String)> {
        let Some(tr) = &self.trainer else {
            return Ok(());
        };
        let record_routing = self.rollout.as_ref().is_some_and(|r| r.record_routing);
        // With rollout.backend = "openai" the server must run with --enable-return-routed-experts (SGLang,
        // spar serve); the backend asks for the expert choices and fails a reply that lacks them, so a server
        // that cannot give them stops the run at its first generation instead of training without replay.
        check(
            !tr.routing_replay || record_routing,
            "trainer.routing_replay",
            "needs rollout.record_routing = true (the engine must record the experts it chose)",
        )?;
        check(
            !(tr.off_policy_one_step && tr.policy_loss == PolicyLoss::Distill),
            "trainer.off_policy_one_step",
            "applies to RL rounds; offline distillation (trainer.policy_loss = \"distill\") generates with \
             the teachers",
        )?;
        let gae = self
            .rewards
            .as_ref()
            .is_some_and(|r| r.spar.estimator == Estimator::Gae);
        check(
            !(tr.placebo && gae),
            "trainer.placebo",
            "shuffles the step advantages spar-rewards computes; with rewards.spar.estimator = \"gae\" the \
             critic computes them inside the update",
        )?;
        if self
            .distributed
            .as_ref()
            .is_some_and(|d| d.sharded_at_rest())
        {
            let rollout = self.rollout.clone().unwrap_or_default();
            check(
                rollout.backend == RolloutBackendKind::Openai
                    && rollout.weight_sync.kind != WeightSyncKind::Off,
                "distributed.weights_at_rest",
                "= \"sharded\": no rank holds the whole weights to generate with; set [rollout] backend = \
                 \"openai\" with [rollout.weight_sync] (the rollout server gets each policy version and plays \
                 the rounds and the held-out evaluations)",
            )?;
            check(
                tr.kl_coef == 0.0,
                "trainer.kl_coef",
                "needs a frozen KL reference held whole on every rank; with distributed.weights_at_rest = \
                 \"sharded\" set it to 0",
            )?;
            check(
                !gae,
                "rewards.spar.estimator",
                "= \"gae\" trains a critic held whole on every rank; with distributed.weights_at_rest = \
                 \"sharded\" use a group estimator",
            )?;
        }
        if let Some(model) = &self.model {
            check(
                model.path.is_some() || tr.bpe_vocab_size > 0 || !tr.distill.teachers.is_empty(),
                "model.init",
                "needs trainer.bpe_vocab_size > 0 or trainer.distill.teachers (a random model needs a \
                 tokenizer: a new BPE, or the first teacher's)",
            )?;
        }
        Ok(())
    }

    /// Resolves a path written in the recipe against the recipe's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        match (&self.source, p.is_absolute()) {
            (Some(src), false) => src.parent().unwrap_or(Path::new(".")).join(p),
            _ => p.to_path_buf(),
        }
    }

    /// The section or a clear error naming it, for commands that need it.
    pub fn require<'a, T>(&self, section: &'a Option<T>, name: &str) -> Result<&'a T> {
        section.as_ref().ok_or_else(|| Error::Recipe {
            file: self
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            key: name.into(),
            msg: "this command needs this section".into(),
        })
    }
}

fn apply_override(root: &mut toml::Table, ov: &str) -> std::result::Result<(), String> {
    let (key, raw) = ov.split_once('=').ok_or("expected key.path=value")?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("empty key segment".into());
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut table = root;
    for p in &parts[..parts.len() - 1] {
        let entry = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a table"))?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// Range check helper for section validators.
pub(crate) fn check(cond: bool, key: &str, msg: &str) -> std::result::Result<(), (String, String)> {
    if cond {
        Ok(())
    } else {
        Err((key.to_string(), msg.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_its_path() {
        let e = Recipe::from_toml_str("[trainer]\nlr = 1e-5\nlrr = 3\n", "r.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("trainer.lrr") || e.contains("lrr"), "{e}");
        assert!(e.contains("r.toml"), "{e}");
    }

    #[test]
    fn zero_new_tokens_is_refused_naming_the_key() {
        let e = Recipe::from_toml_str("", "r.toml", &["rollout.sampling.max_new_tokens=0".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("r.toml")
                && e.contains("rollout.sampling.max_new_tokens")
                && e.contains(">= 1"),
            "{e}"
        );
    }

    #[test]
    fn overrides_apply_before_validation() {
        let r = Recipe::from_toml_str(
            "[trainer]\nlr = 1e-5\n",
            "r.toml",
            &["trainer.lr=0.001".into(), "name=\"x\"".into()],
        )
        .unwrap();
        assert_eq!(r.trainer.unwrap().lr, 0.001);
        assert_eq!(r.name.as_deref(), Some("x"));
        let e = Recipe::from_toml_str("", "r.toml", &["trainer.lr=-1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("trainer.lr"), "{e}");
    }

    /// Every shipped recipe loads, and re-serialised it loads again to the same recipe (serialising the
    /// reloaded one gives the same text). `recipes/ablate-*.toml` are `spar ablate` specs, not recipes (spar-ablate's
    /// tests load them).
    #[test]
    fn shipped_recipes_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            let spec = p
                .file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with("ablate-"));
            if p.extension().is_some_and(|e| e == "toml") && !spec {
                let r = Recipe::load(&p, &[]).unwrap_or_else(|e| panic!("{e}"));
                let text = toml::to_string(&r).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                let again = Recipe::from_toml_str(&text, &p.display().to_string(), &[])
                    .unwrap_or_else(|e| panic!("re-serialised {e}\n{text}"));
                assert_eq!(toml::to_string(&again).unwrap(), text, "{}", p.display());
                n += 1;
            }
        }
        assert!(n >= 10, "only {n} recipes in {}", dir.display());
    }

    fn error_of(text: &str) -> String {
        Recipe::from_toml_str(text, "r.toml", &[])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn unknown_enum_value_names_the_key_and_the_allowed_values() {
        let e = error_of("[trainer]\nloss_agg = \"token-sum\"\n");
        assert!(e.contains("trainer.loss_agg"), "{e}");
        assert!(
            e.contains("token-sum") && e.contains("seq-mean-token-sum-norm"),
            "{e}"
        );
        let e = error_of("[rewards.fact]\nverifier = \"kb+web\"\n");
        assert!(e.contains("rewards.fact.verifier"), "{e}");
        assert!(e.contains("`kb+llm`") && e.contains("`kb`"), "{e}");
        let e = error_of("[model]\ndtype = \"fp16\"\ninit = {}\n");
        assert!(e.contains("model.dtype") && e.contains("bf16"), "{e}");
        let e = error_of("[rollout.simulator]\nkind = \"human\"\n");
        assert!(
            e.contains("rollout.simulator.kind") && e.contains("`self`"),
            "{e}"
        );
        let e = error_of("[rewards.spar]\ndetectors = [\"repetition\", \"rudeness\"]\n");
        assert!(
            e.contains("rewards.spar.detectors") && e.contains("red_flag"),
            "{e}"
        );
        let e = error_of("[data]\ntrain_split = \"val\"\n");
        assert!(
            e.contains("data.train_split") && e.contains("validation"),
            "{e}"
        );
        let e = error_of("[rewards.spar.lambdas]\nrepetiton = 0.1\n");
        assert!(
            e.contains("rewards.spar.lambdas.repetiton") && e.contains("repetition"),
            "{e}"
        );
        // The spellings that are not plain snake case stay as they were.
        let r = Recipe::from_toml_str(
            "[rewards.fact]\nverifier = \"kb+llm\"\n[rewards.spar]\nestimator = \"grpo_global_penalty\"\n\
             [trainer]\nloss_agg = \"seq-mean-token-sum-norm\"\n",
            "r.toml",
            &[],
        )
        .unwrap();
        let rw = r.rewards.unwrap();
        assert_eq!(rw.fact.verifier, VerifierKind::KbLlm);
        assert_eq!(rw.fact.verifier.to_string(), "kb+llm");
        assert_eq!(rw.spar.estimator.name(), "grpo_global_penalty");
        assert_eq!(r.trainer.unwrap().loss_agg, LossAgg::SeqMeanTokenSumNorm);
    }

    #[test]
    fn cross_section_checks_name_their_keys() {
        let e = error_of("[rewards.spar]\nestimator = \"gae\"\ndapo_filter = true\n");
        assert!(
            e.contains("rewards.spar.dapo_filter") && e.contains("gae"),
            "{e}"
        );
        let e = error_of("[trainer]\nrouting_replay = true\n");
        assert!(
            e.contains("trainer.routing_replay") && e.contains("rollout.record_routing"),
            "{e}"
        );
        Recipe::from_toml_str(
            "[trainer]\nrouting_replay = true\n[rollout]\nrecord_routing = true\n",
            "r.toml",
            &[],
        )
        .unwrap();
        let e = error_of(
            "[trainer]\npolicy_loss = \"distill\"\noff_policy_one_step = true\n\
             [trainer.distill]\nteachers = [\"t\"]\n",
        );
        assert!(
            e.contains("trainer.off_policy_one_step") && e.contains("distill"),
            "{e}"
        );
        let e = error_of("[model]\ninit = {}\n[trainer]\n");
        assert!(
            e.contains("model.init") && e.contains("trainer.bpe_vocab_size"),
            "{e}"
        );
        let e = error_of("[trainer]\nkl_in_reward = true\n");
        assert!(
            e.contains("trainer.kl_in_reward") && e.contains("kl_coef"),
            "{e}"
        );
        let e = error_of("[eval.simulator]\nkind = \"self\"\n");
        assert!(e.contains("eval.simulator.kind"), "{e}");
        let e = error_of("[eval.sampled]\ntemperature = 0.0\n");
        assert!(e.contains("eval.sampled.temperature"), "{e}");
        let e = error_of("[eval.sampled]\nsamples_per_case = 0\n");
        assert!(e.contains("eval.sampled.samples_per_case"), "{e}");
        let e = error_of("[eval.sampled]\nsamples = 4\n");
        assert!(e.contains("samples"), "{e}");
    }

    #[test]
    fn distributed_accepts_data_parallel_and_rejects_what_is_not_built() {
        let r = Recipe::from_toml_str("[distributed]\ndata_parallel = 8\n", "r.toml", &[]).unwrap();
        let d = r.distributed.unwrap();
        assert_eq!(d.data_parallel_for(8), Ok(8));
        let e = d.data_parallel_for(2).unwrap_err();
        assert!(
            e.contains("data_parallel = 8") && e.contains("2 rank(s)"),
            "{e}"
        );
        assert_eq!(DistributedSection::default().data_parallel_for(4), Ok(4));
        let e = error_of("[distributed]\nexpert_parallel = 0\n");
        assert!(e.contains("distributed.expert_parallel"), "{e}");
        let ep4 = DistributedSection {
            expert_parallel: 4,
            ..Default::default()
        };
        assert_eq!(ep4.data_parallel_for(8), Ok(8));
        let e = ep4.data_parallel_for(2).unwrap_err();
        assert!(e.contains("expert_parallel = 4 does not divide"), "{e}");
        let apart = DistributedSection {
            actors: 2,
            ..Default::default()
        };
        assert_eq!(apart.learners_for(3), Ok(1));
        assert_eq!(apart.data_parallel_for(4), Ok(2));
        assert_eq!(apart.world_size(), 3);
        let e = apart.learners_for(2).unwrap_err();
        assert!(e.contains("actors = 2") && e.contains("at least 3"), "{e}");
        let e = apart.learners_for(5).unwrap_err();
        assert!(e.contains("not a multiple of the 3 learner"), "{e}");
        let e = error_of("[distributed]\ntensor_parallel = 2\n");
        assert!(e.contains("distributed.tensor_parallel"), "{e}");
        let r = Recipe::from_toml_str(
            "[distributed]\ndata_parallel = 1\nbackend = \"gloo\"\n",
            "r.toml",
            &[],
        )
        .unwrap();
        assert_eq!(r.distributed.unwrap().backend, DistributedBackend::Gloo);
        let r =
            Recipe::from_toml_str("[distributed]\nsharding = \"full\"\n", "r.toml", &[]).unwrap();
        assert_eq!(r.distributed.unwrap().sharding, Sharding::Full);
        let e = error_of("[distributed]\nsharding = \"zero2\"\n");
        assert!(e.contains("sharding"), "{e}");
    }

    #[test]
    fn enum_names_are_their_toml_spellings() {
        fn round_trip<T, const N: usize>(all: [T; N])
        where
            T: Copy
                + PartialEq
                + std::fmt::Debug
                + std::fmt::Display
                + Serialize
                + serde::de::DeserializeOwned,
        {
            for v in all {
                let text = toml::to_string(&std::collections::BTreeMap::from([("k", v)])).unwrap();
                assert_eq!(text.trim(), format!("k = \"{v}\""));
                let back: std::collections::BTreeMap<String, T> = toml::from_str(&text).unwrap();
                assert_eq!(back["k"], v);
            }
        }
        round_trip(Split::ALL);
        round_trip(Dtype::ALL);
        round_trip(DistributedBackend::ALL);
        round_trip(Sharding::ALL);
        round_trip(HealthBenchClip::ALL);
        round_trip(JudgeKind::ALL);
        round_trip(OnFailure::ALL);
        round_trip(Estimator::ALL);
        round_trip(StdKind::ALL);
        round_trip(StepDetector::ALL);
        round_trip(FactMode::ALL);
        round_trip(ExtractorKind::ALL);
        round_trip(VerifierKind::ALL);
        round_trip(EncoderKind::ALL);
        round_trip(ClaimCacheKind::ALL);
        round_trip(DdxDiscount::ALL);
        round_trip(SimulatorKind::ALL);
        round_trip(RolloutBackendKind::ALL);
        round_trip(PolicyLoss::ALL);
        round_trip(LossAgg::ALL);
        round_trip(KlEstimator::ALL);
        round_trip(LrDecay::ALL);
        round_trip(OptimizerState::ALL);
        round_trip(WeightSyncKind::ALL);
    }

    #[test]
    fn gpu_memory_utilization_is_a_fraction() {
        for bad in ["0.0", "1.5", "-0.2"] {
            let e = error_of(&format!("[rollout]\ngpu_memory_utilization = {bad}\n"));
            assert!(e.contains("rollout.gpu_memory_utilization"), "{bad}: {e}");
        }
        let r = Recipe::from_toml_str("[rollout]\ngpu_memory_utilization = 0.9\n", "r.toml", &[])
            .unwrap();
        assert_eq!(r.rollout.unwrap().gpu_memory_utilization, Some(0.9));
    }

    #[test]
    fn routing_replay_with_an_external_rollout_server_needs_record_routing() {
        let server = "backend = \"openai\"\nendpoint = { base_url = \"http://127.0.0.1:1/v1\", model = \"p\" }\n";
        let r = Recipe::from_toml_str(
            &format!(
                "[trainer]\nrouting_replay = true\n[rollout]\nrecord_routing = true\n{server}"
            ),
            "r.toml",
            &[],
        );
        assert!(r.is_ok(), "{:?}", r.err());
        let e = error_of(&format!(
            "[trainer]\nrouting_replay = true\n[rollout]\n{server}"
        ));
        assert!(
            e.contains("trainer.routing_replay") && e.contains("rollout.record_routing"),
            "{e}"
        );
    }

    #[test]
    fn weights_sharded_at_rest_need_full_sharding_and_the_rollout_server() {
        let e = error_of("[distributed]\nweights_at_rest = \"sharded\"\n");
        assert!(
            e.contains("distributed.weights_at_rest") && e.contains("sharding = \"full\""),
            "{e}"
        );
        let layout = "[distributed]\nsharding = \"full\"\nweights_at_rest = \"sharded\"\n";
        let e = error_of(&format!("{layout}actors = 2\n"));
        assert!(e.contains("actors = 0"), "{e}");
        let e = error_of(&format!("[trainer]\nsteps = 1\n{layout}"));
        assert!(
            e.contains("distributed.weights_at_rest") && e.contains("[rollout.weight_sync]"),
            "{e}"
        );
        let server = "[rollout]\nbackend = \"openai\"\nendpoint = { base_url = \"http://127.0.0.1:1/v1\", model = \"p\" }\n\
                      [rollout.weight_sync]\nkind = \"sglang\"\n";
        let e = error_of(&format!(
            "[trainer]\nsteps = 1\nkl_coef = 0.1\n{server}{layout}"
        ));
        assert!(e.contains("trainer.kl_coef"), "{e}");
        let r = Recipe::from_toml_str(
            &format!("[trainer]\nsteps = 1\n{server}{layout}"),
            "r.toml",
            &[],
        )
        .unwrap();
        assert!(r.distributed.unwrap().sharded_at_rest());
    }

    #[test]
    fn weight_sync_refreshes_only_an_external_server() {
        let e = error_of("[rollout.weight_sync]\nkind = \"sglang\"\n");
        assert!(
            e.contains("rollout.weight_sync.kind") && e.contains("backend = \"openai\""),
            "{e}"
        );
        let r = Recipe::from_toml_str(
            "[rollout]\nbackend = \"openai\"\nendpoint = { base_url = \"http://h:30000/v1\", model = \"m\" }\n\
             [rollout.weight_sync]\nkind = \"sglang\"\ndir = \"/shared/sync\"\n",
            "r.toml",
            &[],
        )
        .unwrap();
        let ws = &r.rollout.unwrap().weight_sync;
        assert_eq!(ws.kind, WeightSyncKind::Sglang);
        assert_eq!(
            ws.dir.as_deref(),
            Some(std::path::Path::new("/shared/sync"))
        );
        assert!(ws.servers.is_empty(), "defaults to the endpoint's root");
        let e = error_of("[rollout.weight_sync]\nkind = \"vllm\"\n");
        assert!(e.contains("sglang") && e.contains("none"), "{e}");
    }
}
