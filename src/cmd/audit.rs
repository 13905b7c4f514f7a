//! Every run writes an audit manifest (`audit.json` in its run folder): data files with hashes, the effective
//! recipe with secrets removed, code version, start / end, who ran it. See docs/privacy.md.
use spar_core::recipe::Recipe;
use spar_data::audit::AuditManifest;
use std::path::{Path, PathBuf};

/// The data files a recipe reads: its cases (a file, or every case file of a folder).
pub fn recipe_data_files(recipe: &Recipe) -> Vec<PathBuf> {
    let base = recipe
        .source
        .as_ref()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let section = recipe.data.clone().unwrap_or_default();
    let cases = spar_data::recipe::cases_path(&section, base.as_deref());
    if cases.is_dir() {
        spar_data::cases::case_files(&cases).unwrap_or_default()
    } else {
        vec![cases]
    }
}

/// Runs `work` between the manifest's start and finish; the outcome (ok or the error) is recorded either way.
pub fn audited<T>(
    run_dir: &Path,
    recipe: &Recipe,
    data_files: &[PathBuf],
    work: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let recipe_toml = toml::to_string(recipe).unwrap_or_default();
    let manifest = AuditManifest::start(run_dir, &recipe_toml, data_files)?;
    let result = work();
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("failed: {e}"),
    };
    manifest.finish(&outcome)?;
    result
}
