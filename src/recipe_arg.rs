//! `--recipe`: a recipe file, or the name of a shipped recipe (`spar train --recipe tiny-cpu` from any folder).
//!
//! A shipped recipe is read from the shipped data (`spar_data::shipped`), so the paths inside it resolve as they
//! do in the source tree (`../data/kb` reaches the shipped knowledge base). Its run folder is the exception: a
//! relative `trainer.out_dir` lands where it would for a checkout in the current folder (`../runs/tiny-cpu`
//! -> `./runs/tiny-cpu`), not inside the shipped data.
use anyhow::Context;
use spar_core::recipe::Recipe;
use std::path::{Component, Path, PathBuf};

/// Loads `--recipe ARG` with `--set` overrides: the file `ARG` when it exists, else the shipped recipe named
/// `ARG` (with or without `.toml`). An error lists the shipped names when `ARG` is neither.
pub fn load(arg: &Path, overrides: &[String]) -> anyhow::Result<Recipe> {
    if arg.is_file() {
        return Ok(Recipe::load(arg, overrides)?);
    }
    let shipped = arg
        .to_str()
        .map(spar_data::shipped::recipe_path)
        .transpose()?
        .flatten();
    let Some(path) = shipped else {
        let names = spar_data::shipped::recipe_names().unwrap_or_default();
        anyhow::bail!(
            "recipe {}: no such file, and no shipped recipe of that name (shipped: {}; `spar data recipes` lists them)",
            arg.display(),
            names.join(", ")
        );
    };
    let mut recipe = Recipe::load(&path, overrides)?;
    if let Some(trainer) = recipe.trainer.as_mut()
        && trainer.out_dir.is_relative()
    {
        let cwd = std::env::current_dir().context("reading the current folder")?;
        trainer.out_dir =
            lexical_join(&cwd.join(spar_data::shipped::RECIPES_DIR), &trainer.out_dir);
    }
    Ok(recipe)
}

/// `base.join(rel)` with `.` and `..` folded without touching the file system (`base` need not exist).
fn lexical_join(base: &Path, rel: &Path) -> PathBuf {
    let mut out = base.to_path_buf();
    for c in rel.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_join_folds_parent_components() {
        assert_eq!(
            lexical_join(Path::new("/w/recipes"), Path::new("../runs/./tiny")),
            PathBuf::from("/w/runs/tiny")
        );
        assert_eq!(
            lexical_join(Path::new("/w/recipes"), Path::new("out")),
            PathBuf::from("/w/recipes/out")
        );
    }

    #[test]
    fn unknown_names_list_the_shipped_recipes() {
        let e = load(Path::new("no-such-recipe"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no-such-recipe") && e.contains("tiny-cpu"),
            "{e}"
        );
    }

    #[test]
    fn a_shipped_recipe_runs_into_the_current_folder() {
        let r = load(Path::new("tiny-cpu"), &["trainer.steps=1".into()]).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            r.trainer.as_ref().unwrap().out_dir,
            cwd.join("runs/tiny-cpu")
        );
        assert_eq!(r.trainer.unwrap().steps, 1);
        assert!(r.source.unwrap().ends_with("recipes/tiny-cpu.toml"));
    }
}
