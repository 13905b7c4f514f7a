//! The TOML recipe: one file with sections `[model] [data] [rollout] [rewards] [trainer] [eval] [distributed]`.
//! A file with only some sections is a valid recipe for the commands that need only those. Unknown keys are
//! rejected with their dotted path; `--set key.path=value` overrides any key before validation.
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod data;
mod distributed;
mod eval;
mod model;
mod rewards;
mod rollout;
mod trainer;

pub use data::DataSection;
pub use distributed::DistributedSection;
pub use eval::EvalSection;
pub use model::ModelSection;
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

    /// Checks values (ranges, consistency) of every present section; returns the key path and why.
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

    #[test]
    fn shipped_recipes_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                Recipe::load(&p, &[]).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}
