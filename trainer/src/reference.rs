//! The frozen reference policy of the KL term (`trainer.kl_coef`, as a loss or in the reward).
//!
//! `[model] reference` names an HF directory; without one the reference is the policy as RL starts (after SFT,
//! if any), snapshotted to `OUT/reference/` so that a resumed run measures its KL against the same weights.
use anyhow::{Context, Result, bail};
use spar_model::Qwen3Model;
use std::path::Path;

/// Loads the reference: `configured` when given, else `OUT/reference` (written from `policy` the first time, via
/// a temporary folder and a rename, so a crash never leaves half a reference behind).
pub fn load_or_snapshot(
    policy: &Qwen3Model,
    configured: Option<&Path>,
    out: &Path,
) -> Result<Qwen3Model> {
    let dir = match configured {
        Some(d) => d.to_path_buf(),
        None => {
            let dir = out.join("reference");
            if !dir.join("config.json").exists() {
                let tmp = out.join("reference.tmp");
                if tmp.exists() {
                    std::fs::remove_dir_all(&tmp)
                        .with_context(|| format!("removing {}", tmp.display()))?;
                }
                policy
                    .save_hf(&tmp)
                    .context("snapshotting the KL reference policy")?;
                std::fs::rename(&tmp, &dir)
                    .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
            }
            dir
        }
    };
    let reference = Qwen3Model::load(&dir, policy.device(), policy.kind())
        .with_context(|| format!("loading the KL reference policy {}", dir.display()))?;
    if reference.config.vocab_size != policy.config.vocab_size {
        bail!(
            "KL reference {}: vocab_size {} differs from the policy's {}",
            dir.display(),
            reference.config.vocab_size,
            policy.config.vocab_size
        );
    }
    Ok(reference)
}
