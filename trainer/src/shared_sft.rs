//! A shared SFT: a run whose RL starts from another run's SFT checkpoint (`spar train --from-sft DIR`, and every
//! arm of `spar ablate`), so runs that differ only in RL knobs start RL from one and the same policy and report
//! one and the same held-out evaluation before RL.
//!
//! The SFT run is a finished `spar train` with `trainer.steps = 0`: its newest checkpoint is the one SFT's last
//! step writes (phase "rl", step 0), its state records the recipe it ran under (`extra.recipe`, written by every
//! run) and the held-out evaluation of the untrained policy (`extra.eval_initial`), and its `comparison.json`
//! holds the evaluation of that checkpoint (`before_rl`). [`seed`] copies that checkpoint, the tokenizer, the
//! metrics and the two transcripts into a fresh run folder, records where they came from (`extra.shared_sft`,
//! with the SFT recipe) and puts the SFT run's before-RL evaluation in as the run's own (`extra.eval_before`, which
//! `Session::once` then takes instead of evaluating again). The run is then resumed like any other; the caller
//! checks the run's recipe against the SFT one (`spar_core::recipe::shared_sft`) and measures the held-out
//! evaluations with the SFT run's `[rewards]`.
use crate::checkpoint::{self, TrainerState};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The trainer-state key of the recipe a run ran under (the run's effective recipe as JSON).
pub const RECIPE_KEY: &str = "recipe";
/// The trainer-state key of a run's [`SharedSft`] record.
pub const SHARED_SFT_KEY: &str = "shared_sft";

/// Where a run's SFT came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SharedSft {
    /// The SFT run folder.
    pub from: PathBuf,
    /// The checkpoint taken from it (`step-N`).
    pub checkpoint: String,
    /// The SFT run's effective recipe (JSON of `spar_core::recipe::Recipe`).
    pub recipe: serde_json::Value,
}

/// The shared-SFT record of `out`'s newest checkpoint (None: no checkpoint, or a run with its own SFT).
pub fn of_run(out: &Path) -> Result<Option<SharedSft>> {
    let Some((dir, state)) = crate::resume_point::newest_state(&out.join("checkpoints"))? else {
        return Ok(None);
    };
    state
        .extra
        .get(SHARED_SFT_KEY)
        .map(|v| {
            serde_json::from_value(v.clone())
                .with_context(|| format!("{}: extra.{SHARED_SFT_KEY}", dir.display()))
        })
        .transpose()
}

/// The SFT run's record as [`seed`] would take it: its SFT-end checkpoint, state and before-RL evaluation.
/// Errors say why `sft` is not a finished SFT run.
pub fn read_sft_run(sft: &Path) -> Result<(PathBuf, TrainerState, serde_json::Value)> {
    let (dir, state) = crate::resume_point::newest_intact(&sft.join("checkpoints"))
        .with_context(|| format!("shared SFT {}", sft.display()))?
        .with_context(|| {
            format!(
                "shared SFT {}: no checkpoint (run `spar train` there with trainer.steps=0 and trainer.sft_steps > 0)",
                sft.display()
            )
        })?;
    if state.phase != "rl" || state.phase_step != 0 {
        bail!(
            "shared SFT {}: its newest checkpoint {} is phase {} step {}, not the end of SFT (phase rl step 0); \
             a shared SFT run is `spar train` with trainer.steps=0",
            sft.display(),
            dir.display(),
            state.phase,
            state.phase_step
        );
    }
    if !state.extra.contains_key(RECIPE_KEY) || !state.extra.contains_key("eval_initial") {
        bail!(
            "shared SFT {}: {} records no recipe or initial evaluation (written by an older spar); run it again",
            sft.display(),
            dir.display()
        );
    }
    let cmp = sft.join("comparison.json");
    let text = std::fs::read_to_string(&cmp).with_context(|| {
        format!(
            "shared SFT {}: no comparison.json (the SFT run has not finished)",
            sft.display()
        )
    })?;
    let cmp: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", cmp.display()))?;
    let before = cmp
        .get("before_rl")
        .cloned()
        .with_context(|| format!("{}: no before_rl", sft.join("comparison.json").display()))?;
    Ok((dir, state, before))
}

/// Seeds the fresh run folder `out` from the finished SFT run `sft` (see the module doc). `out` must have no
/// checkpoint yet.
pub fn seed(sft: &Path, out: &Path) -> Result<SharedSft> {
    if checkpoint::latest(&out.join("checkpoints"))?.is_some() {
        bail!(
            "{}: already has checkpoints; resume it (--resume) instead of seeding it from {}",
            out.display(),
            sft.display()
        );
    }
    let (dir, mut state, before) = read_sft_run(sft)?;
    let name = dir
        .file_name()
        .context("checkpoint folder name")?
        .to_string_lossy()
        .into_owned();
    let record = SharedSft {
        from: std::path::absolute(sft)?,
        checkpoint: name.clone(),
        recipe: state.extra[RECIPE_KEY].clone(),
    };
    state
        .extra
        .insert(SHARED_SFT_KEY.into(), serde_json::to_value(&record)?);
    state.extra.insert("eval_before".into(), before);
    // The tokenizer, the metrics up to the end of SFT (the resumed run cuts anything later) and the evaluations'
    // transcripts first: the run folder counts as seeded once its checkpoint is in place.
    if sft.join("tokenizer").is_dir() {
        copy_dir(&sft.join("tokenizer"), &out.join("tokenizer"))?;
    }
    for f in [
        "metrics.jsonl",
        "transcripts/initial.md",
        "transcripts/before.md",
    ] {
        if sft.join(f).is_file() {
            let bytes = std::fs::read(sft.join(f))?;
            spar_core::fsio::write_atomic(&out.join(f), &bytes)?;
        }
    }
    // The checkpoint, under a temporary name and renamed into place like any checkpoint; `latest` last.
    let root = out.join("checkpoints");
    std::fs::create_dir_all(&root)?;
    let tmp = root.join(format!(".{name}.{}.tmp", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    copy_dir(&dir, &tmp)?;
    std::fs::write(
        tmp.join("trainer_state.json"),
        serde_json::to_vec_pretty(&state)?,
    )?;
    // Its state changed: sealed again, so the copy's checksums hold.
    crate::checksums::write_manifest(&tmp)?;
    let dst = root.join(&name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst)?;
    }
    std::fs::rename(&tmp, &dst)?;
    spar_core::fsio::write_atomic(&root.join("latest"), name.as_bytes())?;
    Ok(record)
}

fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let e = e?;
        let to = dst.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to)?;
        } else {
            std::fs::copy(e.path(), &to)
                .with_context(|| format!("copying {}", e.path().display()))?;
        }
    }
    Ok(())
}
