//! `spar train --recipe R.toml`: the whole pipeline a recipe describes (SFT, then SPAR + Fact-Aware RL,
//! evaluation before / after, checkpoints, metrics, plots). See docs/training.md.
//!
//! Under a launcher (`spar launch --nproc-per-node N -- train ...`, torchrun, srun) with world size N > 1 the
//! ranks join through `spar_dist::init` (same binary and recipe checked on every rank) and train data-parallel;
//! rank 0 writes the run folder.
use super::common::RecipeArgs;
use anyhow::{Context, Result};
use spar_core::recipe::Recipe;
use spar_trainer::shared_sft::{self, SharedSft};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Run folder (replaces `trainer.out_dir`).
    #[arg(long, alias = "out-dir")]
    pub out: Option<PathBuf>,
    /// Continue from the newest checkpoint in the run folder.
    #[arg(long)]
    pub resume: bool,
    /// Delete the earlier run in the run folder and start afresh (without it, a folder that holds a run is
    /// refused unless --resume is given).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Start RL from the SFT checkpoint of DIR, a finished `spar sft` (`spar train --set trainer.steps=0`) run:
    /// a shared SFT. Only RL knobs may differ from that run's recipe; the held-out evaluations are measured with
    /// its `[rewards]`, and the before-RL one is its own. With `--resume`, continues such a run.
    #[arg(long, value_name = "DIR")]
    pub from_sft: Option<PathBuf>,
    /// Bit-identical runs on the CPU: batch-invariant generation (`rollout.batch_invariant`: one sequence per
    /// forward, no reused prefixes), so two runs of one recipe and seed, or a run killed and resumed, write the
    /// same checkpoints and metrics (timings aside). Slower rollouts; refused on a GPU.
    #[arg(long)]
    pub deterministic: bool,
    /// One trainer step from files instead of the loop: samples written by `spar rollout` ...
    #[arg(long = "in", alias = "input", requires = "scored", requires = "model")]
    pub input: Option<PathBuf>,
    /// ... and their scores written by `spar score`.
    #[arg(long, alias = "rewards")]
    pub scored: Option<PathBuf>,
}

pub fn run(mut args: Args) -> Result<()> {
    if args.deterministic {
        args.recipe.set.push("rollout.batch_invariant=true".into());
    }
    // Parsing, overrides and validation of every section happen here, before any heavy work.
    let builder = args.recipe.builder()?;
    if args.deterministic {
        deterministic_device(builder.recipe())?;
    }
    if let (Some(samples), Some(scored)) = (&args.input, &args.scored) {
        let out = args
            .out
            .clone()
            .context("--in needs --out (where the checkpoint goes)")?;
        let rep = spar_app::offline_step(&builder, samples, scored, &out)?;
        eprintln!(
            "one step: loss {:.6}, grad norm {:.4}, {} tokens, skipped {}",
            rep.loss, rep.grad_norm, rep.tokens, rep.skipped
        );
        return Ok(());
    }
    train(
        builder,
        "spar train",
        args.out,
        Start::of(args.resume, args.overwrite),
        args.from_sft.as_deref(),
    )
}

/// `--deterministic` promises bit-identical runs on the CPU only: GPU kernels (atomics in reductions, kernel
/// choice by shape and load) are not bitwise reproducible, so a GPU device is refused rather than a promise
/// silently broken.
fn deterministic_device(recipe: &Recipe) -> Result<()> {
    let device = recipe.model.as_ref().map_or("cpu", |m| m.device.as_str());
    // Said before the device is parsed: on a machine without CUDA "cuda:0" would fail for another reason.
    let on_cpu = device == "cpu" || (device == "auto" && !tch::Cuda::is_available());
    if !on_cpu {
        anyhow::bail!(
            "--deterministic: bit-identical runs are built for the CPU, and model.device is {device:?} \
             (add --set model.device=\"cpu\")"
        );
    }
    Ok(())
}

/// How a run treats what its folder holds already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// An empty or new folder; another run's folder is refused.
    Fresh,
    /// Continue from the newest intact checkpoint (`--resume`).
    Resume,
    /// Delete the earlier run first (`--overwrite`).
    Overwrite,
}

impl Start {
    /// From the `--resume` / `--overwrite` flags (clap keeps them apart).
    pub fn of(resume: bool, overwrite: bool) -> Start {
        match (resume, overwrite) {
            (true, _) => Start::Resume,
            (false, true) => Start::Overwrite,
            (false, false) => Start::Fresh,
        }
    }
}

/// Runs the recipe's training loop into `out` (default `trainer.out_dir`), audited; data-parallel when a
/// launcher started several ranks (rank 0 alone writes the run folder and its audit manifest).
pub fn train(
    builder: spar_app::Builder,
    command: &str,
    out: Option<PathBuf>,
    start: Start,
    from_sft: Option<&Path>,
) -> Result<()> {
    let resume = start == Start::Resume;
    let env = spar_dist::DistEnv::from_env()?;
    // torchrun's contract joins a process group even for a world of one (as `init_process_group` does), so
    // `--nproc-per-node 1` runs the collectives' engine (NCCL on a GPU); a one-task Slurm job stays local.
    let launched = env.world_size > 1 || env.launcher == spar_dist::Launcher::Torchrun;
    let (builder, job) = if launched {
        join(builder, &env)?
    } else {
        (builder, Job::local())
    };
    // Every rank builds its parts over the whole job (rank 0's tokenizer is read by all, actors included);
    // learners then train over the learners' group.
    let parts = |builder: &spar_app::Builder, out: &Path, resume: bool| {
        let mut parts = builder.train_parts_on(out, resume, job.world.clone())?;
        parts.group = job.learners.clone();
        parts.expert_group = job.experts.clone();
        parts.actors = job.actors.clone();
        anyhow::Ok(parts)
    };
    let group = job.learners.clone();
    let recipe = builder.recipe();
    let out = match out {
        Some(o) => o,
        None => recipe.resolve(&recipe.require(&recipe.trainer, "trainer")?.out_dir),
    };
    if job.world.world_size() > 1 && (from_sft.is_some() || shared_sft::of_run(&out)?.is_some()) {
        anyhow::bail!(
            "--from-sft (a run from a shared SFT) is single-process for now; run it without a launcher"
        );
    }
    if let Some(link) = job.actors.as_ref().filter(|l| l.is_actor()) {
        if from_sft.is_some() || shared_sft::of_run(&out)?.is_some() {
            anyhow::bail!("--from-sft (a run from a shared SFT) is single-process for now");
        }
        return spar_trainer::actor_loop::run(parts(&builder, &out, resume)?, link.clone());
    }
    if group.rank() != 0 {
        return spar_trainer::run::run(parts(&builder, &out, resume)?);
    }
    // One writer per run folder, for the whole run (released when this returns).
    let _lock = spar_trainer::run_lock::RunLock::acquire(&out, &spar_data::audit::hostname())?;
    // Under the lock: a fresh run never writes over another run's folder (--overwrite empties it first).
    if !resume {
        spar_trainer::run_folder::prepare_fresh(&out, start == Start::Overwrite)?;
    }
    let (builder, resume) = shared_sft(builder, &out, resume, from_sft)?;
    let recipe = builder.recipe();
    let mut spec = spar_data::audit::AuditSpec::for_dir(command, &out)
        .with_recipe(super::audit::recipe_toml(recipe))
        .with_data(super::audit::recipe_data_files(recipe))
        .with_claim_cache(builder.recipe_claim_cache(Some(&out)));
    if let Some(p) = recipe.model.as_ref().and_then(|m| m.path.as_ref()) {
        spec = spec.with_model(&recipe.resolve(p));
    }
    super::audit::run_audited(spec, || {
        spar_trainer::run::run(parts(&builder, &out, resume)?)
    })
}

/// The groups a rank of the job trains with.
struct Job {
    /// Every rank of the job.
    world: Arc<dyn spar_dist::Collectives>,
    /// The learner ranks (the whole job without actors): data parallelism, sharding, checkpoints.
    learners: Arc<dyn spar_dist::Collectives>,
    /// This learner's expert-parallel group (`distributed.expert_parallel` above 1).
    experts: Option<Arc<dyn spar_dist::Collectives>>,
    /// Actors apart from learners (`distributed.actors` above 0).
    actors: Option<spar_trainer::actor_layout::ActorLink>,
}

impl Job {
    fn local() -> Job {
        let one: Arc<dyn spar_dist::Collectives> = Arc::new(spar_dist::Local);
        Job {
            world: one.clone(),
            learners: one,
            experts: None,
            actors: None,
        }
    }
}

/// The GPU of local rank `local_rank` on a host with `gpus` of them: its own (`cuda:LOCAL_RANK`, as torchrun
/// places ranks), or, with more ranks than GPUs, `LOCAL_RANK mod gpus`, so a small layout (an actor and a learner,
/// two expert-parallel ranks) runs on one GPU. NCCL refuses two ranks on one device, so sharing one needs gloo.
pub(super) fn gpu_of_rank(
    local_rank: usize,
    gpus: usize,
    backend: spar_core::recipe::DistributedBackend,
) -> Result<usize> {
    use spar_core::recipe::DistributedBackend;
    if gpus == 0 {
        anyhow::bail!("model.device asks for a GPU, but this host has none that libtorch can see");
    }
    if local_rank < gpus {
        return Ok(local_rank);
    }
    if backend == DistributedBackend::Nccl {
        anyhow::bail!(
            "local rank {local_rank} has no GPU of its own (this host has {gpus}) and NCCL cannot put two ranks \
             on one GPU: launch at most {gpus} ranks a node, or set distributed.backend = \"gloo\" to share GPUs"
        );
    }
    Ok(local_rank % gpus)
}

/// Joins a multi-process job: checks `[distributed]` against the launcher's world size, puts the model on this
/// rank's GPU ([`gpu_of_rank`]) when the recipe asks for a GPU, and connects (gloo for a CPU model, the
/// recipe's backend for a GPU one), with the binary and the recipe compared across ranks. With
/// `distributed.actors = A` the last A ranks are actors and the learners get a group of their own; with
/// `distributed.expert_parallel` above 1 each learner gets its expert-parallel group.
fn join(builder: spar_app::Builder, env: &spar_dist::DistEnv) -> Result<(spar_app::Builder, Job)> {
    use spar_core::recipe::DistributedBackend;
    let mut recipe = builder.recipe().clone();
    let dist = recipe.distributed.clone().unwrap_or_default();
    let learners = dist
        .learners_for(env.world_size)
        .map_err(anyhow::Error::msg)?;
    dist.data_parallel_for(env.world_size)
        .map_err(anyhow::Error::msg)?;
    let device = spar_model::parse_device(&recipe.require(&recipe.model, "model")?.device)?;
    let backend = if device.is_cuda() {
        let gpu = gpu_of_rank(
            env.local_rank,
            tch::Cuda::device_count().max(0) as usize,
            dist.backend,
        )?;
        if let Some(m) = recipe.model.as_mut() {
            m.device = format!("cuda:{gpu}");
        }
        match dist.backend {
            DistributedBackend::Nccl => spar_dist::Backend::Nccl { device: gpu },
            DistributedBackend::Gloo => spar_dist::default_gloo(env),
        }
    } else {
        spar_dist::default_gloo(env)
    };
    let identity = vec![
        (
            "binary".to_string(),
            std::fs::read(std::env::current_exe()?)
                .context("reading this binary to compare it across ranks")?,
        ),
        (
            "recipe".to_string(),
            super::audit::recipe_toml(&recipe).into_bytes(),
        ),
    ];
    let timeout = std::time::Duration::from_secs(dist.timeout_secs);
    let joined = spar_dist::init(
        env,
        &spar_dist::InitOptions {
            backend: Some(backend),
            timeout,
            identity,
        },
    )?;
    let world = joined.group.clone();
    let is_actor = env.rank >= learners;
    let learner_group: Arc<dyn spar_dist::Collectives> = match (dist.actors, is_actor) {
        (0, _) => world.clone(),
        // An actor trains with nobody.
        (_, true) => Arc::new(spar_dist::Local),
        _ if learners == 1 => Arc::new(spar_dist::Local),
        _ => joined.subgroup("learners", &(0..learners).collect::<Vec<_>>())?,
    };
    // Expert-parallel blocks are consecutive learner ranks (P divides the learners, checked above).
    let experts = match dist.expert_parallel {
        0 | 1 => None,
        _ if is_actor => None,
        p => Some(joined.expert_group(p)?),
    };
    let actors = (dist.actors > 0).then(|| {
        let on_loopback = env.master_addr == "localhost" || env.master_addr.starts_with("127.");
        spar_trainer::actor_layout::ActorLink {
            world: world.clone(),
            learners,
            actors: dist.actors,
            max_policy_lag: dist.max_policy_lag,
            timeout,
            bind_host: if on_loopback { "127.0.0.1" } else { "0.0.0.0" }.into(),
            advertise_host: if on_loopback {
                "127.0.0.1".into()
            } else {
                spar_data::audit::hostname()
            },
            wire: Arc::new(ArrowSamples),
        }
    });
    Ok((
        spar_app::Builder::new(recipe),
        Job {
            world,
            learners: learner_group,
            experts,
            actors,
        },
    ))
}

/// Samples as record batches of `spar_data::wire`'s Sample schema (what actors send learners).
struct ArrowSamples;

impl spar_trainer::actor_layout::SampleWire for ArrowSamples {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        spar_data::wire::sample_schema()
    }
    fn encode(&self, samples: &[spar_core::Sample]) -> Result<arrow::record_batch::RecordBatch> {
        Ok(spar_data::wire::samples_to_batch(samples)?)
    }
    fn decode(
        &self,
        batch: &arrow::record_batch::RecordBatch,
        from: &str,
    ) -> Result<Vec<spar_core::Sample>> {
        Ok(spar_data::wire::samples_from_batch(batch, from)?)
    }
}

/// A run from a shared SFT (`--from-sft DIR`, or `--resume` of a run started that way): seeds a fresh run folder
/// from DIR's SFT-end checkpoint, refuses a recipe that changes anything SFT (or the held-out evaluation before RL)
/// depends on, and measures the held-out evaluations with the SFT run's `[rewards]`. Returns the builder and
/// whether to resume (always, once seeded).
fn shared_sft(
    builder: spar_app::Builder,
    out: &Path,
    resume: bool,
    from_sft: Option<&Path>,
) -> Result<(spar_app::Builder, bool)> {
    let existing = shared_sft::of_run(out)?;
    let has_checkpoint = spar_trainer::checkpoint::latest(&out.join("checkpoints"))?.is_some();
    let (record, seed_from) = match (from_sft, existing) {
        (None, None) => return Ok((builder, resume)),
        (None, Some(r)) if resume => (r, None),
        (None, Some(_)) => return Ok((builder, resume)),
        (Some(from), Some(r)) => {
            if std::path::absolute(from)? != r.from {
                anyhow::bail!(
                    "{}: started from the shared SFT {}, not {}",
                    out.display(),
                    r.from.display(),
                    from.display()
                );
            }
            if !resume {
                anyhow::bail!(
                    "{}: already started from {}; add --resume to continue it",
                    out.display(),
                    from.display()
                );
            }
            (r, None)
        }
        (Some(from), None) if has_checkpoint => anyhow::bail!(
            "{}: has checkpoints of its own SFT; --from-sft {} needs a fresh run folder",
            out.display(),
            from.display()
        ),
        (Some(from), None) => {
            let (_, state, _) = shared_sft::read_sft_run(from)?;
            let record = SharedSft {
                from: std::path::absolute(from)?,
                checkpoint: String::new(),
                recipe: state.extra[shared_sft::RECIPE_KEY].clone(),
            };
            (record, Some(from))
        }
    };
    let sft: Recipe = serde_json::from_value(record.recipe.clone()).with_context(|| {
        format!(
            "shared SFT {}: its recorded recipe does not read as a recipe",
            record.from.display()
        )
    })?;
    let bad = spar_core::recipe::shared_sft::sft_invalidating_changes(&sft, builder.recipe());
    if !bad.is_empty() {
        anyhow::bail!(
            "recipe: {} differ from the shared SFT run {}'s recipe; a run from a shared SFT may change only RL \
             knobs (spar_core::recipe::shared_sft::RL_ONLY_KEYS)",
            bad.join(", "),
            record.from.display()
        );
    }
    let changed = spar_core::recipe::shared_sft::changed_keys(&sft, builder.recipe());
    if let Some(from) = seed_from {
        shared_sft::seed(from, out)?;
    }
    eprintln!(
        "[train] RL from the shared SFT of {} (RL knobs changed: {}); held-out evaluations measured with its [rewards]",
        record.from.display(),
        if changed.is_empty() {
            "none".to_string()
        } else {
            changed.join(", ")
        }
    );
    Ok((
        builder.with_eval_rewards(sft.rewards.clone().unwrap_or_default()),
        true,
    ))
}

#[cfg(test)]
mod gpu_tests {
    use super::gpu_of_rank;
    use spar_core::recipe::DistributedBackend::{Gloo, Nccl};

    #[test]
    fn ranks_share_gpus_only_over_gloo() {
        assert_eq!(gpu_of_rank(1, 8, Nccl).unwrap(), 1);
        assert_eq!(gpu_of_rank(1, 1, Gloo).unwrap(), 0);
        assert_eq!(gpu_of_rank(3, 2, Gloo).unwrap(), 1);
        let e = gpu_of_rank(1, 1, Nccl).unwrap_err().to_string();
        assert!(e.contains("distributed.backend = \"gloo\""), "{e}");
        assert!(gpu_of_rank(0, 0, Gloo).is_err());
    }
}
