//! The data spar ships (the 480 cases and their splits, the knowledge base, the example recipes), compiled into
//! the binary so that a copied or `cargo install`ed `spar` finds it from any directory.
//!
//! Loaders read files (`load_cases`, `KnowledgeBase::load`, `Recipe::load`) and audit manifests hash them, so the
//! embedded bytes are written out once, as they are (the gzipped KB files stay gzipped; their loaders inflate
//! them), into a folder named by the content's hash: `$XDG_CACHE_HOME/spar/shipped-<version>-<hash>/`
//! (`~/.cache/...` without XDG_CACHE_HOME, the system temp folder without a home). A folder of that name is
//! complete: it is written under a temporary name and renamed into place, so concurrent first runs race
//! harmlessly and an interrupted one leaves no half-written folder behind.
//!
//! `$SPAR_DATA` overrides the embedded copy: a folder laid out like the source tree (`data/cases/`, `data/kb/`,
//! `recipes/`), e.g. a checkout of spar or an edited copy of the shipped folder. The layout is the same either
//! way, so a shipped recipe's relative paths (`../data/kb`) reach the shipped data.
use sha2::{Digest, Sha256};
use spar_core::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable naming a folder that replaces the embedded data (layout: [`CASES_DIR`], [`KB_DIR`],
/// [`RECIPES_DIR`] under it).
pub const DATA_ENV: &str = "SPAR_DATA";
/// The shipped cases' folder, relative to the data root.
pub const CASES_DIR: &str = "data/cases";
/// The knowledge base's folder, relative to the data root.
pub const KB_DIR: &str = "data/kb";
/// The example recipes' folder, relative to the data root.
pub const RECIPES_DIR: &str = "recipes";

/// One embedded file: its path under the data root and its bytes.
struct Embedded {
    path: &'static str,
    bytes: &'static [u8],
}

macro_rules! embed {
    ($root:literal, $path:literal) => {
        Embedded {
            path: $path,
            bytes: include_bytes!(concat!($root, $path)),
        }
    };
}

/// Every shipped file. `tests/it/shipped.rs` checks that this list is exactly the files of `data/cases/`,
/// `data/kb/` and `recipes/` in the source tree, so a file added there and not here fails a test.
const FILES: &[Embedded] = &[
    embed!("../../", "data/cases/cases.jsonl"),
    embed!("../../", "data/cases/splits.json"),
    embed!("../../", "data/cases/icd10cm-codes.tsv"),
    embed!("../../", "data/kb/MANIFEST.json"),
    embed!("../../", "data/kb/antidotes.toml"),
    embed!("../../", "data/kb/concepts.tsv"),
    embed!("../../", "data/kb/drugs.toml"),
    embed!("../../", "data/kb/icd10cm.tsv.gz"),
    embed!("../../", "data/kb/interactions.json.gz"),
    embed!("../../", "data/kb/labs.json"),
    embed!("../../", "recipes/ablate-fact.toml"),
    embed!("../../", "recipes/ablate-main.toml"),
    embed!("../../", "recipes/ablate-rl-knobs.toml"),
    embed!("../../", "recipes/ablate-spar.toml"),
    embed!("../../", "recipes/ablation-denoise-gate.toml"),
    embed!("../../", "recipes/ablation-grpo-global-penalty.toml"),
    embed!("../../", "recipes/ablation-grpo-global.toml"),
    embed!("../../", "recipes/ablation-naive-fact.toml"),
    embed!("../../", "recipes/ablation-spar.toml"),
    embed!("../../", "recipes/ablation-task-only.toml"),
    embed!("../../", "recipes/cluster-qwen3-235b-a22b.toml"),
    embed!("../../", "recipes/cluster-qwen3-30b-a3b.toml"),
    embed!("../../", "recipes/distill-offline-tiny.toml"),
    embed!("../../", "recipes/distill-onpolicy-tiny.toml"),
    embed!("../../", "recipes/ppo-gae-tiny.toml"),
    embed!("../../", "recipes/single-gpu-qwen3-0.6b.toml"),
    embed!("../../", "recipes/tiny-cpu-partial.toml"),
    embed!("../../", "recipes/tiny-cpu.toml"),
];

/// The paths (under the data root) of every embedded file, in embedding order.
pub fn embedded_files() -> impl Iterator<Item = (&'static str, &'static [u8])> {
    FILES.iter().map(|f| (f.path, f.bytes))
}

/// 12 hex digits of the SHA-256 of every embedded path and its bytes: the name of the written-out folder.
fn content_hash() -> String {
    let mut h = Sha256::new();
    for f in FILES {
        h.update((f.path.len() as u64).to_le_bytes());
        h.update(f.path.as_bytes());
        h.update((f.bytes.len() as u64).to_le_bytes());
        h.update(f.bytes);
    }
    hex::encode(&h.finalize()[..6])
}

/// The data root: `$SPAR_DATA` when set, else the embedded data written out (once) into the cache folder.
/// Errors name `SPAR_DATA` (not a folder, or lacking `data/cases`) or the folder that could not be written.
pub fn root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(DATA_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if !dir.join(CASES_DIR).is_dir() {
            return Err(Error::invalid(
                format!("{DATA_ENV}={}", dir.display()),
                format!(
                    "not a spar data folder: it has no {CASES_DIR}/ (expected {CASES_DIR}/, {KB_DIR}/, {RECIPES_DIR}/)"
                ),
            ));
        }
        return Ok(dir);
    }
    static WRITTEN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    WRITTEN
        .get_or_init(|| write_out(&cache_base()).map_err(|e| e.to_string()))
        .clone()
        .map_err(|msg| Error::invalid("shipped data", msg))
}

/// Where the written-out copy goes: `$XDG_CACHE_HOME/spar`, `$HOME/.cache/spar`, else `<temp>/spar-<user>`.
fn cache_base() -> PathBuf {
    let env_dir = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(x) = env_dir("XDG_CACHE_HOME") {
        return x.join("spar");
    }
    if let Some(h) = env_dir("HOME") {
        return h.join(".cache").join("spar");
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    std::env::temp_dir().join(format!("spar-{user}"))
}

/// Writes the embedded files into `base/shipped-<version>-<hash>/` unless that folder exists; returns it.
fn write_out(base: &Path) -> Result<PathBuf> {
    let name = format!("shipped-{}-{}", env!("CARGO_PKG_VERSION"), content_hash());
    let dest = base.join(&name);
    if dest.is_dir() {
        return Ok(dest);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = base.join(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
    let result = write_files(&tmp).and_then(|()| match std::fs::rename(&tmp, &dest) {
        Ok(()) => Ok(()),
        // Another process renamed its complete copy into place first.
        Err(_) if dest.is_dir() => Ok(()),
        Err(e) => Err(Error::io(&dest, e)),
    });
    if tmp.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|()| dest)
}

fn write_files(dir: &Path) -> Result<()> {
    for f in FILES {
        let path = dir.join(f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&path, f.bytes).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// The shipped cases' folder (`cases.jsonl`, `splits.json`).
pub fn cases_dir() -> Result<PathBuf> {
    Ok(root()?.join(CASES_DIR))
}

/// The shipped knowledge base's folder.
pub fn kb_dir() -> Result<PathBuf> {
    Ok(root()?.join(KB_DIR))
}

/// The names (file stems) of the shipped recipes, sorted.
pub fn recipe_names() -> Result<Vec<String>> {
    let dir = root()?.join(RECIPES_DIR);
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(&dir, e))?.path();
        if path.extension().is_some_and(|e| e == "toml")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            names.push(stem.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// The file of the shipped recipe `name` (with or without `.toml`); `None` when there is no such recipe.
pub fn recipe_path(name: &str) -> Result<Option<PathBuf>> {
    let stem = name.strip_suffix(".toml").unwrap_or(name);
    if stem.is_empty() || stem.contains(['/', '\\']) || stem.starts_with('.') {
        return Ok(None);
    }
    let path = root()?.join(RECIPES_DIR).join(format!("{stem}.toml"));
    Ok(path.is_file().then_some(path))
}
