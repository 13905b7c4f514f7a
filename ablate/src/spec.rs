//! The ablation spec (`spar ablate SPEC.toml`): a base recipe, `--set` variants (named arms) and seeds.
//!
//! ```toml
//! base = "tiny-cpu-partial"      # a shipped recipe's name, or a recipe file (relative to this spec's folder)
//! seeds = [0, 1, 2, 3, 4]
//! baseline = "sft"               # the arm every other arm is compared with (paired by seed)
//! from = "sft"                   # "sft" (default): every arm of a seed starts RL from one shared SFT run;
//!                                # "none": every arm runs its own SFT; or a folder per seed, "runs/sft-s{seed}"
//! [shared]
//! set = ["trainer.sft_expert.reask_rate=0.3"]   # applied to every run, the SFT one included
//! [[arm]]
//! name = "sft"
//! sft_only = true                # no RL: the arm's result is the shared SFT checkpoint's evaluation
//! [[arm]]
//! name = "spar"
//! set = ["rewards.spar.estimator=\"spar\""]
//! ```
//! Unknown keys are errors naming the file and the key; so are an empty grid, duplicate names or seeds, a
//! baseline that is not an arm, and a name that cannot be a folder name.
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One arm: a named list of `--set` overrides on top of the base recipe and `[shared] set`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    pub name: String,
    #[serde(default)]
    pub set: Vec<String>,
    /// No RL: the arm's result is the SFT checkpoint's held-out evaluation (before RL).
    #[serde(default)]
    pub sft_only: bool,
}

/// `[shared]`: overrides every run gets.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Shared {
    #[serde(default)]
    pub set: Vec<String>,
}

/// Where each seed's SFT comes from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum SftSource {
    /// One SFT run per seed, made by `spar ablate` (`OUT/sft-s<seed>/`), that every arm of the seed starts RL from.
    Shared,
    /// Every arm runs its own SFT (arms then differ in SFT noise too, where SFT is not reproducible).
    Own,
    /// A finished SFT run folder per seed (`{seed}` replaced), e.g. from an earlier ablation.
    Path(String),
}

/// The spec as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    base: String,
    seeds: Vec<u64>,
    baseline: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    shared: Shared,
    #[serde(default, rename = "arm")]
    arms: Vec<Arm>,
}

/// A checked spec.
#[derive(Clone, Debug, Serialize)]
pub struct Spec {
    /// The spec file.
    pub file: PathBuf,
    /// The base recipe as written (`base`).
    pub base: String,
    pub seeds: Vec<u64>,
    pub baseline: String,
    pub from: SftSource,
    pub description: Option<String>,
    pub shared: Shared,
    pub arms: Vec<Arm>,
}

impl Spec {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Spec> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading ablation spec {}", path.display()))?;
        Spec::parse(&text, path)
    }

    /// Parses and checks spec text; `file` names it in errors and anchors a relative `base`.
    pub fn parse(text: &str, file: &Path) -> Result<Spec> {
        let name = file.display();
        let de = toml::Deserializer::parse(text)
            .map_err(|e| anyhow::anyhow!("ablation spec {name}: {e}"))?;
        let raw: RawSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            anyhow::anyhow!("ablation spec {name}: {key}: {}", e.inner().message())
        })?;
        let err = |key: &str, msg: String| anyhow::anyhow!("ablation spec {name}: {key}: {msg}");
        if raw.seeds.is_empty() {
            return Err(err("seeds", "needs at least one seed".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &raw.seeds {
            if !seen.insert(*s) {
                return Err(err("seeds", format!("seed {s} is listed twice")));
            }
        }
        if raw.arms.is_empty() {
            return Err(err("arm", "needs at least one [[arm]]".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, a) in raw.arms.iter().enumerate() {
            let key = format!("arm[{i}].name");
            if a.name.is_empty()
                || !a
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(err(
                    &key,
                    format!(
                        "{:?}: a name is letters, digits, '_' and '-' (it names run folders)",
                        a.name
                    ),
                ));
            }
            if !names.insert(a.name.as_str()) {
                return Err(err(&key, format!("{:?} names two arms", a.name)));
            }
            if a.sft_only && !a.set.is_empty() {
                return Err(err(
                    &format!("arm[{i}].set"),
                    "an sft_only arm runs no RL, so it takes no sets (put SFT settings in [shared] set)"
                        .into(),
                ));
            }
            if !a.sft_only && a.name == SFT_RUN {
                return Err(err(
                    &key,
                    format!(
                        "\"{SFT_RUN}\" names the shared SFT runs' folders; an arm of that name must be sft_only"
                    ),
                ));
            }
            for (j, s) in a.set.iter().enumerate() {
                check_set(s).map_err(|m| err(&format!("arm[{i}].set[{j}]"), m))?;
            }
        }
        if raw.arms.iter().filter(|a| a.sft_only).count() > 1 {
            return Err(err("arm", "at most one arm is sft_only".into()));
        }
        for (j, s) in raw.shared.set.iter().enumerate() {
            check_set(s).map_err(|m| err(&format!("shared.set[{j}]"), m))?;
        }
        if !names.contains(raw.baseline.as_str()) {
            return Err(err(
                "baseline",
                format!(
                    "{:?} is not an arm (arms: {})",
                    raw.baseline,
                    names.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let from = match raw.from.as_deref() {
            None | Some("sft") => SftSource::Shared,
            Some("none") => SftSource::Own,
            Some(p) if p.contains("{seed}") => SftSource::Path(p.to_string()),
            Some(p) => {
                return Err(err(
                    "from",
                    format!(
                        "{p:?}: \"sft\" (a shared SFT run per seed), \"none\" (each arm its own SFT), or a \
                         folder per seed containing {{seed}}"
                    ),
                ));
            }
        };
        Ok(Spec {
            file: file.to_path_buf(),
            base: raw.base,
            seeds: raw.seeds,
            baseline: raw.baseline,
            from,
            description: raw.description,
            shared: raw.shared,
            arms: raw.arms,
        })
    }

    /// The arm named `name`.
    pub fn arm(&self, name: &str) -> Option<&Arm> {
        self.arms.iter().find(|a| a.name == name)
    }

    /// The base recipe for `--recipe`: a file next to the spec when there is one (`base` or `base.toml`), else
    /// `base` as written (a shipped recipe's name, resolved by the child `spar train`).
    pub fn base_arg(&self) -> PathBuf {
        let p = Path::new(&self.base);
        let beside = self
            .file
            .parent()
            .map(|d| d.join(p))
            .unwrap_or_else(|| p.to_path_buf());
        let with_ext = beside.with_file_name(format!(
            "{}.toml",
            beside
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        if p.is_absolute() {
            p.to_path_buf()
        } else if beside.is_file() {
            std::path::absolute(&beside).unwrap_or(beside)
        } else if !self.base.ends_with(".toml") && with_ext.is_file() {
            // A shipped recipe's name next to a shipped spec: the recipe file beside it (the source tree's or
            // the shipped data's copy), so an edited checkout runs its own recipe.
            std::path::absolute(&with_ext).unwrap_or(with_ext)
        } else {
            p.to_path_buf()
        }
    }
}

/// The folder-name stem of the shared SFT runs (`OUT/sft-s<seed>`).
pub const SFT_RUN: &str = "sft";

/// A `--set` is `key=value` with a dotted key; the seed is the spec's to set.
fn check_set(s: &str) -> std::result::Result<(), String> {
    let Some((k, _)) = s.split_once('=') else {
        return Err(format!("{s:?} is not key=value"));
    };
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("{s:?} has no key"));
    }
    if k == "seed" {
        return Err("the seed comes from `seeds`".into());
    }
    if k == "trainer.out_dir" {
        return Err("run folders are spar ablate's (OUT/<arm>-s<seed>)".into());
    }
    Ok(())
}

/// Whether `text` reads as an ablation spec rather than a recipe (a top-level `base` and `[[arm]]`): the shipped
/// `recipes/` folder holds both.
pub fn looks_like_spec(text: &str) -> bool {
    toml::from_str::<toml::Table>(text)
        .map(|t| t.contains_key("base") && t.contains_key("arm"))
        .unwrap_or(false)
}

/// One line describing the grid, for the report.
pub fn describe(spec: &Spec) -> String {
    let arms: Vec<String> = spec
        .arms
        .iter()
        .map(|a| {
            if a.sft_only {
                format!("{} (SFT only)", a.name)
            } else if a.set.is_empty() {
                format!("{} (base)", a.name)
            } else {
                format!("{} ({})", a.name, a.set.join(", "))
            }
        })
        .collect();
    format!(
        "base {}, seeds {:?}, baseline {}, arms: {}",
        spec.base,
        spec.seeds,
        spec.baseline,
        arms.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Spec> {
        Spec::parse(text, Path::new("dir/spec.toml"))
    }

    const OK: &str = r#"
base = "tiny-cpu-partial"
seeds = [0, 1]
baseline = "sft"
[shared]
set = ["trainer.lr=1e-4"]
[[arm]]
name = "sft"
sft_only = true
[[arm]]
name = "spar"
set = ["rewards.spar.estimator=\"spar\""]
"#;

    #[test]
    fn a_spec_parses_with_its_defaults() {
        let s = parse(OK).unwrap();
        assert_eq!(s.seeds, vec![0, 1]);
        assert_eq!(s.from, SftSource::Shared);
        assert_eq!(s.arms.len(), 2);
        assert!(s.arm("sft").unwrap().sft_only);
        assert_eq!(s.shared.set, vec!["trainer.lr=1e-4"]);
        assert_eq!(s.base_arg(), PathBuf::from("tiny-cpu-partial"));
        assert!(looks_like_spec(OK));
        assert!(!looks_like_spec("[trainer]\nlr = 1.0\n"));
    }

    fn error(text: &str) -> String {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains("dir/spec.toml"), "{e}");
        e
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let e = error(&OK.replace("baseline = \"sft\"", "baseline = \"sft\"\nseed = 3"));
        assert!(e.contains("seed"), "{e}");
        let e = error(&OK.replace("sft_only = true", "sft_only = true\nsteps = 3"));
        assert!(e.contains("arm[0]") && e.contains("steps"), "{e}");
        let e = error(&OK.replace("seeds = [0, 1]", "seeds = [0, \"one\"]"));
        assert!(e.contains("seeds"), "{e}");
        let e = error(&OK.replace("baseline = \"sft\"", "baseline = \"grpo\""));
        assert!(e.contains("baseline") && e.contains("grpo"), "{e}");
        let e = error(&OK.replace("seeds = [0, 1]", "seeds = [1, 1]"));
        assert!(e.contains("seeds") && e.contains("twice"), "{e}");
        let e = error(&OK.replace("name = \"spar\"", "name = \"sft\""));
        assert!(e.contains("arm[1].name"), "{e}");
        let e = error(&OK.replace("name = \"spar\"", "name = \"a b\""));
        assert!(e.contains("arm[1].name"), "{e}");
        let e = error(&OK.replace(
            "sft_only = true",
            "sft_only = true\nset = [\"trainer.lr=1\"]",
        ));
        assert!(e.contains("arm[0].set"), "{e}");
        let e = error(&OK.replace("\"trainer.lr=1e-4\"", "\"seed=4\""));
        assert!(e.contains("shared.set[0]"), "{e}");
        let e = error(&OK.replace("\"rewards.spar.estimator=\\\"spar\\\"\"", "\"nokey\""));
        assert!(e.contains("arm[1].set[0]"), "{e}");
        let e = error(&OK.replace(
            "baseline = \"sft\"",
            "baseline = \"sft\"\nfrom = \"elsewhere\"",
        ));
        assert!(e.contains("from"), "{e}");
        let e = error("base = \"x\"\nseeds = [0]\nbaseline = \"a\"\n");
        assert!(e.contains("arm"), "{e}");
        let e = error(&OK.replace("base = \"tiny-cpu-partial\"\n", ""));
        assert!(e.contains("base"), "{e}");
    }

    /// The shipped specs (`recipes/ablate-*.toml`) parse, and their base is the recipe file beside them.
    #[test]
    fn shipped_specs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if !(name.starts_with("ablate-") && name.ends_with(".toml")) {
                continue;
            }
            let s = Spec::load(&p).unwrap_or_else(|e| panic!("{e:#}"));
            assert!(s.base_arg().is_file(), "{name}: base {}", s.base);
            assert!(looks_like_spec(&std::fs::read_to_string(&p).unwrap()));
            assert_eq!(s.seeds.len(), 5, "{name}");
            assert!(s.arms.iter().any(|a| a.sft_only), "{name}");
            n += 1;
        }
        assert_eq!(n, 4);
    }

    #[test]
    fn from_takes_a_folder_per_seed_or_none() {
        let s = parse(&OK.replace(
            "baseline = \"sft\"",
            "baseline = \"sft\"\nfrom = \"runs/sft-s{seed}\"",
        ))
        .unwrap();
        assert_eq!(s.from, SftSource::Path("runs/sft-s{seed}".into()));
        let s = parse(&OK.replace("baseline = \"sft\"", "baseline = \"sft\"\nfrom = \"none\""))
            .unwrap();
        assert_eq!(s.from, SftSource::Own);
    }
}
