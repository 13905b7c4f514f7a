//! The one rule for relative paths: a path typed on the command line (a flag, and a `--set` override of a path
//! key) resolves against the working directory; a path written inside a recipe file resolves against that
//! file's folder ([`super::Recipe::resolve`]). [`PATH_KEYS`] are the recipe's path-valued keys, so that
//! [`overrides_from_cwd`] can make a `--set` path absolute before the recipe would read it as its own.
use std::path::Path;

/// Every recipe key whose value is a path (or, `trainer.distill.teachers`, a list of paths). A core test checks
/// that the recipe sections declare exactly this many path fields.
pub const PATH_KEYS: &[&str] = &[
    "model.path",
    "model.reference",
    "data.cases",
    "data.splits",
    "data.knowledge_base",
    "eval.healthbench",
    "rewards.fact.cache_path",
    "rewards.dynamic_rubrics.candidates",
    "rollout.weight_sync.dir",
    "trainer.out_dir",
    "trainer.distill.teachers",
    "trainer.distill.teacher_samples",
];

/// `--set` overrides with the relative paths of [`PATH_KEYS`] made absolute against `cwd` (other overrides,
/// and values that do not read as a path or a list of paths, unchanged).
pub fn overrides_from_cwd(overrides: &[String], cwd: &Path) -> Vec<String> {
    overrides
        .iter()
        .map(|ov| {
            let Some((key, raw)) = ov.split_once('=') else {
                return ov.clone();
            };
            if !PATH_KEYS.contains(&key.trim()) {
                return ov.clone();
            }
            // The value as `apply_override` reads it: TOML, else the bare text as a string.
            let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_string()));
            let abs = |v: &toml::Value| match v {
                toml::Value::String(s) if Path::new(s).is_relative() && !s.is_empty() => {
                    toml::Value::String(cwd.join(s).display().to_string())
                }
                other => other.clone(),
            };
            let value = match &value {
                toml::Value::Array(items) => toml::Value::Array(items.iter().map(abs).collect()),
                v => abs(v),
            };
            format!("{key}={value}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_paths_resolve_against_the_working_directory() {
        let cwd = Path::new("/work/here");
        let out = overrides_from_cwd(
            &[
                "data.cases=my/cases.jsonl".into(),
                "model.path=\"/abs/model\"".into(),
                "trainer.distill.teachers=[\"t1\", \"/abs/t2\"]".into(),
                "trainer.lr=1e-5".into(),
                "eval.healthbench=\"hb.jsonl\"".into(),
            ],
            cwd,
        );
        assert_eq!(out[0], "data.cases=\"/work/here/my/cases.jsonl\"");
        assert_eq!(out[1], "model.path=\"/abs/model\"");
        assert_eq!(
            out[2],
            "trainer.distill.teachers=[\"/work/here/t1\", \"/abs/t2\"]"
        );
        assert_eq!(out[3], "trainer.lr=1e-5");
        assert_eq!(out[4], "eval.healthbench=\"/work/here/hb.jsonl\"");
        // The recipe then holds absolute paths, which resolve against nothing else.
        let r = crate::recipe::Recipe::from_toml_str("", "r.toml", &out).unwrap();
        assert_eq!(
            r.data.unwrap().cases.unwrap(),
            Path::new("/work/here/my/cases.jsonl")
        );
    }

    /// Every path field of the recipe sections is listed in [`PATH_KEYS`] (a new one must be added there, or a
    /// `--set` of it would resolve against the recipe's folder).
    #[test]
    fn path_keys_cover_every_path_field() {
        let sources = [
            include_str!("data.rs"),
            include_str!("distributed.rs"),
            include_str!("eval.rs"),
            include_str!("model.rs"),
            include_str!("rewards.rs"),
            include_str!("rollout.rs"),
            include_str!("trainer.rs"),
        ];
        let fields: usize = sources
            .iter()
            .map(|s| {
                s.lines()
                    .filter(|l| {
                        l.trim_start().starts_with("pub ") && l.contains("PathBuf>,")
                            || l.trim_end().ends_with(": PathBuf,")
                    })
                    .count()
            })
            .sum();
        assert_eq!(fields, PATH_KEYS.len(), "{PATH_KEYS:?}");
    }
}
