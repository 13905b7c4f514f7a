//! Which checkpoint a resume, a shared SFT or an export reads: the newest one that is intact (its files match
//! `checksums.sha256`, its trainer state reads). A damaged newer one (a disk error, a file changed by hand, a
//! copy cut short) is named in a warning and passed over; only when no checkpoint is intact is it an error.
use crate::checkpoint::{self, TrainerState};
use crate::checksums::{self, Verified};
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// The newest intact checkpoint under `root` (a run's `checkpoints/`), with its state; `None` when there is
/// no checkpoint at all. Each damaged newer one is named in a warning; all damaged is an error naming each.
pub fn newest_intact(root: &Path) -> Result<Option<(PathBuf, TrainerState)>> {
    let mut damaged = Vec::new();
    for dir in candidates(root)?.into_iter().rev() {
        match check(&dir) {
            Ok(state) => {
                if !damaged.is_empty() {
                    eprintln!(
                        "[train] warning: using {} (phase {}, step {}), the newest intact checkpoint",
                        dir.display(),
                        state.phase,
                        state.step
                    );
                }
                return Ok(Some((dir, state)));
            }
            Err(e) => {
                eprintln!(
                    "[train] warning: checkpoint {} is damaged or incomplete, passing over it: {e:#}",
                    dir.display()
                );
                damaged.push(format!("{}: {e:#}", dir.display()));
            }
        }
    }
    if damaged.is_empty() {
        return Ok(None);
    }
    bail!(
        "no intact checkpoint under {} ({})",
        root.display(),
        damaged.join("; ")
    )
}

/// Checks one checkpoint folder: its checksums (when it has a manifest) and its trainer state.
pub fn check(dir: &Path) -> Result<TrainerState> {
    if checksums::verify(dir)? == Verified::Unchecked {
        eprintln!(
            "[train] note: {} has no {} (written by an older spar); its files are not checked",
            dir.display(),
            checksums::MANIFEST
        );
    }
    checkpoint::read_state(dir)
}

/// The state of the newest checkpoint under `root` whose state reads, its files unchecked: for what every
/// checkpoint of a run records alike (where its SFT came from), without hashing the weights a resume then
/// checks anyway.
pub fn newest_state(root: &Path) -> Result<Option<(PathBuf, TrainerState)>> {
    Ok(candidates(root)?
        .into_iter()
        .rev()
        .find_map(|d| checkpoint::read_state(&d).ok().map(|s| (d, s))))
}

/// Moves the checkpoints under `root` newer than `kept` (the damaged ones [`newest_intact`] passed over) aside
/// to `.damaged-step-N`, so the resumed run neither prunes its own new checkpoints in their favour nor meets
/// them again; `latest` is pointed at `kept`.
pub fn set_aside_newer(root: &Path, kept: &Path) -> Result<()> {
    let kept_step = step_of(kept);
    for dir in candidates(root)? {
        if step_of(&dir) > kept_step {
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            let to = root.join(format!(".damaged-{}", name.unwrap_or_default()));
            if to.exists() {
                std::fs::remove_dir_all(&to)?;
            }
            std::fs::rename(&dir, &to)?;
            eprintln!("[train] moved {} aside to {}", dir.display(), to.display());
        }
    }
    if let Some(name) = kept.file_name() {
        spar_core::fsio::write_atomic(&root.join("latest"), name.as_encoded_bytes())?;
    }
    Ok(())
}

/// Every `step-N` folder under `root`, oldest first, complete or not.
fn candidates(root: &Path) -> Result<Vec<PathBuf>> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<(usize, PathBuf)> = Vec::new();
    for e in rd {
        let e = e?;
        if let Some(n) = step_of(&e.path())
            && e.file_type()?.is_dir()
        {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

fn step_of(dir: &Path) -> Option<usize> {
    dir.file_name()?
        .to_str()?
        .strip_prefix("step-")?
        .parse()
        .ok()
}
