//! Every run writes an audit manifest: data files and models with hashes, the effective recipe and the flags with
//! secrets removed, code version, start / end, who ran it, and how it ended. A run that writes a folder keeps it
//! as `audit.json` inside; a run that writes one file keeps it as `<file>.audit.json` next to it. Outputs are made
//! owner-only. See docs/privacy.md.
use spar_core::recipe::{DataSection, Recipe};
use spar_data::audit::{AuditManifest, AuditSpec};
use std::path::{Path, PathBuf};

/// The data files a recipe reads: its cases (a file, or every case file of a folder) and split file.
pub fn recipe_data_files(recipe: &Recipe) -> Vec<PathBuf> {
    let base = recipe
        .source
        .as_ref()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let section = recipe.data.clone().unwrap_or_default();
    case_data_files(&section, base.as_deref())
}

/// The case files (and split file, when there is one) a `[data]` section points at.
pub fn case_data_files(section: &DataSection, base: Option<&Path>) -> Vec<PathBuf> {
    let cases = spar_data::recipe::cases_path(section, base);
    let mut files = if cases.is_dir() {
        spar_data::cases::case_files(&cases).unwrap_or_default()
    } else {
        vec![cases.clone()]
    };
    let splits = match &section.splits {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => base.map_or_else(|| p.clone(), |b| b.join(p)),
        None if cases.is_dir() => cases.join("splits.json"),
        None => cases.with_file_name("splits.json"),
    };
    if splits.is_file() {
        files.push(splits);
    }
    files
}

/// Every file of `path` (a file, or the files of a folder such as a knowledge base), for the manifest.
pub fn files_of(path: &Path) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_path_buf()];
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The recipe as TOML for the manifest ("" when it does not serialise: the manifest then records no config
/// rather than failing the run).
pub fn recipe_toml(recipe: &Recipe) -> String {
    toml::to_string(recipe).unwrap_or_default()
}

/// Runs `work` between the manifest's start and finish; the outcome (ok or the error, secrets and PHI removed) is
/// recorded either way. The spec's flags are the process's command line.
pub fn run_audited<T>(
    mut spec: AuditSpec,
    work: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    // An input that does not exist is left for the command to report in its own words (and the manifest
    // records that error as the outcome) rather than failing here before any manifest is written.
    spec.data_files.retain(|p| p.exists());
    spec.models.retain(|p| p.exists());
    // Set when the build script exports it; spar-data's own copy only sees an exported shell variable.
    spec.build_describe = option_env!("SPAR_BUILD_GIT_DESCRIBE").map(String::from);
    let manifest = AuditManifest::begin(&spec.with_process_flags())?;
    let result = work();
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("failed: {e:#}"),
    };
    manifest.finish(&outcome)?;
    result
}

/// `spar train`'s manifest: the run folder, the recipe and its data files.
pub fn audited<T>(
    run_dir: &Path,
    recipe: &Recipe,
    data_files: &[PathBuf],
    work: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut spec = AuditSpec::for_dir("spar train", run_dir)
        .with_recipe(recipe_toml(recipe))
        .with_data(data_files.iter().cloned());
    if let Some(p) = recipe.model.as_ref().and_then(|m| m.path.as_ref()) {
        let p = recipe.resolve(p);
        if p.exists() {
            spec = spec.with_model(&p);
        }
    }
    run_audited(spec, work)
}
