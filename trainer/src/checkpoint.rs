//! Checkpoints: model weights, optimizer state, LR schedule position, RNG state, data position, the segmented
//! pipeline's stage pools, dynamic rubric state and the claim-cache reference. A checkpoint is a folder written
//! under a temporary name and renamed into place, so a crash never leaves half of one; `latest` names the newest;
//! only the last N are kept.
//!
//! A data-parallel run's checkpoint also holds every rank's own state (`ranks/rank-<r>.json`: its stage pools
//! and pending round; the weights and optimizer are the same on every rank), so that the same world size resumes
//! exactly and another one reshards ([`read_rank_state`]).
//!
//! A fully sharded run's optimizer state is sharded too: every rank writes its chunks into the checkpoint's
//! staging folder (`optimizer/rank-<r>.safetensors`, rank 0 adds `optimizer/manifest.json`) before rank 0 moves
//! it into place; the weights (`model/`) are whole, as the ranks hold them between updates. Either optimizer
//! layout resumes on any world size and in either mode ([`crate::sharded::read_whole_state`]).
use crate::adamw::AdamW;
use crate::policy::Policy;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STATE_FORMAT_VERSION: u32 = 1;

/// A reproducible RNG position: ChaCha8 seed and word position (see [`crate::rng`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: u64,
    /// Word position as a decimal string (u128 does not fit JSON numbers).
    pub word_pos: String,
}

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainerState {
    pub format_version: u32,
    /// Optimizer steps taken.
    pub step: usize,
    /// Which phase the run is in ("sft", "rl", "done") and how many units of it are done.
    pub phase: String,
    pub phase_step: usize,
    pub rng: RngState,
    /// Position in the training data (e.g. next case index, epoch).
    pub data_position: serde_json::Value,
    /// Segmented pipeline stage pools D_k (rollout's serialised state).
    pub stage_pools: serde_json::Value,
    /// Dynamic rubric admission / exit state (rewards' serialised state).
    pub dynamic_rubrics: serde_json::Value,
    /// Where the claim cache lives and its version key (the cache itself is not copied).
    pub claim_cache: Option<String>,
    pub bad_steps_total: usize,
    /// Anything else a loop needs (e.g. the best evaluation so far).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The folder name of the checkpoint taken after `step` optimizer steps.
pub fn checkpoint_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// Writes a checkpoint under `root` and prunes older ones beyond `keep_last`. Returns its folder.
pub fn save(
    root: &Path,
    policy: &dyn Policy,
    adamw: &AdamW,
    state: &TrainerState,
    keep_last: usize,
) -> Result<PathBuf> {
    save_with(root, policy, adamw, state, keep_last, &|_| Ok(()))
}

/// [`save`], with `extra(dir)` writing more files (e.g. the critic) into the checkpoint folder before it is
/// renamed into place, so they are as atomic as the rest.
pub fn save_with(
    root: &Path,
    policy: &dyn Policy,
    adamw: &AdamW,
    state: &TrainerState,
    keep_last: usize,
    extra: &dyn Fn(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let tmp = prepare_staging(root, state.step)?;
    save_staged(
        root,
        &tmp,
        Some(policy),
        Some(adamw),
        state,
        keep_last,
        extra,
    )
}

/// The folder a checkpoint of `step` is written in before it is renamed into place (one run per folder: the
/// run lock makes the name unique; ranks of a sharded run write their optimizer chunks into it).
pub fn staging_dir(root: &Path, step: usize) -> PathBuf {
    root.join(format!(".{}.tmp", checkpoint_name(step)))
}

/// Creates an empty [`staging_dir`] (a leftover of a crashed run is removed first).
pub fn prepare_staging(root: &Path, step: usize) -> Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let tmp = staging_dir(root, step);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    Ok(tmp)
}

/// Writes the weights (`None`: already in `tmp/model`, as the ranks of a run whose weights are sharded at rest
/// wrote them together), the optimizer (`None`: already in `tmp`, as a sharded run's ranks wrote it), `extra`
/// and the state into staging folder `tmp`, then moves it into place as the checkpoint of `state.step`.
pub fn save_staged(
    root: &Path,
    tmp: &Path,
    policy: Option<&dyn Policy>,
    adamw: Option<&AdamW>,
    state: &TrainerState,
    keep_last: usize,
    extra: &dyn Fn(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let name = checkpoint_name(state.step);
    std::fs::create_dir_all(tmp.join("model"))?;
    if let Some(policy) = policy {
        policy.save_weights(&tmp.join("model"))?;
    }
    if let Some(adamw) = adamw {
        adamw.save(&tmp.join("optimizer.safetensors"))?;
    }
    extra(tmp)?;
    let mut st = state.clone();
    st.format_version = STATE_FORMAT_VERSION;
    std::fs::write(
        tmp.join("trainer_state.json"),
        serde_json::to_vec_pretty(&st)?,
    )?;
    // Last: the checksums of everything above, so a checkpoint with a manifest was complete when it moved.
    crate::checksums::write_manifest(tmp)?;
    let dst = root.join(&name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst).with_context(|| format!("replacing {}", dst.display()))?;
    }
    std::fs::rename(tmp, &dst)
        .with_context(|| format!("moving checkpoint into {}", dst.display()))?;
    // `latest` only once the folder it names is in place (atomic write), and pruning never takes that folder.
    spar_core::fsio::write_atomic(&root.join("latest"), name.as_bytes())?;
    prune(root, keep_last, &dst)?;
    Ok(dst)
}

/// Checkpoint folders under `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else {
        return Ok(out);
    };
    for e in rd {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
            && e.path().join("trainer_state.json").exists()
        {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes the oldest checkpoints beyond `keep_last`, never `current` (the one `latest` names: a folder that
/// holds a higher-numbered checkpoint, however it got there, must not make the run prune its own newest).
fn prune(root: &Path, keep_last: usize, current: &Path) -> Result<()> {
    let others: Vec<_> = list(root)?
        .into_iter()
        .filter(|(_, p)| p != current)
        .collect();
    let n = (others.len() + 1).saturating_sub(keep_last.max(1));
    for (_, p) in others.into_iter().take(n) {
        std::fs::remove_dir_all(&p)
            .with_context(|| format!("removing old checkpoint {}", p.display()))?;
    }
    Ok(())
}

/// The newest checkpoint under `root` (by `latest`, else by name), if any, unchecked: whether a run has
/// checkpoints. What a resume or an export reads is `newest_intact`.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    if let Ok(name) = std::fs::read_to_string(root.join("latest")) {
        let p = root.join(name.trim());
        if p.join("trainer_state.json").exists() {
            return Ok(Some(p));
        }
    }
    Ok(list(root)?.pop().map(|(_, p)| p))
}

/// Reads a checkpoint's trainer state.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let p = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let st: TrainerState = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a trainer state", p.display()))?;
    if st.format_version != STATE_FORMAT_VERSION {
        bail!(
            "{}: format_version {} is not the supported {STATE_FORMAT_VERSION}",
            p.display(),
            st.format_version
        );
    }
    Ok(st)
}

/// The world size a checkpoint's state was written by (`extra.world_size`; 1 when absent).
pub fn saved_world(state: &TrainerState) -> usize {
    state
        .extra
        .get("world_size")
        .and_then(|v| v.as_u64())
        .map_or(1, |w| w.max(1) as usize)
}

/// Rank `rank`'s state file in checkpoint `dir`.
pub fn rank_state_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join("ranks").join(format!("rank-{rank:05}.json"))
}

/// Writes every rank's serialised [`TrainerState`] (index = rank) into `dir/ranks/`.
pub fn write_rank_states(dir: &Path, states: &[Vec<u8>]) -> Result<()> {
    std::fs::create_dir_all(dir.join("ranks"))?;
    for (rank, bytes) in states.iter().enumerate() {
        let p = rank_state_path(dir, rank);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// The state rank `rank` of a `world`-rank run resumes from checkpoint `dir`. On the world size that wrote it:
/// the rank's own state (rank 0's is `trainer_state.json`). On another world size (resharding): rank 0's
/// state, which every rank shares but for its stage pools and pending round, with the stage pools of all saved
/// ranks under `extra.stage_pools_of_ranks` for the rollout to reshard (each rank keeps its own cases'
/// segments) and no pending round (a round generated ahead is one rank's; it is played again).
pub fn read_rank_state(dir: &Path, rank: usize, world: usize) -> Result<TrainerState> {
    let main = read_state(dir)?;
    let saved = saved_world(&main);
    let read_rank = |r: usize| -> Result<TrainerState> {
        if r == 0 {
            return Ok(main.clone());
        }
        let p = rank_state_path(dir, r);
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "reading {} (the checkpoint was written by {saved} ranks)",
                p.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a trainer state", p.display()))
    };
    if saved == world {
        let mut st = read_rank(rank)?;
        st.extra.insert("world_size".into(), world.into());
        return Ok(st);
    }
    let mut pools = Vec::with_capacity(saved);
    let mut pending = 0;
    for r in 0..saved {
        let st = read_rank(r)?;
        pending += usize::from(st.extra.contains_key("pending_round"));
        if !st.stage_pools.is_null() {
            pools.push(st.stage_pools);
        }
    }
    if rank == 0 {
        eprintln!(
            "[train] resharding {} from {saved} rank(s) to {world}: stage pools go to the rank that owns each \
             case{}",
            dir.display(),
            if pending > 0 {
                format!("; {pending} round(s) generated ahead are dropped and played again")
            } else {
                String::new()
            }
        );
    }
    let mut st = main;
    st.stage_pools = serde_json::Value::Null;
    st.extra.remove("pending_round");
    st.extra.insert(
        "stage_pools_of_ranks".into(),
        serde_json::Value::Array(pools),
    );
    st.extra.insert("world_size".into(), world.into());
    Ok(st)
}

/// Restores weights and optimizer state from `dir` and returns the trainer state. The optimizer state may be
/// a sharded one (joined here).
pub fn load(dir: &Path, policy: &mut dyn Policy, adamw: &mut AdamW) -> Result<TrainerState> {
    load_with(dir, policy, adamw, None)
}

/// [`load`] into a learner, sharded or not: a sharded learner cuts its chunks out of either layout, for any
/// world size the checkpoint was written with.
pub fn load_learner(
    dir: &Path,
    policy: &mut dyn Policy,
    learner: &mut crate::learner::Learner,
) -> Result<TrainerState> {
    let sharded = learner.sharded.clone();
    load_with(dir, policy, &mut learner.adamw, sharded.as_deref())
}

fn load_with(
    dir: &Path,
    policy: &mut dyn Policy,
    adamw: &mut AdamW,
    sharded: Option<&crate::sharded::ShardedParams>,
) -> Result<TrainerState> {
    let st = read_state(dir)?;
    match sharded {
        // Sharded at rest: the weights are the fp32 masters of the optimizer state, loaded below (this rank's
        // chunks only when the checkpoint was written by as many ranks).
        Some(sh) if sh.at_rest() == crate::sharded::AtRest::Sharded => {}
        _ => policy.load_weights(&dir.join("model"))?,
    }
    match sharded {
        Some(sh) if sh.load_chunks(adamw, dir)? => {}
        Some(sh) => sh.load_whole_state(adamw, &crate::sharded::read_whole_state(dir)?, dir)?,
        None if crate::sharded::is_sharded_checkpoint(dir) => {
            adamw.load_named(&crate::sharded::read_whole_state(dir)?, dir)?
        }
        None => adamw.load(&dir.join("optimizer.safetensors"))?,
    }
    Ok(st)
}
