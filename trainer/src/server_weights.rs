//! The weight refresh of an external rollout server (`[rollout] backend = "openai"` with
//! `[rollout.weight_sync]`): the learner's policy reaches the server that plays the next round.
//!
//! Before the first RL round (the server may hold the base model while the learner has been through SFT, or a
//! resumed run's weights) and after every update, rank 0 writes the policy as a transformers folder
//! `DIR/v<version>` (under a temporary name, renamed when complete, so a server never reads half a folder), asks
//! every server to load it ([`WeightReceiver`]: SGLang's `update_weights_from_disk`) and, once they serve it,
//! removes the folder of the version before. Every rank then learns the outcome in one all-reduce: no rank
//! plays the next round while a server may still hold the old weights, and a failed refresh stops every rank
//! with rank 0's error instead of leaving the others waiting. The samples of the next round carry that version,
//! so the learner's `rl/policy_lag` is 0 (1 in the one-step off-policy mode) as with the built-in engine.
//!
//! Learners that keep the weights sharded at rest write the folder together, one unit at a time (every rank
//! gathers each unit and writes its share of them; [`crate::sharded::save_policy`]), and they publish before
//! each held-out evaluation too, which then plays through the server. Weights published already (same version,
//! same optimizer step) are not written again.
use crate::sharded::{ShardedParams, save_policy};
use anyhow::{Context, Result, bail};
use spar_core::traits::WeightReceiver;
use spar_dist::Collectives;
use spar_model::Qwen3Model;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the policy folders go and who loads them.
pub struct ServerWeights {
    pub receiver: Arc<dyn WeightReceiver>,
    /// A folder the servers read at the same path (a shared filesystem on a cluster).
    pub dir: PathBuf,
    /// The (version, optimizer step) the servers hold now.
    served: std::sync::Mutex<Option<(u64, usize)>>,
}

impl ServerWeights {
    pub fn new(receiver: Arc<dyn WeightReceiver>, dir: PathBuf) -> Self {
        ServerWeights {
            receiver,
            dir,
            served: std::sync::Mutex::new(None),
        }
    }

    /// The folder of `version`.
    pub fn folder(&self, version: u64) -> PathBuf {
        self.dir.join(format!("v{version:06}"))
    }

    /// Publishes `model` as `version` (see the module documentation); every rank calls it. `step` is the run's
    /// optimizer step count (the weights' identity: nothing is written when the servers hold this version of
    /// these weights already). Returns the seconds it took (the write and the servers' load, seen by every
    /// rank).
    pub fn publish(
        &self,
        model: &Qwen3Model,
        version: u64,
        step: usize,
        sharded: Option<&ShardedParams>,
        group: &dyn Collectives,
        rt: &tokio::runtime::Runtime,
    ) -> Result<f64> {
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        if *served == Some((version, step)) {
            return Ok(0.0);
        }
        let t0 = std::time::Instant::now();
        let rank0 = group.rank() == 0;
        // A model whose weights are still unread in their folder (sharded at rest, before any sharder read them)
        // is that folder: the servers load it as it is.
        let in_files = match (model.unread_weights(), model.param_units()) {
            (Some(dir), None) => Some(dir.to_path_buf()),
            _ => None,
        };
        let (folder, partial) = (
            self.folder(version),
            self.dir.join(format!(".v{version:06}.partial")),
        );
        // Every rank reaches each of the two agreements below exactly once, whatever failed where.
        let cleared = if rank0 && in_files.is_none() {
            remove_stale(&[&partial, &folder])
        } else {
            Ok(())
        };
        if spar_dist::any_rank(group, cleared.is_err())? {
            cleared?;
            bail!(
                "rank 0 could not clear {} (its log says why)",
                partial.display()
            );
        }
        // Sharded at rest every rank writes its share of the units (a failure stops them all there);
        // otherwise rank 0 writes the whole weights.
        let wrote = match &in_files {
            Some(_) => Ok(()),
            None => save_policy(model, &partial, rank0, sharded).with_context(|| {
                format!("writing policy version {version} to {}", partial.display())
            }),
        };
        let outcome = wrote.and_then(|()| match (rank0, &in_files) {
            (false, _) => Ok(()),
            (true, Some(dir)) => self.load(dir, version, rt),
            (true, None) => {
                std::fs::rename(&partial, &folder).with_context(|| {
                    format!("renaming {} to {}", partial.display(), folder.display())
                })?;
                self.load(&folder, version, rt)
            }
        });
        let failed = spar_dist::any_rank(group, outcome.is_err())?;
        match outcome {
            Err(e) => Err(e),
            Ok(()) if failed => bail!(
                "rank 0 could not refresh {} with policy version {version} (its log says why)",
                self.receiver.describe()
            ),
            Ok(()) => {
                *served = Some((version, step));
                Ok(t0.elapsed().as_secs_f64())
            }
        }
    }

    /// Every server loads `dir` as `version`; then the older versions' folders go.
    fn load(&self, dir: &Path, version: u64, rt: &tokio::runtime::Runtime) -> Result<()> {
        rt.block_on(self.receiver.load(dir, version))
            .with_context(|| {
                format!(
                    "{} did not load policy version {version} from {}",
                    self.receiver.describe(),
                    dir.display()
                )
            })?;
        tracing::info!(version, folder = %dir.display(), "rollout server weights refreshed");
        remove_older(&self.dir, version)
    }
}

/// Removes folders left by an earlier attempt at the same version.
fn remove_stale(dirs: &[&Path]) -> Result<()> {
    for stale in dirs {
        if stale.exists() {
            std::fs::remove_dir_all(stale)
                .with_context(|| format!("removing {}", stale.display()))?;
        }
    }
    Ok(())
}

/// Removes the folders of versions below `version` (the servers no longer read them).
fn remove_older(dir: &Path, version: u64) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let old = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix('v'))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|v| v < version);
        if old && path.is_dir() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}
