//! A training run's folder and bookkeeping across phases: the resume point, the metrics log, the run's random
//! stream, the global step, and checkpoints that ask each part for its own state.
//!
//! With several data-parallel ranks every rank keeps a session (the same positions, RNG and step), but only
//! rank 0 (the writer) writes metrics and checkpoints into the run folder.
use crate::checkpoint::{self, TrainerState};
use crate::learner::Learner;
use crate::metrics::MetricsLogger;
use crate::rng::{new_rng, restore_rng, save_rng};
use anyhow::{Context, Result, bail};
use rand_chacha::ChaCha8Rng;
use spar_dist::Collectives;
use spar_model::Qwen3Model;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `TrainerState::extra` key: how many logs the checkpoint's step had when it was taken ([`crate::metrics::CutBack`]).
const METRICS_AT_STEP: &str = "metrics_logged_at_step";

/// A part of the run with state beyond the model and optimizer (rollout pools, the critic, a round generated
/// ahead): a checkpoint asks it to write its state, a resume to read it back.
pub trait Checkpointed {
    /// Puts this part's JSON state into `state`.
    fn save_state(&self, state: &mut TrainerState) -> Result<()>;
    /// Writes this part's files (tensors) into the checkpoint folder `dir` before it is renamed into place.
    fn save_files(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }
}

/// The run folder and what every phase shares.
pub struct Session {
    pub out: PathBuf,
    pub seed: u64,
    /// The state as of the last checkpoint (or the resumed one).
    pub state: TrainerState,
    /// The checkpoint this run resumed from, until the phase it belongs to has loaded it.
    pub resume_dir: Option<PathBuf>,
    /// `metrics.jsonl` and TensorBoard events (rank 0 only).
    metrics: Option<MetricsLogger>,
    pub rng: ChaCha8Rng,
    /// The data-parallel ranks of the run ([`spar_dist::Local`]: one process).
    pub group: Arc<dyn Collectives>,
    /// Optimizer steps of every phase so far (the x axis of metrics).
    pub global_step: usize,
    /// Learners shard parameters and optimizer over `group` (`[distributed] sharding = "full"`).
    pub sharded: bool,
    /// What sharded learners keep between updates (`[distributed] weights_at_rest`).
    pub at_rest: crate::sharded::AtRest,
    /// The expert-parallel group of this rank (`[distributed] expert_parallel`); None: off.
    pub expert_group: Option<Arc<dyn Collectives>>,
    keep_last: usize,
}

impl Session {
    /// Opens the run folder `out`; with `resume`, at the newest intact checkpoint there (`crate::resume_point`;
    /// a fresh start when there is none).
    /// `group`: the data-parallel ranks; only rank 0 writes into `out`.
    pub fn open(
        out: &Path,
        seed: u64,
        resume: bool,
        keep_last: usize,
        group: Arc<dyn Collectives>,
    ) -> Result<Session> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let mut state = TrainerState {
            phase: "sft".into(),
            rng: save_rng(seed, &new_rng(seed)),
            ..Default::default()
        };
        let mut resume_dir = None;
        if resume {
            // The newest checkpoint whose checksums hold (a damaged newer one is named and passed over), chosen
            // by rank 0 alone: every rank hashing the same weights would read them world-size times over.
            let root = out.join("checkpoints");
            let mine = match group.rank() {
                0 => crate::resume_point::newest_intact(&root)
                    .context("--resume (--overwrite starts the run afresh)")
                    .map(|found| found.map(|(dir, _)| dir)),
                _ => Ok(None),
            };
            let latest = rank0_choice(&*group, mine)?;
            match latest {
                Some(dir) => {
                    state = checkpoint::read_rank_state(&dir, group.rank(), group.world_size())?;
                    if group.rank() == 0 {
                        crate::resume_point::set_aside_newer(&root, &dir)?;
                    }
                    eprintln!(
                        "[train] resuming from {} (phase {}, phase step {}, global step {}); metrics and \
                         TensorBoard events after step {} are dropped",
                        dir.display(),
                        state.phase,
                        state.phase_step,
                        state.step,
                        state.step
                    );
                    resume_dir = Some(dir);
                }
                None => eprintln!(
                    "[train] --resume: no checkpoint under {}; starting fresh",
                    out.join("checkpoints").display()
                ),
            }
        }
        let metrics = if group.rank() == 0 {
            Some(MetricsLogger::open(
                out,
                resume_dir.as_ref().map(|_| crate::metrics::CutBack {
                    step: state.step,
                    at_step: state
                        .extra
                        .get(METRICS_AT_STEP)
                        .and_then(|v| v.as_u64())
                        .map(|n| n as usize),
                }),
            )?)
        } else {
            None
        };
        let rng = restore_rng(&state.rng)?;
        Ok(Session {
            out: out.to_path_buf(),
            seed,
            global_step: state.step,
            state,
            resume_dir,
            metrics,
            rng,
            group,
            sharded: false,
            at_rest: crate::sharded::AtRest::Whole,
            expert_group: None,
            keep_last,
        })
    }

    /// A held-out evaluation made once per run: a resumed run takes the summary its checkpoint state kept under
    /// `key`; a fresh one runs `eval` and keeps its summary there.
    pub fn once<T: serde::Serialize + serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
        eval: impl FnOnce(&mut Session) -> Result<T>,
    ) -> Result<T> {
        if let Some(v) = self.state.extra.get(key) {
            return Ok(serde_json::from_value(v.clone())?);
        }
        let value = eval(self)?;
        self.state
            .extra
            .insert(key.into(), serde_json::to_value(&value)?);
        Ok(value)
    }

    /// Whether this process writes the run's files (rank 0; the only process without a launcher).
    pub fn writer(&self) -> bool {
        self.group.rank() == 0
    }

    /// Logs scalars at the current global step (rank 0 only).
    pub fn log(&mut self, scalars: &[(String, f64)]) -> Result<()> {
        self.log_at(self.global_step, scalars)
    }

    /// Logs scalars at `step` (rank 0 only).
    pub fn log_at(&mut self, step: usize, scalars: &[(String, f64)]) -> Result<()> {
        match &mut self.metrics {
            Some(m) => m.log(step, scalars),
            None => Ok(()),
        }
    }

    /// Checkpoints the run at `phase` / `phase_step`: model and optimizer, the run's RNG, then every part's own
    /// state. Atomic: a crash leaves the previous checkpoint as `latest`.
    pub fn checkpoint(
        &mut self,
        phase: &str,
        phase_step: usize,
        model: &Qwen3Model,
        learner: &Learner,
        parts: &[&dyn Checkpointed],
    ) -> Result<()> {
        let mut state = TrainerState {
            step: self.global_step,
            phase: phase.into(),
            phase_step,
            rng: save_rng(self.seed, &self.rng),
            ..self.state.clone()
        };
        // Resharded pools were handed to the rollout on resume; its own pools are saved below.
        state.extra.remove("stage_pools_of_ranks");
        // What this step has logged so far: a resume keeps exactly that (logs after the checkpoint at the same
        // step, such as the evaluation before RL after the SFT-end checkpoint, are written again).
        if let Some(m) = &self.metrics {
            state
                .extra
                .insert(METRICS_AT_STEP.into(), m.logged_at(self.global_step).into());
        }
        for p in parts {
            p.save_state(&mut state)?;
        }
        // Every rank's own state (stage pools, pending round) goes into the checkpoint rank 0 writes.
        let world = self.group.world_size();
        let rank_states = if world > 1 {
            state.extra.insert("world_size".into(), world.into());
            Some(spar_dist::all_gather_bytes(
                &*self.group,
                &serde_json::to_vec(&state)?,
            )?)
        } else {
            state.extra.remove("world_size");
            None
        };
        let root = self.out.join("checkpoints");
        // Sharded: every rank writes its optimizer chunks into the staging folder rank 0 prepared (a run folder
        // every rank sees, as resuming needs anyway); any rank's failure stops all of them here.
        let staged = match &learner.sharded {
            Some(sh) => {
                let tmp = checkpoint::staging_dir(&root, state.step);
                if self.writer() {
                    checkpoint::prepare_staging(&root, state.step)?;
                }
                self.group.barrier()?.wait()?;
                let wrote = sh.save_shard(&tmp.join("optimizer"), &learner.adamw);
                if spar_dist::any_rank(&*self.group, wrote.is_err())? {
                    wrote.with_context(|| {
                        format!("writing this rank's optimizer shard into {}", tmp.display())
                    })?;
                    bail!(
                        "another rank failed to write its optimizer shard into {}",
                        tmp.display()
                    );
                }
                // Sharded at rest: the weights too, every rank gathering each unit and writing its share.
                if sh.at_rest() == crate::sharded::AtRest::Sharded {
                    let dir = tmp.join("model");
                    let wrote = crate::sharded::save_policy(model, &dir, self.writer(), Some(sh));
                    if spar_dist::any_rank(&*self.group, wrote.is_err())? {
                        wrote.with_context(|| {
                            format!("writing the weights into {}", dir.display())
                        })?;
                        bail!("rank 0 failed to complete the weights in {}", dir.display());
                    }
                }
                Some(tmp)
            }
            None => None,
        };
        if !self.writer() {
            // Rank 0 writes the checkpoint; the others only keep the bookkeeping in step with it.
            self.state = state;
            return Ok(());
        }
        let files = |dir: &Path| -> Result<()> {
            for p in parts {
                p.save_files(dir)?;
            }
            if let Some(states) = &rank_states {
                checkpoint::write_rank_states(dir, states)?;
            }
            Ok(())
        };
        match staged {
            Some(tmp) => {
                let written = learner
                    .sharded
                    .as_ref()
                    .is_some_and(|sh| sh.at_rest() == crate::sharded::AtRest::Sharded);
                let policy: Option<&dyn crate::policy::Policy> = (!written).then_some(model);
                checkpoint::save_staged(&root, &tmp, policy, None, &state, self.keep_last, &files)?
            }
            None => {
                checkpoint::save_with(&root, model, &learner.adamw, &state, self.keep_last, &files)?
            }
        };
        self.state = state;
        Ok(())
    }

    /// The run's tokens of one phase: `(phase, first step to do)` when the state is in `phase`.
    pub fn in_phase(&self, phase: &str) -> Option<usize> {
        (self.state.phase == phase).then_some(self.state.phase_step)
    }

    /// Moves the run to the start of `phase`.
    pub fn enter(&mut self, phase: &str) {
        self.state.phase = phase.into();
        self.state.phase_step = 0;
    }
}

/// Rank 0's resume point, handed to every rank (its error too, so that no rank waits for the others), each
/// rank checking that it sees that checkpoint: the run folder of a multi-node job must be on a filesystem every
/// rank sees.
fn rank0_choice(group: &dyn Collectives, mine: Result<Option<PathBuf>>) -> Result<Option<PathBuf>> {
    if group.world_size() == 1 {
        return mine;
    }
    // Rank 0 sends `ok:<path>` (empty path: no checkpoint) or `err:<message>`; the others send nothing.
    let sent = match (&mine, group.rank()) {
        (Ok(p), 0) => format!(
            "ok:{}",
            p.as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        ),
        (Err(e), 0) => format!("err:{e:#}"),
        _ => String::new(),
    };
    let seen = spar_dist::all_gather_bytes(group, sent.as_bytes())?;
    let chosen = String::from_utf8_lossy(&seen[0]).into_owned();
    if let Some(msg) = chosen.strip_prefix("err:") {
        mine?;
        bail!("rank 0 could not choose a checkpoint to resume: {msg}");
    }
    let path = chosen.strip_prefix("ok:").unwrap_or_default();
    if path.is_empty() {
        return Ok(None);
    }
    let dir = PathBuf::from(path);
    if !dir.join("trainer_state.json").is_file() {
        bail!(
            "--resume: rank {} does not see {} (rank 0's newest intact checkpoint); the run folder must be one \
             that every rank sees",
            group.rank(),
            dir.display()
        );
    }
    Ok(Some(dir))
}
