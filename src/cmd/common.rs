//! The flags every subcommand shares (`--recipe --set --model`, with `--in --out --resume` where a command
//! reads, writes or resumes), and the one way a command turns them into a recipe and a [`Builder`]: flag paths
//! resolve against the working directory, paths inside a recipe against the recipe's folder.
use anyhow::Result;
use spar_app::Builder;
use spar_core::recipe::Recipe;
use std::path::{Path, PathBuf};

/// `--recipe`, `--set` and `--model`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RecipeArgs {
    /// The TOML recipe file, or the name of a shipped recipe (`spar data recipes` lists them). Commands that need
    /// only some sections run on defaults without one.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Override any recipe key: `--set trainer.lr=1e-5` (repeatable; the value is TOML, else a string).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Policy model directory (replaces `[model] path`).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

impl RecipeArgs {
    /// The recipe with `--set` applied, then `--model`, validated. Paths given on the command line (`--model`,
    /// a `--set` of a path key) are made absolute against the working directory first, so they do not resolve
    /// against the recipe's folder (`spar_core::recipe::paths`).
    pub fn load(&self) -> Result<Recipe> {
        let cwd = std::env::current_dir()?;
        let mut sets = spar_core::recipe::paths::overrides_from_cwd(&self.set, &cwd);
        if let Some(m) = &self.model {
            // Said as such here, before a loader reports the first file it misses inside the folder.
            spar_core::Error::must_exist(m).map_err(|e| anyhow::anyhow!("--model: {e}"))?;
            sets.push(format!(
                "model.path={}",
                toml_string(&absolute(m)?.display().to_string())
            ));
        }
        Ok(match &self.recipe {
            Some(p) => crate::recipe_arg::load(p, &sets)?,
            None => Recipe::from_toml_str("", "(no recipe)", &sets)?,
        })
    }

    /// The builder over [`RecipeArgs::load`].
    pub fn builder(&self) -> Result<Builder> {
        Ok(Builder::new(self.load()?))
    }
}

/// `p` made absolute against the working directory.
pub fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(std::path::absolute(p)?)
}

/// A TOML basic string holding `s`.
pub fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `--device` and `--dtype`: shorthands for `--set model.device=...` / `--set model.dtype=...`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DeviceArgs {
    /// cpu, cuda, cuda:N or auto (default: the recipe's `[model] device`).
    #[arg(long)]
    pub device: Option<String>,
    /// fp32 or bf16 (default: the recipe's `[model] dtype`).
    #[arg(long)]
    pub dtype: Option<String>,
}

/// The policy folder a command plays or serves, with the recipe it was chosen from.
pub struct ModelChoice {
    pub builder: Builder,
    /// `--model`, else `[model] path`.
    pub dir: PathBuf,
    pub device: tch::Device,
    pub kind: tch::Kind,
}

impl RecipeArgs {
    /// The recipe with `dev`'s overrides, and the model folder it names (an error when there is none).
    pub fn model_choice(&self, dev: &DeviceArgs) -> Result<ModelChoice> {
        let mut args = self.clone();
        if let Some(d) = &dev.device {
            args.set.push(format!("model.device={}", toml_string(d)));
        }
        if let Some(d) = &dev.dtype {
            args.set.push(format!("model.dtype={}", toml_string(d)));
        }
        let builder = args.builder()?;
        let recipe = builder.recipe();
        let model = recipe.model.clone().unwrap_or_default();
        let dir = model
            .path
            .as_ref()
            .map(|p| recipe.resolve(p))
            .ok_or_else(|| {
                anyhow::anyhow!("no model: give --model DIR (or [model] path in --recipe)")
            })?;
        let (device, kind) = spar_app::device_and_kind(&model)?;
        Ok(ModelChoice {
            builder,
            dir,
            device,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_folder_is_not_found() {
        let args = RecipeArgs {
            model: Some(PathBuf::from("/nonexistent/model")),
            ..Default::default()
        };
        let e = args.load().unwrap_err().to_string();
        assert_eq!(e, "--model: not found: /nonexistent/model");
    }
}
