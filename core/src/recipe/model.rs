//! `[model]`: which policy, on what device and dtype. Owner: model.
use super::check;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

recipe_enum! {
    /// Floating-point type of the policy's weights and activations.
    pub enum Dtype {
        /// 32-bit floats (CPU runs, tests).
        Fp32 = "fp32",
        /// bfloat16 (GPU runs).
        Bf16 = "bf16",
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// HF model directory (config.json, safetensors, tokenizer.json). None: the recipe builds one (`init`).
    pub path: Option<PathBuf>,
    /// Weight and activation type.
    pub dtype: Dtype,
    /// "cpu" | "cuda" | "cuda:N" | "auto".
    pub device: String,
    pub activation_checkpointing: bool,
    /// Reference policy for KL / distillation (HF directory); None = the initial policy.
    pub reference: Option<PathBuf>,
    /// Random-init config for tiny demos and tests: a config.json-style table (model_type qwen3 / qwen3_moe).
    pub init: Option<toml::Table>,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            path: None,
            dtype: Dtype::Fp32,
            device: "auto".into(),
            activation_checkpointing: false,
            reference: None,
            init: None,
        }
    }
}

impl ModelSection {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let d = self.device.as_str();
        check(
            d == "cpu"
                || d == "auto"
                || d == "cuda"
                || d.strip_prefix("cuda:")
                    .is_some_and(|n| n.parse::<usize>().is_ok()),
            "device",
            "must be cpu, cuda, cuda:N or auto",
        )?;
        check(
            self.path.is_some() || self.init.is_some(),
            "path",
            "give a model directory (path) or a random-init config (init)",
        )
    }
}
