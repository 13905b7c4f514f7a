//! `spar train`: the whole M3 loop from one recipe. Tokenizer (the model's, or a small BPE trained on the case
//! text for the CPU demo), policy (loaded or random-init), SFT on scripted expert consultations, then
//! colocated RL: the built-in engine plays G samples per group with the current weights, spar-rewards scores
//! each group (SPAR advantages, Fact-Aware reward), the learner updates the same weights in place (that is the
//! weight refresh), checkpoints go out atomically. Held-out cases are evaluated before and after RL with the
//! same simulator and scorer; the comparison, transcripts and plots land in the run folder.
use crate::adamw::{AdamW, AdamWConfig};
use crate::agg::AggMode;
use crate::batch::{TrainItem, assemble};
use crate::checkpoint::{self, TrainerState};
use crate::learner::{BatchingConfig, Learner, rl_update, sft_update};
use crate::metrics::MetricsLogger;
use crate::policy_loss::{PolicyLossConfig, RatioLevel};
use crate::rng::{new_rng, restore_rng, save_rng};
use crate::schedule::LrSchedule;
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::IndexedRandom;
use spar_core::recipe::{PolicyLoss, Recipe};
use spar_core::sample::Role;
use spar_core::{Case, Sample, Scored, Stage};
use spar_model::{Qwen3Config, Qwen3Model, Tokenizer};
use spar_rollout::codec::TextCodec;
use spar_rollout::{Policy, Rollout, SimulatorChoice};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Command-line choices that are not part of the recipe.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue from the newest checkpoint in the run folder.
    pub resume: bool,
    /// Replaces `trainer.out_dir`.
    pub out_dir: Option<PathBuf>,
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{prefix:>6} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.set_prefix(what.to_string());
    b
}

/// Per-stage scores and reward of one evaluation pass.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct EvalSummary {
    pub episodes: usize,
    pub reward_mean: f64,
    pub stage_means: [f64; 4],
    pub parsed_rate: f64,
    pub hallucination_rate: f64,
}

/// Runs the recipe end to end.
pub fn run(recipe: &Recipe, opts: &RunOptions) -> Result<()> {
    let model_sec = recipe.require(&recipe.model, "model")?;
    let data_sec = recipe.data.clone().unwrap_or_default();
    let rollout_sec = recipe.rollout.clone().unwrap_or_default();
    let rewards_sec = recipe.rewards.clone().unwrap_or_default();
    let tr = recipe.require(&recipe.trainer, "trainer")?.clone();
    let eval_sec = recipe.eval.clone().unwrap_or_default();
    let seed = recipe.seed.unwrap_or(0);
    let base = recipe
        .source
        .as_ref()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf);
    let out = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| recipe.resolve(&tr.out_dir));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let device = spar_model::parse_device(&model_sec.device)?;
    let kind = spar_model::dtype_kind(model_sec.dtype);
    tch::manual_seed(seed as i64);

    // Everything cheap is checked before anything heavy starts.
    let train_cases = spar_data::recipe::train_cases(&data_sec, base.as_deref())?;
    let eval_cases: Vec<Case> = {
        let mut c = spar_data::recipe::eval_cases(&data_sec, base.as_deref())?;
        if eval_sec.max_cases > 0 {
            c.truncate(eval_sec.max_cases);
        }
        c
    };
    if train_cases.is_empty() || eval_cases.is_empty() {
        bail!(
            "the recipe's [data] gives {} training and {} evaluation cases; both must be > 0",
            train_cases.len(),
            eval_cases.len()
        );
    }
    // sft and distill have no importance ratio of their own; their RL-shaped knobs use SPAR's.
    let level = RatioLevel::of(tr.policy_loss).unwrap_or(RatioLevel::Segment);
    let loss_cfg = policy_loss_config(&tr, level)?;
    let batching = batching_config(&tr)?;
    let sft_batching = BatchingConfig {
        agg: AggMode::TokenMean,
        ..batching
    };
    let offline_distill = tr.policy_loss == PolicyLoss::Distill;
    let use_gae = rewards_sec.spar.estimator == spar_core::recipe::Estimator::Gae;

    // Tokenizer and policy.
    let tokenizer: Arc<Tokenizer> = Arc::new(match (&model_sec.path, tr.bpe_vocab_size) {
        (_, n) if n > 0 => {
            let dir = out.join("tokenizer");
            if opts.resume && dir.join("tokenizer.json").exists() {
                Tokenizer::from_dir(&dir)?
            } else {
                let texts = corpus(&train_cases);
                eprintln!(
                    "[train] BPE tokenizer ({n} tokens) on {} texts from {} training cases",
                    texts.len(),
                    train_cases.len()
                );
                spar_model::train_bpe(&texts, n, &dir)?
            }
        }
        (Some(p), _) => Tokenizer::from_dir(&recipe.resolve(p))?,
        // A random-init student distilled from teachers speaks the teachers' tokenizer; a copy goes into the
        // run folder like a trained BPE would (and from there into `final/`).
        (None, _) if !tr.distill.teachers.is_empty() => {
            let src = recipe.resolve(&tr.distill.teachers[0]);
            if !src.join("tokenizer.json").exists() {
                bail!(
                    "recipe: trainer.distill.teachers[0] = {}: no tokenizer.json there (a random-init student \
                     takes the first teacher's tokenizer; is the teacher's run finished?)",
                    src.display()
                );
            }
            let dir = out.join("tokenizer");
            std::fs::create_dir_all(&dir)?;
            for f in ["tokenizer.json", "tokenizer_config.json"] {
                if src.join(f).exists() {
                    std::fs::copy(src.join(f), dir.join(f))
                        .with_context(|| format!("copying {}", src.join(f).display()))?;
                }
            }
            Tokenizer::from_dir(&dir)?
        }
        (None, _) => bail!(
            "recipe: `model.init` needs `trainer.bpe_vocab_size` > 0 (no tokenizer to go with a random model)"
        ),
    });
    let mut model = match (&model_sec.path, &model_sec.init) {
        (Some(p), _) => Qwen3Model::load(&recipe.resolve(p), device, kind)?,
        (None, Some(init)) => {
            let mut json = serde_json::to_value(init)?;
            json["vocab_size"] = tokenizer.vocab_size().into();
            let config = Qwen3Config::from_json_str(&json.to_string(), "recipe model.init")?;
            Qwen3Model::random(config, device, kind, seed as i64)?
        }
        (None, None) => bail!("recipe: `model` needs `path` or `init`"),
    };
    model.set_activation_checkpointing(model_sec.activation_checkpointing);
    let aux_coef = tr
        .aux_loss_coef
        .unwrap_or(model.config.router_aux_loss_coef);
    let codec: Arc<dyn TextCodec> = tokenizer.clone();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pipeline = rt.block_on(spar_rewards::RewardPipeline::new(
        &rewards_sec,
        spar_rewards::Injected::default(),
    ))?;
    let scorer = pipeline.stage_scorer();
    let rl_extra = spar_data::recipe::rl_extra_cases(&data_sec, &train_cases)?;
    if !rl_extra.is_empty() {
        eprintln!(
            "[train] RL also plays {} fresh synthetic patients (data.rl_extra_per_diagnosis = {})",
            rl_extra.len(),
            data_sec.rl_extra_per_diagnosis
        );
    }
    let by_id: HashMap<String, Case> = train_cases
        .iter()
        .chain(rl_extra.iter())
        .chain(eval_cases.iter())
        .map(|c| (c.id.clone(), c.clone()))
        .collect();

    let new_learner =
        |model: &Qwen3Model, lr: f64, steps: usize, warmup: usize| -> Result<Learner> {
            Ok(Learner {
                adamw: AdamW::new(
                    &model.vs,
                    AdamWConfig {
                        beta1: tr.betas[0],
                        beta2: tr.betas[1],
                        eps: 1e-8,
                        weight_decay: tr.weight_decay,
                    },
                ),
                schedule: LrSchedule::new(lr, warmup, steps, tr.schedule),
                step: 0,
                grad_clip: tr.grad_clip,
                max_bad_steps: tr.max_bad_steps,
                bad_in_a_row: 0,
                bad_total: 0,
                aux_loss_coef: aux_coef,
            })
        };

    // Resume point.
    let ckpt_root = out.join("checkpoints");
    let mut state = TrainerState {
        phase: "sft".into(),
        rng: save_rng(seed, &new_rng(seed)),
        ..Default::default()
    };
    let mut resume_dir = None;
    if opts.resume {
        match checkpoint::latest(&ckpt_root)? {
            Some(dir) => {
                state = checkpoint::read_state(&dir)?;
                resume_dir = Some(dir);
            }
            None => eprintln!(
                "[train] --resume: no checkpoint under {}; starting fresh",
                ckpt_root.display()
            ),
        }
    }
    let mut metrics = MetricsLogger::open(&out, resume_dir.as_ref().map(|_| state.step))?;
    let mut rng = restore_rng(&state.rng)?;
    let mut global_step = state.step;

    // No SFT asked for: straight to the RL (or distillation) phase.
    if state.phase == "sft" && tr.sft_steps == 0 {
        state.phase = "rl".into();
        state.phase_step = 0;
    }

    let held_out = HeldOut {
        cases: &eval_cases,
        rollout_sec: &rollout_sec,
        eval_sec: &eval_sec,
        codec: codec.clone(),
        scorer: scorer.clone(),
        pipeline: &pipeline,
        rt: &rt,
        by_id: &by_id,
        seed,
    };
    // The expert's score on the same held-out consultations is the ceiling; the untrained model's is the floor.
    let expert_ceiling = held_out
        .run(Policy::Scripted(Arc::new(
            spar_rollout::env::ExpertDoctor::with_inquiry_turns(
                rollout_sec.turn_limits[0] as usize,
            ),
        )))?
        .0;
    let initial = evaluated_once(&mut state, "eval_initial", || {
        held_out.run_and_write(&model, &out, "initial")
    })?;

    // Phase 1: SFT on scripted expert consultations.
    let mut learner = new_learner(
        &model,
        tr.sft_lr,
        tr.sft_steps,
        tr.warmup_steps.min(tr.sft_steps / 10),
    )?;
    if state.phase == "sft" {
        if let Some(dir) = &resume_dir {
            checkpoint::load(dir, &mut model, &mut learner.adamw)?;
            learner.step = state.phase_step;
        }
        let sft_cases = sft_subset(&train_cases, tr.sft_fraction);
        eprintln!(
            "[train] SFT on {} of {} training cases (trainer.sft_fraction = {}); RL plays all of them",
            sft_cases.len(),
            train_cases.len(),
            tr.sft_fraction
        );
        let items = sft_items(&sft_cases, codec.clone(), &rollout_sec, scorer.clone())?;
        let pb = bar(tr.sft_steps as u64, "sft");
        pb.set_position(state.phase_step as u64);
        for s in state.phase_step..tr.sft_steps {
            let batch: Vec<TrainItem> = items
                .choose_multiple(&mut rng, tr.sft_batch.min(items.len()))
                .cloned()
                .collect();
            let rep = sft_update(&model, &mut learner, &batch, &sft_batching, device)?;
            global_step += 1;
            pb.inc(1);
            pb.set_message(format!("loss {:.3}", rep.loss));
            metrics.log(
                global_step,
                &[
                    ("sft/loss".into(), rep.loss),
                    ("sft/grad_norm".into(), rep.grad_norm),
                    ("sft/lr".into(), rep.lr),
                    (
                        "sft/entropy".into(),
                        rep.stats.entropy_sum / rep.stats.tokens.max(1.0),
                    ),
                ],
            )?;
            let done = s + 1;
            if done == tr.sft_steps || (tr.save_every > 0 && done % (tr.save_every * 10) == 0) {
                state = TrainerState {
                    step: global_step,
                    phase: if done == tr.sft_steps {
                        "rl".into()
                    } else {
                        "sft".into()
                    },
                    phase_step: if done == tr.sft_steps { 0 } else { done },
                    rng: save_rng(seed, &rng),
                    ..state
                };
                checkpoint::save(&ckpt_root, &model, &learner.adamw, &state, tr.keep_last)?;
            }
        }
        pb.finish();
        resume_dir = None;
        // Resumed with `sft_steps` at or below the checkpoint's position: SFT is done.
        if state.phase == "sft" {
            state.phase = "rl".into();
            state.phase_step = 0;
        }
    }

    // Phase 2: RL with SPAR advantages and the Fact-Aware reward.
    // The schedule counts optimizer steps: `ppo_epochs` per RL round (one per offline distillation round).
    let opt_steps_per_round = if tr.policy_loss == PolicyLoss::Distill {
        1
    } else {
        tr.ppo_epochs.max(1)
    };
    let mut learner = new_learner(
        &model,
        tr.lr,
        tr.steps * opt_steps_per_round,
        tr.warmup_steps,
    )?;
    let mut rollout = Rollout::new(
        rollout_sec.clone(),
        train_cases.iter().chain(&rl_extra).cloned().collect(),
        codec.clone(),
        scorer.clone(),
        SimulatorChoice::Fixed(Arc::new(
            spar_rollout::simulator::scripted::ScriptedPatient::new(),
        )),
        format!(
            "{}-s{seed}",
            recipe.name.clone().unwrap_or_else(|| "run".into())
        ),
    )?;
    let teacher_dirs: Vec<PathBuf> = tr
        .distill
        .teachers
        .iter()
        .map(|p| recipe.resolve(p))
        .collect();
    let student_tokenizer = match (&model_sec.path, tr.bpe_vocab_size) {
        (Some(p), 0) => recipe.resolve(p).join("tokenizer.json"),
        _ => out.join("tokenizer/tokenizer.json"),
    };
    let teachers = crate::distill_loop::load_teachers(
        &teacher_dirs,
        device,
        kind,
        model.config.vocab_size,
        Some(student_tokenizer.as_path()).filter(|p| p.exists()),
    )?;
    // Offline distillation from a file of teacher samples replaces live teachers.
    let teacher_pool = match &tr.distill.teacher_samples {
        Some(p) if offline_distill => Some(crate::distill_loop::teacher_sample_items(
            &recipe.resolve(p),
            model.config.vocab_size,
        )?),
        _ => None,
    };
    let mut critic = use_gae.then(|| {
        crate::critic::Critic::new(
            model.config.vocab_size as i64,
            device,
            tr.gae.clone(),
            tr.grad_clip,
        )
    });
    let mut pending_round: Option<crate::rl_round::PlayedRound> = None;
    if let Some(dir) = &resume_dir {
        checkpoint::load(dir, &mut model, &mut learner.adamw)?;
        // Optimizer steps taken (skipped ones are not counted), as saved; older checkpoints had one per round.
        learner.step = state
            .extra
            .get("learner_step")
            .and_then(|v| v.as_u64())
            .map_or(state.phase_step, |v| v as usize);
        if !state.stage_pools.is_null() {
            rollout.restore_pools(
                serde_json::from_value(state.stage_pools.clone())
                    .context("checkpoint stage_pools")?,
            );
        }
        if let Some(c) = &mut critic {
            // A checkpoint from the end of SFT has no critic yet; one taken during RL must.
            if dir.join("critic").exists() || state.phase_step > 0 {
                c.load(dir)?;
            }
        }
        if let Some(v) = state.extra.get("pending_round") {
            pending_round =
                Some(serde_json::from_value(v.clone()).context("checkpoint pending_round")?);
        }
    }
    let before = evaluated_once(&mut state, "eval_before", || {
        let summary = held_out.run_and_write(&model, &out, "before")?;
        log_eval(&mut metrics, global_step, &summary)?;
        Ok(summary)
    })?;
    // KL to a frozen reference (`trainer.kl_coef`): `[model] reference`, else the policy entering RL.
    let reference = if tr.kl_coef != 0.0 && state.phase == "rl" {
        let configured = model_sec.reference.as_ref().map(|p| recipe.resolve(p));
        if configured.is_none() && state.phase_step > 0 && !out.join("reference").exists() {
            eprintln!(
                "[train] warning: resuming RL with no saved KL reference; the reference is the resumed policy"
            );
        }
        Some(crate::reference::load_or_snapshot(
            &model,
            configured.as_deref(),
            &out,
        )?)
    } else {
        None
    };
    if state.phase == "rl" {
        let pb = bar(
            tr.steps as u64,
            if offline_distill { "distill" } else { "rl" },
        );
        pb.set_position(state.phase_step as u64);
        let learn_cfg = crate::rl_round::LearnConfig {
            loss: &loss_cfg,
            batching: &batching,
            ppo_epochs: tr.ppo_epochs,
            routing_replay: tr.routing_replay,
            distill_coef: tr.distill.coef,
            task_coef: tr.distill.task_coef,
            device,
            reference: reference.as_ref(),
        };
        let mut rounds =
            crate::off_policy::RoundScheduler::new(tr.off_policy_one_step, pending_round.take());
        for s in state.phase_step..tr.steps {
            let t0 = std::time::Instant::now();
            let mut scalars = if let (true, Some(pool)) = (offline_distill, &teacher_pool) {
                crate::distill_loop::offline_round_from_pool(
                    &model,
                    &mut learner,
                    pool,
                    &mut rng,
                    rollout_sec.groups_per_step * rollout_sec.group_size,
                    &sft_batching,
                    device,
                )?
            } else if offline_distill {
                crate::distill_loop::offline_round(
                    &model,
                    &teachers,
                    &mut rollout,
                    &mut learner,
                    &sft_batching,
                    rollout_sec.groups_per_step,
                    s,
                    device,
                )?
            } else {
                let round = rounds.next(s, tr.steps, |version| {
                    crate::rl_round::play_round(
                        &mut rollout,
                        &model,
                        version,
                        rollout_sec.groups_per_step,
                        &pipeline,
                        &rt,
                        &by_id,
                    )
                })?;
                let mut scalars = round_metrics(&round.samples, &round.scored);
                scalars.extend(crate::rl_round::learn_round(
                    &model,
                    &mut learner,
                    &round,
                    s as u64,
                    &learn_cfg,
                    &teachers,
                    critic.as_mut(),
                )?);
                let tokens: usize = round
                    .samples
                    .iter()
                    .map(|x| x.loss_mask.iter().filter(|&&m| m == 1).count())
                    .sum();
                scalars.push((
                    "rl/gen_tokens_per_s".into(),
                    tokens as f64 / round.gen_seconds.max(1e-9),
                ));
                scalars
            };
            scalars.push(("rl/step_seconds".into(), t0.elapsed().as_secs_f64()));
            global_step += 1;
            metrics.log(global_step, &scalars)?;
            let (shown, value) = if offline_distill {
                ("forward KL", "distill/forward_kl")
            } else {
                ("reward", "rl/reward_mean")
            };
            let value = scalars
                .iter()
                .find(|(k, _)| k == value)
                .map(|x| x.1)
                .unwrap_or(f64::NAN);
            pb.inc(1);
            pb.set_message(format!("{shown} {value:.3}"));
            let done = s + 1;
            if done == tr.steps || (tr.save_every > 0 && done % tr.save_every == 0) {
                state = TrainerState {
                    step: global_step,
                    phase: if done == tr.steps {
                        "done".into()
                    } else {
                        "rl".into()
                    },
                    phase_step: done,
                    rng: save_rng(seed, &rng),
                    stage_pools: serde_json::to_value(rollout.pools())?,
                    claim_cache: Some(format!(
                        "{} ({})",
                        rewards_sec.fact.cache,
                        pipeline.cache_backend()
                    )),
                    bad_steps_total: learner.bad_total,
                    ..state
                };
                state
                    .extra
                    .insert("learner_step".into(), learner.step.into());
                // One-step off-policy: the round generated ahead is part of the state (its pools moved on).
                match rounds.pending() {
                    Some(p) => {
                        state
                            .extra
                            .insert("pending_round".into(), serde_json::to_value(p)?);
                    }
                    None => {
                        state.extra.remove("pending_round");
                    }
                }
                let save_critic = |dir: &Path| match &critic {
                    Some(c) => c.save(dir),
                    None => Ok(()),
                };
                checkpoint::save_with(
                    &ckpt_root,
                    &model,
                    &learner.adamw,
                    &state,
                    tr.keep_last,
                    &save_critic,
                )?;
            }
        }
        pb.finish();
    }

    let after = held_out.run_and_write(&model, &out, "after")?;
    log_eval(&mut metrics, global_step + 1, &after)?;
    let comparison = serde_json::json!({
        "seed": seed,
        "eval_cases": eval_cases.len(),
        "initial": initial,
        "before_rl": before,
        "after_rl": after,
        "expert": expert_ceiling,
    });
    spar_core::fsio::write_atomic(
        &out.join("comparison.json"),
        serde_json::to_string_pretty(&comparison)?.as_bytes(),
    )?;
    model.save_hf(&out.join("final"))?;
    std::fs::copy(
        out.join("tokenizer/tokenizer.json"),
        out.join("final/tokenizer.json"),
    )
    .ok();
    std::fs::copy(
        out.join("tokenizer/tokenizer_config.json"),
        out.join("final/tokenizer_config.json"),
    )
    .ok();
    // The run's results are on disk by now: a machine without fonts loses the charts, not the run.
    let plots = crate::plot::plot_run(&out, &[]).unwrap_or_else(|e| {
        eprintln!(
            "[train] warning: no plots ({e:#}); `spar plot {}` draws them once a font is installed \
             (e.g. apt-get install fonts-dejavu-core)",
            out.display()
        );
        Vec::new()
    });
    eprintln!(
        "[train] held-out ({} cases, greedy)   reward  inquiry  ddx    lab    diag",
        eval_cases.len()
    );
    for (label, e) in [
        ("initial (random)", &initial),
        ("after SFT", &before),
        ("after RL", &after),
        ("scripted expert", &expert_ceiling),
    ] {
        let g = e.stage_means;
        eprintln!(
            "[train]   {label:<24} {:.3}   {:.3}    {:.3}  {:.3}  {:.3}",
            e.reward_mean, g[0], g[1], g[2], g[3]
        );
    }
    eprintln!(
        "[train] wrote {} (comparison.json, transcripts/, {} plot files, final/)",
        out.display(),
        plots.len()
    );
    Ok(())
}

fn log_eval(metrics: &mut MetricsLogger, step: usize, s: &EvalSummary) -> Result<()> {
    let mut v = vec![
        ("eval/reward".to_string(), s.reward_mean),
        ("eval/parsed_rate".into(), s.parsed_rate),
        ("eval/hallucination_rate".into(), s.hallucination_rate),
    ];
    for st in Stage::ALL {
        v.push((format!("eval/G_{}", st.name()), s.stage_means[st.index()]));
    }
    metrics.log(step, &v)
}

/// Reward, per-stage score, violation and hallucination rates of one round.
fn round_metrics(samples: &[Sample], scored: &[Scored]) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let kept: Vec<&Scored> = scored.iter().filter(|s| s.drop_reason.is_none()).collect();
    let mean = |xs: &[f64]| {
        if xs.is_empty() {
            f64::NAN
        } else {
            xs.iter().sum::<f64>() / xs.len() as f64
        }
    };
    out.push((
        "rl/reward_mean".into(),
        mean(&kept.iter().map(|s| s.reward).collect::<Vec<_>>()),
    ));
    out.push((
        "rl/r_fact_mean".into(),
        mean(&kept.iter().map(|s| s.r_fact).collect::<Vec<_>>()),
    ));
    let stage_of: HashMap<(&str, u32), Stage> = samples
        .iter()
        .filter_map(|s| Some(((s.group_id.as_str(), s.sample_idx), *s.stages.first()?)))
        .collect();
    for st in Stage::ALL {
        let g: Vec<f64> = kept
            .iter()
            .filter(|s| stage_of.get(&(s.group_id.as_str(), s.sample_idx)) == Some(&st))
            .filter_map(|s| s.stage_score)
            .collect();
        if !g.is_empty() {
            out.push((format!("rl/G_{}", st.name()), mean(&g)));
        }
    }
    let steps: Vec<&spar_core::sample::StepScore> =
        kept.iter().flat_map(|s| s.steps.iter()).collect();
    out.push((
        "rl/violation_rate".into(),
        steps.iter().filter(|s| !s.violations.is_empty()).count() as f64
            / steps.len().max(1) as f64,
    ));
    let claims: Vec<_> = kept.iter().flat_map(|s| s.claims.iter()).collect();
    out.push((
        "rl/hallucination_rate".into(),
        claims
            .iter()
            .map(|c| c.label.hallucination_weight())
            .sum::<f64>()
            / claims.len().max(1) as f64,
    ));
    out.push((
        "rl/dropped_groups_samples".into(),
        (scored.len() - kept.len()) as f64,
    ));
    out
}

/// The held-out evaluation: greedy whole consultations on the evaluation cases with the scripted patient; stage
/// scores from the stage scorer, the final reward from the reward pipeline. Any policy: the model at each phase,
/// or the scripted expert (the ceiling the simulator and scorers allow).
struct HeldOut<'a> {
    cases: &'a [Case],
    rollout_sec: &'a spar_core::recipe::RolloutSection,
    eval_sec: &'a spar_core::recipe::EvalSection,
    codec: Arc<dyn TextCodec>,
    scorer: Arc<dyn spar_core::traits::StageScorer>,
    pipeline: &'a spar_rewards::RewardPipeline,
    rt: &'a tokio::runtime::Runtime,
    by_id: &'a HashMap<String, Case>,
    seed: u64,
}

/// A held-out evaluation run once per training run: a resumed run takes the summary its checkpoint state kept
/// under `key` instead of evaluating again, a fresh one runs `eval` and keeps its summary there.
fn evaluated_once(
    state: &mut TrainerState,
    key: &str,
    eval: impl FnOnce() -> Result<EvalSummary>,
) -> Result<EvalSummary> {
    if let Some(v) = state.extra.get(key) {
        return Ok(serde_json::from_value(v.clone())?);
    }
    let summary = eval()?;
    state
        .extra
        .insert(key.into(), serde_json::to_value(&summary)?);
    Ok(summary)
}

impl HeldOut<'_> {
    /// Evaluates `model` and writes the transcripts to `OUT/transcripts/<name>.md` (atomically).
    fn run_and_write(&self, model: &Qwen3Model, out: &Path, name: &str) -> Result<EvalSummary> {
        let (summary, transcripts) = self.run(Policy::Builtin(model))?;
        spar_core::fsio::write_atomic(
            &out.join("transcripts").join(format!("{name}.md")),
            transcripts.as_bytes(),
        )?;
        Ok(summary)
    }

    /// Returns the summary and the transcripts (markdown).
    fn run(&self, policy: Policy<'_>) -> Result<(EvalSummary, String)> {
        let HeldOut {
            cases,
            rollout_sec,
            eval_sec,
            codec,
            scorer,
            pipeline,
            rt,
            by_id,
            seed,
        } = self;
        let (codec, scorer, seed) = (codec.clone(), scorer.clone(), *seed);
        let mut cfg = (*rollout_sec).clone();
        // One greedy sample per case, `eval.concurrency` consultations in flight: a batch's composition moves
        // float sums and so near-tie argmaxes, and concurrency 1 makes two evaluations of the same weights agree
        // exactly (the recipe's choice between speed and a noise-free before/after comparison).
        cfg.max_batch = eval_sec.concurrency.max(1);
        cfg.kv_slots = 0;
        cfg.sampling.temperature = eval_sec.temperature;
        cfg.sampling.max_new_tokens = eval_sec.max_new_tokens;
        cfg.seed = Some(seed);
        let mut ro = whole_episodes_once(cfg, cases, codec, scorer.clone(), "eval")?;
        let pb = bar(cases.len() as u64, "eval");
        ro.set_progress(Some(pb.clone()));
        let groups = ro.collect_groups(policy, cases.len())?;
        pb.finish();
        let mut summary = EvalSummary {
            episodes: groups.len(),
            ..Default::default()
        };
        let mut md = String::from("# Held-out consultations (greedy, scripted patient)\n\n");
        let (mut parsed, mut scored_stages) = (0usize, 0usize);
        let (mut hall, mut nclaims) = (0.0, 0usize);
        for g in &groups {
            let case = by_id
                .get(&g.case_id)
                .with_context(|| format!("unknown case {}", g.case_id))?;
            let s0 = &g.samples[0];
            let sc = rt.block_on(pipeline.score_group(case, &g.samples));
            let reward = sc.first().map(|s| s.reward).unwrap_or(0.0);
            summary.reward_mean += reward;
            for c in sc.first().map(|s| s.claims.as_slice()).unwrap_or(&[]) {
                hall += c.label.hallucination_weight();
                nclaims += 1;
            }
            md.push_str(&format!("## case {} (reward {reward:.3})\n\n", g.case_id));
            for st in Stage::ALL {
                let replies = spar_rollout::env::stage_replies(&s0.turns, st);
                let score = scorer.score(case, st, &replies, &s0.turns);
                summary.stage_means[st.index()] += score.score;
                parsed += score.parsed as usize;
                scored_stages += 1;
                md.push_str(&format!(
                    "- {}: {:.3}{}\n",
                    st.name(),
                    score.score,
                    if score.parsed { "" } else { " (unparsed)" }
                ));
            }
            md.push('\n');
            for t in &s0.turns {
                let who = match t.role {
                    Role::System => continue,
                    Role::User => "patient / instruction",
                    Role::Assistant => "doctor",
                };
                md.push_str(&format!("**{who}**: {}\n\n", t.text.replace('\n', " ")));
            }
        }
        let n = groups.len().max(1) as f64;
        summary.reward_mean /= n;
        for v in &mut summary.stage_means {
            *v /= n;
        }
        summary.parsed_rate = parsed as f64 / scored_stages.max(1) as f64;
        summary.hallucination_rate = hall / nclaims.max(1) as f64;
        Ok((summary, md))
    }
}

/// Text for the demo tokenizer: every scripted expert consultation of the training cases, plus case text.
fn corpus(cases: &[Case]) -> Vec<String> {
    let mut texts = Vec::new();
    for c in cases {
        for t in spar_data::Expert::new(c).transcript() {
            texts.push(t.text);
        }
        texts.push(serde_json::to_string(c).unwrap_or_default());
        texts.push(spar_rollout::simulator::scripted::ScriptedPatient::opening_line(c));
    }
    texts.push(spar_core::recipe::DEFAULT_SYSTEM_PROMPT.to_string());
    texts
}

/// The policy-loss knobs of the `[trainer]` section, at the given ratio level.
fn policy_loss_config(
    tr: &spar_core::recipe::TrainerSection,
    level: RatioLevel,
) -> Result<PolicyLossConfig> {
    Ok(PolicyLossConfig {
        level,
        eps_low: tr.eps_low,
        eps_high: tr.eps_high,
        dual_clip: tr.dual_clip,
        tis_cap: tr.tis_cap,
        kl_coef: tr.kl_coef,
        kl_estimator: tr.kl_estimator.into(),
        kl_in_reward: tr.kl_in_reward,
        entropy_coef: tr.entropy_coef,
    })
}

/// The batching knobs of the `[trainer]` section.
fn batching_config(tr: &spar_core::recipe::TrainerSection) -> Result<BatchingConfig> {
    Ok(BatchingConfig {
        micro_batch: tr.micro_batch,
        token_budget: tr.token_budget,
        pack: tr.pack_sequences,
        agg: tr.loss_agg,
        l_max: tr.l_max,
    })
}

/// A rollout that plays every case once as a whole episode (no segmented pipeline, no injected interruption)
/// against the scripted patient: the held-out evaluation and the expert's SFT consultations.
fn whole_episodes_once(
    mut cfg: spar_core::recipe::RolloutSection,
    cases: &[Case],
    codec: Arc<dyn TextCodec>,
    scorer: Arc<dyn spar_core::traits::StageScorer>,
    run_id: &str,
) -> Result<Rollout> {
    cfg.segmented = false;
    cfg.interruption_rate = 0.0;
    Ok(Rollout::new(
        cfg,
        cases.to_vec(),
        codec,
        scorer,
        SimulatorChoice::Fixed(Arc::new(
            spar_rollout::simulator::scripted::ScriptedPatient::new(),
        )),
        run_id,
    )?
    .single_sample())
}

/// The first `round(n * fraction)` cases (at least one) of each diagnosis, in file order: every diagnosis is
/// taught, and the rest are patients only RL meets.
pub fn sft_subset(cases: &[Case], fraction: f64) -> Vec<Case> {
    let mut per_dx: HashMap<&str, usize> = HashMap::new();
    for c in cases {
        *per_dx.entry(c.diagnosis.icd10.as_str()).or_default() += 1;
    }
    let mut taken: HashMap<&str, usize> = HashMap::new();
    cases
        .iter()
        .filter(|c| {
            let dx = c.diagnosis.icd10.as_str();
            let keep = ((per_dx[dx] as f64 * fraction).round() as usize).max(1);
            let t = taken.entry(dx).or_default();
            *t += 1;
            *t <= keep
        })
        .cloned()
        .collect()
}

/// SFT items: the scripted expert's consultation of each case, played in the rollout's own environment (the
/// simulator's opening and answers, the recipe's stage instructions, turn limits and chat template), so the
/// token stream the policy learns from is exactly the one it later generates into. Loss on the doctor's tokens.
pub fn sft_items(
    cases: &[Case],
    codec: Arc<dyn TextCodec>,
    rollout_sec: &spar_core::recipe::RolloutSection,
    scorer: Arc<dyn spar_core::traits::StageScorer>,
) -> Result<Vec<TrainItem>> {
    let mut cfg = rollout_sec.clone();
    // Gold replies (a full differential, every test) are longer than a sampled reply may be; the limit is
    // the model's context, not the sampling budget.
    cfg.sampling.max_new_tokens = cfg.max_seq_len.saturating_sub(1) as u32;
    let doctor = spar_rollout::env::ExpertDoctor::with_inquiry_turns(cfg.turn_limits[0] as usize);
    let mut ro = whole_episodes_once(cfg, cases, codec, scorer, "sft")?;
    let groups = ro.collect_groups(
        spar_rollout::actor::Policy::Scripted(Arc::new(doctor)),
        cases.len(),
    )?;
    let mut items = Vec::new();
    for g in &groups {
        let Some(s) = g.samples.first() else { continue };
        let t = s.token_ids.len();
        if t < 2 || s.end_reason.is_failure() {
            continue;
        }
        let input_ids: Vec<i64> = s.token_ids.iter().map(|&x| x as i64).collect();
        let mut targets = vec![0i64; t];
        let mut m = vec![0f32; t];
        for p in 0..t - 1 {
            targets[p] = input_ids[p + 1];
            m[p] = s.loss_mask[p + 1] as f32;
        }
        items.push(TrainItem {
            group_id: format!("sft/{}", s.case_id),
            sample_idx: 0,
            input_ids,
            targets,
            mask: m,
            advantages: vec![0.0; t],
            step_ids: vec![-1; t],
            n_steps: 0,
            rollout_logp: vec![0.0; t],
            routed: None,
            reward: 0.0,
        });
    }
    if items.is_empty() {
        bail!(
            "no SFT consultation could be played from {} cases",
            cases.len()
        );
    }
    Ok(items)
}

/// One trainer step from files: samples (from `spar rollout`) and their scores (from `spar score`) train the
/// policy in `model_dir` once with the recipe's loss; the result is a checkpoint under `out/checkpoints` plus
/// `out/metrics.jsonl`. This is the contract path rollout -> rewards -> trainer with nothing hand-built between.
pub fn offline_step(
    recipe: &Recipe,
    samples_path: &Path,
    scored_path: &Path,
    model_dir: &Path,
    out: &Path,
) -> Result<crate::learner::StepReport> {
    let tr = recipe.trainer.clone().unwrap_or_default();
    let model_sec = recipe.model.clone().unwrap_or_default();
    let device = spar_model::parse_device(if model_sec.device == "auto" {
        "cpu"
    } else {
        &model_sec.device
    })?;
    let kind = spar_model::dtype_kind(model_sec.dtype);
    let samples = spar_data::read_samples(samples_path)?;
    let scored = spar_data::read_scored(scored_path)?;
    let (items, report) = assemble(
        &samples,
        &scored,
        &format!("{} + {}", samples_path.display(), scored_path.display()),
    )?;
    if items.is_empty() {
        bail!(
            "{}: no trainable sample ({report:?})",
            samples_path.display()
        );
    }
    let model = Qwen3Model::load(model_dir, device, kind)?;
    let level = RatioLevel::of(tr.policy_loss).with_context(|| {
        format!(
            "trainer.policy_loss = \"{}\" has no importance ratio; a trainer step from files needs ppo, gspo or \
             segment_gspo",
            tr.policy_loss
        )
    })?;
    let loss_cfg = policy_loss_config(&tr, level)?;
    let batching = batching_config(&tr)?;
    let mut learner = Learner {
        adamw: AdamW::new(
            &model.vs,
            AdamWConfig {
                beta1: tr.betas[0],
                beta2: tr.betas[1],
                eps: 1e-8,
                weight_decay: tr.weight_decay,
            },
        ),
        schedule: LrSchedule::new(tr.lr, 0, 1, spar_core::recipe::LrDecay::Constant),
        step: 0,
        grad_clip: tr.grad_clip,
        max_bad_steps: tr.max_bad_steps,
        bad_in_a_row: 0,
        bad_total: 0,
        aux_loss_coef: tr
            .aux_loss_coef
            .unwrap_or(model.config.router_aux_loss_coef),
    };
    let rep = rl_update(
        &model,
        None,
        &mut learner,
        &items,
        &loss_cfg,
        &batching,
        1,
        device,
    )?
    .remove(0);
    let mut metrics = MetricsLogger::open(out, None)?;
    let mut scalars = vec![
        ("rl/loss".to_string(), rep.loss),
        ("rl/grad_norm".into(), rep.grad_norm),
        ("rl/samples".into(), items.len() as f64),
    ];
    scalars.extend(
        rep.stats
            .means()
            .into_iter()
            .map(|(k, v)| (format!("rl/{k}"), v)),
    );
    metrics.log(1, &scalars)?;
    let state = TrainerState {
        step: learner.step,
        phase: "offline".into(),
        phase_step: 1,
        ..Default::default()
    };
    checkpoint::save(
        &out.join("checkpoints"),
        &model,
        &learner.adamw,
        &state,
        tr.keep_last,
    )?;
    Ok(rep)
}
