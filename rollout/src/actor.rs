//! [`Rollout`]: what the trainer, `spar rollout` and `spar eval` call. It picks the segments (or whole episodes)
//! of a round, plays G samples of each at once against the built-in engine or an external backend, gates the
//! segments into the next stage's pool, and hands every finished sample to an optional sink the moment it ends
//! (so reward scoring overlaps generation).
use crate::codec::TextCodec;
use crate::engine::{self, Engine, EngineConfig, EngineStats, KeptGraphs, keep_graphs_override};
use crate::env::{
    BackendTurns, ChatTurns, Consultation, Env, EnvConfig, ScriptedDoctor, ScriptedTurns, StageEnd,
    TurnGenerator, mix_seed, stage_replies,
};
use crate::pipeline::{Segment, StagePools, promote, promotion_candidates};
use crate::simulator::{Guarded, SelfPlayPatient};
use crate::stream::ChatMl;
use anyhow::{Context, Result, bail};
use spar_core::Stage;
use spar_core::case::Case;
use spar_core::recipe::RolloutSection;
use spar_core::sample::{EndReason, EpisodeMode, SCHEMA_VERSION, Sample};
use spar_core::traits::{ChatBackend, PatientSimulator, RolloutBackend, StageScorer};
use spar_model::Qwen3Model;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// The samples that share one baseline: G continuations of one pooled prefix (segmented mode) or G whole
/// episodes of one case with the same opening.
#[derive(Clone, Debug)]
pub struct Group {
    pub group_id: String,
    pub case_id: String,
    /// The stage played (None in whole-episode mode).
    pub stage: Option<Stage>,
    pub mode: EpisodeMode,
    /// In `sample_idx` order, failed episodes included (their `end_reason` says so; rewards drop them).
    pub samples: Vec<Sample>,
    /// Gate score V_k of each sample (segmented mode; None for a failed sample or whole episodes).
    pub gate_scores: Vec<Option<f64>>,
    /// `(sample_idx, reason)` of every episode that ended early for a recorded reason (simulator or policy
    /// failure, truncation, ...).
    pub notes: Vec<(u32, String)>,
    /// Doctor replies cut at `max_new_tokens`, per sample in `sample_idx` order (scored as they stand).
    pub truncated_replies: Vec<u32>,
    /// Sample indices promoted into the next stage's pool.
    pub promoted: Vec<u32>,
}

/// Who plays the patient.
#[derive(Clone)]
pub enum SimulatorChoice {
    /// A fixed simulator (scripted, LLM over an endpoint, or any other implementation).
    Fixed(Arc<dyn PatientSimulator>),
    /// The policy's own generator plays the patient (self-play).
    SelfPlay,
}

/// Throughput of the last round.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundStats {
    pub episodes: u64,
    pub generated_tokens: u64,
    pub seconds: f64,
    pub engine: EngineStats,
}

/// Where generation runs.
#[derive(Clone)]
pub enum Policy<'m> {
    /// The built-in engine over these weights (colocated with the trainer).
    Builtin(&'m Qwen3Model),
    /// The external backend configured with [`Rollout::with_backend`].
    External,
    /// A scripted doctor (the expert of `spar-data`): gold consultations in the rollout's own environment and
    /// token stream (SFT data, evaluation ceilings). Needs a fixed simulator.
    Scripted(Arc<dyn ScriptedDoctor>),
    /// A policy served as text by a chat endpoint (`spar eval --endpoint`): its replies are encoded into the
    /// token stream with the rollout's codec ([`crate::codec::ByteCodec`] keeps them exact). Needs a fixed
    /// simulator.
    Chat(Arc<dyn ChatBackend>),
}

/// The actor. See the module documentation.
pub struct Rollout {
    cfg: RolloutSection,
    cases: Vec<Arc<Case>>,
    codec: Arc<dyn TextCodec>,
    chat: ChatMl,
    scorer: Arc<dyn StageScorer>,
    simulator: SimulatorChoice,
    backend: Option<Arc<dyn RolloutBackend>>,
    pools: StagePools,
    run_id: String,
    policy_version: u64,
    seed: u64,
    sink: Option<UnboundedSender<Sample>>,
    group_sink: Option<UnboundedSender<Group>>,
    progress: Option<indicatif::ProgressBar>,
    simulator_deadline: Duration,
    runtime: tokio::runtime::Runtime,
    keep_policy_failures: bool,
    last: RoundStats,
    /// The built-in engine's CUDA graphs, kept for the next round (`rollout.keep_graphs`).
    kept_graphs: Option<KeptGraphs>,
}

impl Rollout {
    /// One sample per case instead of a group (greedy evaluation, scripted plays): no group baseline is needed
    /// there, and a second identical sample would only double the work. Training rounds keep `group_size`.
    pub fn single_sample(self) -> Self {
        self.with_group_size(1)
    }

    /// `n` samples per group (evaluation: samples per case), whatever `[rollout] group_size` says. Validation
    /// asks training for at least two; evaluation may want one.
    pub fn with_group_size(mut self, n: usize) -> Self {
        self.cfg.group_size = n.max(1);
        self
    }

    /// A rollout over `cases` (at least one). `scorer` gives the gate score V_k.
    pub fn new(
        cfg: RolloutSection,
        cases: Vec<Case>,
        codec: Arc<dyn TextCodec>,
        scorer: Arc<dyn StageScorer>,
        simulator: SimulatorChoice,
        run_id: impl Into<String>,
    ) -> Result<Self> {
        cfg.validate()
            .map_err(|(k, m)| anyhow::anyhow!("[rollout] {k}: {m}"))?;
        if cases.is_empty() {
            bail!("rollout needs at least one case");
        }
        let chat = ChatMl::new(codec.as_ref(), cfg.enable_thinking)?;
        let seed = cfg.seed.unwrap_or(0);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("spar-rollout")
            .build()?;
        Ok(Rollout {
            cfg,
            cases: cases.into_iter().map(Arc::new).collect(),
            codec,
            chat,
            scorer,
            simulator,
            backend: None,
            pools: StagePools::default(),
            run_id: run_id.into(),
            policy_version: 0,
            seed,
            sink: None,
            group_sink: None,
            progress: None,
            simulator_deadline: Duration::from_secs(120),
            runtime,
            keep_policy_failures: false,
            last: RoundStats::default(),
            kept_graphs: None,
        })
    }

    /// Rank `rank` of `world` data-parallel ranks: keeps cases `rank, rank + world, rank + 2 world, ...`, so
    /// that in round t the ranks together open the cases one process opens with `world` times the groups (when
    /// `world` divides the case count), mixes the rank into the seed (sampling, interruptions and snippets differ
    /// per rank) and into the run id (group ids stay unique across ranks). `world` = 1 changes nothing.
    pub fn shard(mut self, rank: usize, world: usize) -> Result<Self> {
        if world <= 1 {
            return Ok(self);
        }
        if rank >= world {
            bail!("rank {rank} is outside world size {world}");
        }
        if self.cases.len() < world {
            bail!(
                "{} case(s) for {world} data-parallel ranks: every rank needs at least one (add cases or launch \
                 fewer ranks)",
                self.cases.len()
            );
        }
        self.cases = self.cases.into_iter().skip(rank).step_by(world).collect();
        self.seed = mix_seed(self.seed, "rank", rank as u64);
        self.run_id = format!("{}-rank{rank}", self.run_id);
        Ok(self)
    }

    /// A failed generator call ends that episode with `EndReason::PolicyFailed` (its error in the group's notes)
    /// instead of failing the round: for evaluation, where one endpoint outage must not stop the run.
    pub fn keep_policy_failures(mut self) -> Self {
        self.keep_policy_failures = true;
        self
    }

    /// Runs `work` on the rollout's runtime, where its episodes ran (and where clients used in them keep their
    /// connections): scoring and fact checking after a round. Call from a plain thread.
    pub fn block_on<F: std::future::Future>(&self, work: F) -> F::Output {
        self.runtime.block_on(work)
    }

    /// Generate through an external OpenAI-compatible server (token-in / token-out) instead of the built-in
    /// engine; then call [`Rollout::collect_groups`] with [`Policy::External`].
    pub fn with_backend(mut self, backend: Arc<dyn RolloutBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Every finished sample is also sent here the moment its episode ends (before its group is complete).
    pub fn set_sample_sink(&mut self, sink: Option<UnboundedSender<Sample>>) {
        self.sink = sink;
    }

    /// Every finished group is also sent here, in the order [`Rollout::collect_groups`] returns them, as soon as
    /// it and every group before it are complete (while later groups still play): a trainer scores them
    /// meanwhile, in the same order as after the round. `promoted` is still empty in these copies.
    pub fn set_group_sink(&mut self, sink: Option<UnboundedSender<Group>>) {
        self.group_sink = sink;
    }

    /// A progress bar advanced by one per finished episode; its message shows generated tokens/s.
    pub fn set_progress(&mut self, bar: Option<indicatif::ProgressBar>) {
        self.progress = bar;
    }

    /// Deadline of one simulator call (default 120 s); a call past it fails that episode.
    pub fn set_simulator_deadline(&mut self, d: Duration) {
        self.simulator_deadline = d;
    }

    /// Version stamped on every sample (the trainer bumps it after each weight update).
    pub fn set_policy_version(&mut self, v: u64) {
        self.policy_version = v;
    }

    /// The stage pools and case position: save them in a checkpoint.
    pub fn pools(&self) -> &StagePools {
        &self.pools
    }

    /// Restores pools saved by a checkpoint.
    pub fn restore_pools(&mut self, pools: StagePools) {
        self.pools = pools;
    }

    pub fn last_round(&self) -> RoundStats {
        self.last
    }

    pub fn config(&self) -> &RolloutSection {
        &self.cfg
    }

    /// How many cases this rollout plays from.
    /// Whether case `id` is among this rollout's cases (its rank's shard under data parallelism).
    pub fn has_case(&self, id: &str) -> bool {
        self.find_case(id).is_some()
    }

    fn find_case(&self, id: &str) -> Option<&Arc<Case>> {
        self.cases.iter().find(|c| c.id == id)
    }

    pub fn case_count(&self) -> usize {
        self.cases.len()
    }

    /// Plays one round of `n_groups` groups of `group_size` samples. Segmented mode takes pooled segments first
    /// (latest stage first) and opens fresh cases for the rest. Call from a plain thread (not inside a tokio
    /// runtime): the built-in engine runs on this thread while the episodes run on the rollout's runtime.
    pub fn collect_groups(&mut self, policy: Policy<'_>, n_groups: usize) -> Result<Vec<Group>> {
        let started = Instant::now();
        let round = self.pools.round;
        self.pools.round += 1;
        let mut jobs: Vec<Job> = Vec::new();
        if self.cfg.segmented {
            for seg in self.pools.take(n_groups) {
                let case = self.case(&seg.case_id)?;
                jobs.push(Job {
                    case,
                    stage: Some(seg.stage),
                    start: Start::Segment(Box::new(seg.prefix)),
                });
            }
        }
        while jobs.len() < n_groups {
            let case =
                self.cases[(self.pools.next_case % self.cases.len() as u64) as usize].clone();
            let k = self.pools.next_case;
            self.pools.next_case += 1;
            let u = (mix_seed(self.seed, "mode", k) >> 11) as f64 / (1u64 << 53) as f64;
            let mode = if u < self.cfg.interruption_rate {
                EpisodeMode::Interrupted
            } else {
                EpisodeMode::Fresh
            };
            let stage = self.cfg.segmented.then_some(Stage::Inquiry);
            jobs.push(Job {
                case,
                stage,
                start: Start::Fresh {
                    mode,
                    snippet_seed: mix_seed(self.seed, "snippet", k),
                },
            });
        }
        let groups: Vec<GroupPlan> = jobs
            .into_iter()
            .enumerate()
            .map(|(i, job)| {
                let stage = job
                    .stage
                    .map_or("episode".to_string(), |s| s.name().to_string());
                GroupPlan {
                    group_id: format!("{}/r{round}/g{i}/{}/{stage}", self.run_id, job.case.id),
                    job,
                }
            })
            .collect();

        let tokens = Arc::new(AtomicU64::new(0));
        let (results, engine_stats) = match policy {
            Policy::Builtin(model) => {
                let (client, inbox) = engine::channel(format!("builtin:{}", self.run_id));
                let n_moe = model.config.moe_layers().len();
                let record = self.cfg.record_routing && n_moe > 0;
                let ecfg = EngineConfig {
                    max_batch: self.cfg.max_batch,
                    kv_slots: self.cfg.kv_slot_count(),
                    max_seq_len: self.cfg.max_seq_len,
                    prefill_tokens: 4096,
                    seed: mix_seed(self.seed, "engine", round),
                    record_routing: record,
                    batch_invariant: self.cfg.batch_invariant,
                    prefill_wait_steps: self.cfg.prefill_wait_steps,
                    overlap_prefill: false,
                    async_decode: self.cfg.async_decode,
                };
                let (mut ecfg, lowered) =
                    ecfg.fit_gpu_memory(model, self.cfg.gpu_memory_utilization)?;
                let keep = keep_graphs_override().unwrap_or(self.cfg.keep_graphs);
                let kept = self.kept_graphs.take().filter(|_| keep);
                if let Some(line) = lowered {
                    match &kept {
                        // The kept graphs' memory pool was taken after the last round sized its cache, so this
                        // round's share for the cache comes out smaller by about the pool: the kept slots, while
                        // the GPU can still map them, make the same footprint as the last round and replay its
                        // graphs instead of capturing new ones for fewer slots.
                        Some(k)
                            if k.kv_slots() <= self.cfg.kv_slot_count()
                                && kept_cache_fits(model, k)? =>
                        {
                            ecfg.kv_slots = k.kv_slots();
                            ecfg.max_batch = self.cfg.max_batch.min(k.kv_slots());
                        }
                        _ => tracing::warn!("{line}"),
                    }
                }
                let engine = if keep {
                    Engine::new_keeping(model, ecfg, kept)?
                } else {
                    Engine::new(model, ecfg)?
                };
                let mut engine = engine.with_codec(self.codec.clone());
                let generator: Arc<dyn TurnGenerator> = Arc::new(client.clone());
                let env = self.env(
                    generator,
                    Some(Arc::new(client)),
                    record.then_some((n_moe, model.config.num_experts_per_tok)),
                )?;
                let fut = self.play_groups(env, groups, tokens.clone(), started);
                let handle = self.runtime.spawn(fut);
                let served = engine.run_until(&inbox, || handle.is_finished());
                let stats = engine.stats_with_graphs();
                // On an engine failure, dropping the engine and its inbox fails every waiting request, so the
                // episodes finish (with that error) instead of waiting forever.
                if keep && served.is_ok() {
                    self.kept_graphs = engine.into_kept();
                } else {
                    drop(engine);
                }
                drop(inbox);
                let results = self
                    .runtime
                    .block_on(handle)
                    .context("rollout task panicked")?;
                served?;
                (results?, stats)
            }
            Policy::External => {
                let backend = self
                    .backend
                    .clone()
                    .context("Policy::External needs Rollout::with_backend")?;
                // The server's expert choices, when the backend asks for them (routing replay).
                let routing = self.cfg.record_routing.then(|| backend.routing()).flatten();
                let env = self.env(
                    Arc::new(BackendTurns(backend.clone())),
                    Some(backend),
                    routing,
                )?;
                let fut = self.play_groups(env, groups, tokens.clone(), started);
                (self.runtime.block_on(fut)?, EngineStats::default())
            }
            Policy::Scripted(doctor) => {
                let generator = Arc::new(ScriptedTurns {
                    doctor,
                    codec: self.codec.clone(),
                    im_end: self.chat.im_end,
                });
                let env = self.env(generator, None, None)?;
                let fut = self.play_groups(env, groups, tokens.clone(), started);
                (self.runtime.block_on(fut)?, EngineStats::default())
            }
            Policy::Chat(chat) => {
                let generator = Arc::new(ChatTurns {
                    chat,
                    codec: self.codec.clone(),
                    im_end: self.chat.im_end,
                });
                let env = self.env(generator, None, None)?;
                let fut = self.play_groups(env, groups, tokens.clone(), started);
                (self.runtime.block_on(fut)?, EngineStats::default())
            }
        };

        let mut out = Vec::with_capacity(results.len());
        for (plan_id, mut g, finals) in results {
            let _ = plan_id;
            if let Some(stage) = g.stage {
                let si = stage.index();
                self.pools.stats.groups_played[si] += 1;
                for (s, score) in g.samples.iter().zip(&g.gate_scores) {
                    match (s.end_reason, score) {
                        (EndReason::GatedOut, _) => self.pools.stats.gated_out[si] += 1,
                        (r, _) if r.is_failure() => self.pools.stats.failed[si] += 1,
                        _ => {}
                    }
                }
                if stage != Stage::Diag {
                    // Only a sample whose consultation goes on can be promoted: `finals[i]` is None for one
                    // that ended it early, so the best passing sample that can continue goes instead.
                    let can_continue: Vec<bool> = g
                        .samples
                        .iter()
                        .zip(&finals)
                        .map(|(s, f)| {
                            f.is_some()
                                && matches!(s.end_reason, EndReason::Done | EndReason::Truncated)
                        })
                        .collect();
                    let eligible = promotion_candidates(&g.gate_scores, &can_continue);
                    for idx in promote(&eligible, self.cfg.tau, self.cfg.top_m) {
                        let Some(c) = finals[idx].clone() else {
                            continue;
                        };
                        let prefix = Consultation {
                            stream: c.stream.as_prefix(),
                            ..c
                        };
                        self.pools.push(Segment {
                            case_id: g.case_id.clone(),
                            stage: prefix.stage,
                            prefix,
                            parent_group: Some(g.group_id.clone()),
                            parent_score: g.gate_scores[idx],
                        });
                        self.pools.stats.promoted[si] += 1;
                        g.promoted.push(idx as u32);
                    }
                }
            }
            out.push(g);
        }
        self.last = RoundStats {
            episodes: out.iter().map(|g| g.samples.len() as u64).sum(),
            generated_tokens: tokens.load(Ordering::Relaxed),
            seconds: started.elapsed().as_secs_f64(),
            engine: engine_stats,
        };
        Ok(out)
    }

    fn case(&self, id: &str) -> Result<Arc<Case>> {
        self.find_case(id).cloned().with_context(|| {
            format!("pooled segment of case {id:?}, which is not among the loaded cases")
        })
    }

    fn env(
        &self,
        generator: Arc<dyn TurnGenerator>,
        backend: Option<Arc<dyn RolloutBackend>>,
        routing: Option<(usize, usize)>,
    ) -> Result<Env> {
        let sim: Arc<dyn PatientSimulator> = match (&self.simulator, backend) {
            (SimulatorChoice::Fixed(s), _) => s.clone(),
            (SimulatorChoice::SelfPlay, Some(backend)) => Arc::new(SelfPlayPatient::new(
                backend,
                self.codec.clone(),
                self.cfg.sampling.clone(),
            )?),
            (SimulatorChoice::SelfPlay, None) => {
                anyhow::bail!(
                    "self-play needs a model to play the patient; a scripted or chat doctor has none"
                )
            }
        };
        let mut cfg = EnvConfig::from_section(&self.cfg);
        cfg.track_routing = routing;
        cfg.keep_policy_failures = self.keep_policy_failures;
        Ok(Env {
            codec: self.codec.clone(),
            chat: self.chat.clone(),
            generator,
            simulator: Guarded::new(sim, self.simulator_deadline),
            cfg,
        })
    }

    /// The async body of a round: every sample of every group as its own task.
    fn play_groups(
        &self,
        env: Env,
        groups: Vec<GroupPlan>,
        tokens: Arc<AtomicU64>,
        started: Instant,
    ) -> impl std::future::Future<Output = Result<Vec<PlayedGroup>>> + Send + 'static {
        let g_size = self.cfg.group_size;
        let ctx = SampleCtx {
            env: Arc::new(env),
            scorer: self.scorer.clone(),
            tau: self.cfg.tau,
            run_id: self.run_id.clone(),
            policy_version: self.policy_version,
            seed: self.seed,
            sink: self.sink.clone(),
            progress: self.progress.clone(),
            tokens,
            started,
        };
        let group_sink = self.group_sink.clone();
        async move {
            let mut tasks = Vec::new();
            for plan in groups {
                let ctx = ctx.clone();
                tasks.push(tokio::spawn(
                    async move { play_group(ctx, plan, g_size).await },
                ));
            }
            let mut out = Vec::new();
            for t in tasks {
                let played: PlayedGroup = t.await.context("group task panicked")??;
                if let Some(sink) = &group_sink {
                    let _ = sink.send(played.1.clone());
                }
                out.push(played);
            }
            Ok(out)
        }
    }
}

/// A played group: its id, the group, and each sample's consultation when it may continue.
type PlayedGroup = (String, Group, Vec<Option<Consultation>>);

struct Job {
    case: Arc<Case>,
    stage: Option<Stage>,
    start: Start,
}

enum Start {
    Fresh {
        mode: EpisodeMode,
        snippet_seed: u64,
    },
    Segment(Box<Consultation>),
}

struct GroupPlan {
    group_id: String,
    job: Job,
}

#[derive(Clone)]
struct SampleCtx {
    env: Arc<Env>,
    scorer: Arc<dyn StageScorer>,
    tau: f64,
    run_id: String,
    policy_version: u64,
    seed: u64,
    sink: Option<UnboundedSender<Sample>>,
    progress: Option<indicatif::ProgressBar>,
    tokens: Arc<AtomicU64>,
    started: Instant,
}

async fn play_group(ctx: SampleCtx, plan: GroupPlan, g: usize) -> Result<PlayedGroup> {
    let GroupPlan { group_id, job } = plan;
    let case = job.case.clone();
    // All G samples share one opening (same mode, same snippet).
    let opening: Result<Consultation, String> = match job.start {
        Start::Segment(c) => Ok(*c),
        Start::Fresh { mode, snippet_seed } => ctx.env.open(&case, mode, snippet_seed).await,
    };
    let mode = opening
        .as_ref()
        .map(|c| c.mode)
        .unwrap_or(EpisodeMode::Fresh);
    let mut tasks = Vec::new();
    for idx in 0..g {
        let (ctx, case, opening, group_id) =
            (ctx.clone(), case.clone(), opening.clone(), group_id.clone());
        let stage = job.stage;
        tasks.push(tokio::spawn(async move {
            play_sample(&ctx, &case, opening, stage, &group_id, idx as u32).await
        }));
    }
    let mut group = Group {
        group_id: group_id.clone(),
        case_id: case.id.clone(),
        stage: job.stage,
        mode,
        samples: vec![],
        gate_scores: vec![],
        notes: vec![],
        truncated_replies: vec![],
        promoted: vec![],
    };
    let mut finals = Vec::new();
    for t in tasks {
        let r = t.await.context("episode task panicked")??;
        if let Some(n) = r.note {
            group.notes.push((r.sample.sample_idx, n));
        }
        group.samples.push(r.sample);
        group.gate_scores.push(r.gate);
        group.truncated_replies.push(r.truncated_replies);
        finals.push(r.consultation);
    }
    Ok((group_id, group, finals))
}

struct Played {
    sample: Sample,
    gate: Option<f64>,
    note: Option<String>,
    truncated_replies: u32,
    /// The consultation after the sample (None when it cannot continue).
    consultation: Option<Consultation>,
}

async fn play_sample(
    ctx: &SampleCtx,
    case: &Case,
    opening: Result<Consultation, String>,
    stage: Option<Stage>,
    group_id: &str,
    idx: u32,
) -> Result<Played> {
    let key = format!("{group_id}#{idx}");
    let (mut c, failure) = match opening {
        Ok(c) => (c, None),
        Err(reason) => {
            let empty = Consultation {
                case_id: case.id.clone(),
                mode: EpisodeMode::Fresh,
                stream: Default::default(),
                turns: vec![],
                sim_dialogue: vec![],
                next_user: None,
                next_user_from_simulator: false,
                stage: stage.unwrap_or(Stage::Inquiry),
                truncated_replies: 0,
            };
            (empty, Some(reason))
        }
    };
    let played_stage = c.stage;
    let (end_reason, note, gate) = if let Some(reason) = failure {
        (EndReason::SimulatorFailed, Some(reason), None)
    } else if stage.is_some() {
        match ctx.env.play_stage(case, &mut c, ctx.seed, &key).await? {
            StageEnd::Ended { reason, detail } => {
                let gate = (!reason.is_failure()).then(|| gate_score(ctx, case, &c, played_stage));
                (reason, detail, gate)
            }
            end => {
                let v = gate_score(ctx, case, &c, played_stage);
                let reason = match (played_stage, end) {
                    (Stage::Diag, StageEnd::Completed) => EndReason::Done,
                    (Stage::Diag, _) => EndReason::MaxTurns,
                    _ if v >= ctx.tau => EndReason::Done,
                    // Stage output below tau: the segment does not continue.
                    _ => EndReason::GatedOut,
                };
                (reason, None, Some(v))
            }
        }
    } else {
        let (reason, detail) = ctx.env.play_episode(case, &mut c, ctx.seed, &key).await?;
        (reason, detail, None)
    };
    // A reply cut at max_new_tokens is scored as it stands and flagged (a gated-out segment stays gated out).
    let (end_reason, note) = match end_reason {
        EndReason::Done | EndReason::MaxTurns if c.truncated_replies > 0 => (
            EndReason::Truncated,
            note.or_else(|| {
                Some(format!(
                    "{} replies reached max_new_tokens",
                    c.truncated_replies
                ))
            }),
        ),
        r => (r, note),
    };
    // A failed simulator or judge is the infrastructure's problem: a warning. A policy that stops early, runs out
    // of tokens or gives its diagnosis during the lab stage is what RL is there to train away: recorded in the
    // sample's end reason and metrics, logged at debug level (a random-init evaluation would print every episode).
    if let Some(n) = &note {
        if end_reason.is_failure() {
            tracing::warn!(case = %case.id, sample = idx, reason = ?end_reason, "episode ended early: {n}");
        } else {
            tracing::debug!(case = %case.id, sample = idx, reason = ?end_reason, "episode ended early: {n}");
        }
    }
    let stages: Vec<Stage> = match stage {
        Some(s) => vec![s],
        None => {
            let mut v: Vec<Stage> = c.stream.steps.iter().map(|s| s.stage).collect();
            v.dedup();
            v
        }
    };
    let sample = Sample {
        schema_version: SCHEMA_VERSION,
        run_id: ctx.run_id.clone(),
        case_id: case.id.clone(),
        group_id: group_id.to_string(),
        sample_idx: idx,
        stages,
        mode: c.mode,
        policy_version: ctx.policy_version,
        end_reason,
        token_ids: c.stream.ids.clone(),
        loss_mask: c.stream.loss_mask.clone(),
        rollout_logprobs: c.stream.logprobs.clone(),
        routed_experts: c.stream.routed_experts(),
        steps: c.stream.steps.clone(),
        turns: c.turns.clone(),
    };
    if let Err((field, msg)) = sample.check() {
        bail!("internal error: sample {key} is inconsistent: {field}: {msg}");
    }
    let generated: u64 = sample.loss_mask.iter().map(|&m| m as u64).sum();
    let total = ctx.tokens.fetch_add(generated, Ordering::Relaxed) + generated;
    if let Some(bar) = &ctx.progress {
        bar.inc(1);
        bar.set_message(format!(
            "{:.0} tok/s",
            total as f64 / ctx.started.elapsed().as_secs_f64().max(1e-9)
        ));
    }
    if let Some(sink) = &ctx.sink {
        let _ = sink.send(sample.clone());
    }
    let continues = matches!(end_reason, EndReason::Done | EndReason::Truncated)
        && played_stage != Stage::Diag
        && c.stage != played_stage;
    Ok(Played {
        sample,
        gate,
        note,
        truncated_replies: c.truncated_replies,
        consultation: continues.then_some(c),
    })
}

fn gate_score(ctx: &SampleCtx, case: &Case, c: &Consultation, stage: Stage) -> f64 {
    ctx.scorer
        .score(case, stage, &stage_replies(&c.turns, stage), &c.turns)
        .score
}

/// Whether the GPU can map the KV cache of `kept` now (its free memory and torch's cache).
fn kept_cache_fits(model: &spar_model::Qwen3Model, kept: &KeptGraphs) -> Result<bool> {
    match model.device() {
        tch::Device::Cuda(d) => {
            Ok(spar_model::cuda_memory_now(d)?.available() >= kept.bytes() as u64)
        }
        _ => Ok(false),
    }
}
