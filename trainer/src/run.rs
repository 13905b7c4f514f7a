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
use crate::policy_loss::{KlEstimator, PolicyLossConfig, RatioLevel};
use crate::rng::{new_rng, restore_rng, save_rng};
use crate::schedule::LrSchedule;
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::IndexedRandom;
use spar_core::recipe::Recipe;
use spar_core::sample::{Role, Turn};
use spar_core::{Case, Sample, Scored, Stage};
use spar_model::{Qwen3Config, Qwen3Model, Tokenizer};
use spar_rollout::codec::TextCodec;
use spar_rollout::stream::ChatMl;
use spar_rollout::{Rollout, SimulatorChoice};
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
#[derive(Clone, Debug, Default, serde::Serialize)]
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
    let kind = spar_model::parse_kind(&model_sec.dtype)?;
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
    let level = if tr.policy_loss == "sft" || tr.policy_loss == "distill" {
        RatioLevel::Segment
    } else {
        RatioLevel::parse(&tr.policy_loss)?
    };
    let loss_cfg = policy_loss_config(&tr, level)?;
    let batching = batching_config(&tr)?;
    let sft_batching = BatchingConfig {
        agg: AggMode::TokenMean,
        ..batching
    };

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
    let chat = ChatMl::new(codec.as_ref(), rollout_sec.enable_thinking)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pipeline = rt.block_on(spar_rewards::RewardPipeline::new(
        &rewards_sec,
        spar_rewards::Injected::default(),
    ))?;
    let scorer = pipeline.stage_scorer();
    let by_id: HashMap<String, Case> = train_cases
        .iter()
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
                schedule: LrSchedule::new(lr, warmup, steps, &tr.schedule)?,
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
        let items = sft_items(
            &train_cases,
            codec.as_ref(),
            &chat,
            &rollout_sec.system_prompt,
            rollout_sec.max_seq_len,
        )?;
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
    }

    // Phase 2: RL with SPAR advantages and the Fact-Aware reward.
    let mut learner = new_learner(&model, tr.lr, tr.steps, tr.warmup_steps)?;
    let mut rollout = Rollout::new(
        rollout_sec.clone(),
        train_cases.clone(),
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
    if let Some(dir) = &resume_dir {
        checkpoint::load(dir, &mut model, &mut learner.adamw)?;
        learner.step = state.phase_step;
        if !state.stage_pools.is_null() {
            rollout.restore_pools(
                serde_json::from_value(state.stage_pools.clone())
                    .context("checkpoint stage_pools")?,
            );
        }
    }
    let before = match state.extra.get("eval_before") {
        Some(v) => serde_json::from_value::<serde_json::Value>(v.clone())?,
        None => {
            let (summary, transcripts) = evaluate(
                &model,
                &eval_cases,
                &rollout_sec,
                &eval_sec,
                codec.clone(),
                scorer.clone(),
                &pipeline,
                &rt,
                &by_id,
                seed,
            )?;
            std::fs::create_dir_all(out.join("transcripts"))?;
            std::fs::write(out.join("transcripts/before.md"), transcripts)?;
            log_eval(&mut metrics, global_step, &summary)?;
            let v = serde_json::to_value(&summary)?;
            state.extra.insert("eval_before".into(), v.clone());
            v
        }
    };
    if state.phase == "rl" {
        let pb = bar(tr.steps as u64, "rl");
        pb.set_position(state.phase_step as u64);
        for s in state.phase_step..tr.steps {
            let t0 = std::time::Instant::now();
            rollout.set_policy_version(s as u64);
            let groups = rollout.collect_groups(
                spar_rollout::actor::Policy::Builtin(&model),
                rollout_sec.groups_per_step,
            )?;
            let gen_s = t0.elapsed().as_secs_f64();
            let mut samples: Vec<Sample> = Vec::new();
            let mut scored: Vec<Scored> = Vec::new();
            for g in &groups {
                let case = by_id.get(&g.case_id).with_context(|| {
                    format!("group {} names unknown case {}", g.group_id, g.case_id)
                })?;
                scored.extend(rt.block_on(pipeline.score_group(case, &g.samples)));
                samples.extend(g.samples.iter().cloned());
            }
            let (items, report) = assemble(&samples, &scored, "rollout round")?;
            let mut scalars = round_metrics(&samples, &scored);
            scalars.push((
                "rl/samples_dropped".into(),
                (report.dropped_by_rewards + report.missing_scored + report.no_trained_tokens)
                    as f64,
            ));
            if items.is_empty() {
                tracing::warn!(round = s, "no trainable samples this round");
            } else {
                for rep in rl_update(
                    &model,
                    None,
                    &mut learner,
                    &items,
                    &loss_cfg,
                    &batching,
                    tr.ppo_epochs,
                    device,
                )? {
                    scalars.push(("rl/loss".into(), rep.loss));
                    scalars.push(("rl/grad_norm".into(), rep.grad_norm));
                    scalars.push(("rl/lr".into(), rep.lr));
                    scalars.push(("rl/skipped".into(), rep.skipped as u8 as f64));
                    for (k, v) in rep.stats.means() {
                        scalars.push((format!("rl/{k}"), v));
                    }
                }
            }
            let tokens: usize = samples
                .iter()
                .map(|x| x.loss_mask.iter().filter(|&&m| m == 1).count())
                .sum();
            scalars.push((
                "rl/gen_tokens_per_s".into(),
                tokens as f64 / gen_s.max(1e-9),
            ));
            scalars.push(("rl/step_seconds".into(), t0.elapsed().as_secs_f64()));
            global_step += 1;
            metrics.log(global_step, &scalars)?;
            let reward = scalars
                .iter()
                .find(|(k, _)| k == "rl/reward_mean")
                .map(|x| x.1)
                .unwrap_or(f64::NAN);
            pb.inc(1);
            pb.set_message(format!("reward {reward:.3}"));
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
                checkpoint::save(&ckpt_root, &model, &learner.adamw, &state, tr.keep_last)?;
            }
        }
        pb.finish();
    }

    let (after, transcripts) = evaluate(
        &model,
        &eval_cases,
        &rollout_sec,
        &eval_sec,
        codec.clone(),
        scorer.clone(),
        &pipeline,
        &rt,
        &by_id,
        seed,
    )?;
    std::fs::create_dir_all(out.join("transcripts"))?;
    std::fs::write(out.join("transcripts/after.md"), transcripts)?;
    log_eval(&mut metrics, global_step + 1, &after)?;
    let comparison = serde_json::json!({ "seed": seed, "before_rl": before, "after_rl": after });
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
    let plots = crate::plot::plot_run(&out, &[])?;
    eprintln!(
        "[train] held-out ({} cases) before RL: reward {:.3}, stages {:?}",
        eval_cases.len(),
        before["reward_mean"].as_f64().unwrap_or(f64::NAN),
        before["stage_means"]
    );
    eprintln!(
        "[train] held-out ({} cases) after RL:  reward {:.3}, stages {:.3?}",
        eval_cases.len(),
        after.reward_mean,
        after.stage_means
    );
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

/// Greedy whole consultations on the evaluation cases with the scripted patient; stage scores from the stage
/// scorer, the final reward from the reward pipeline. Returns the summary and the transcripts (markdown).
#[allow(clippy::too_many_arguments)]
fn evaluate(
    model: &Qwen3Model,
    cases: &[Case],
    rollout_sec: &spar_core::recipe::RolloutSection,
    eval_sec: &spar_core::recipe::EvalSection,
    codec: Arc<dyn TextCodec>,
    scorer: Arc<dyn spar_core::traits::StageScorer>,
    pipeline: &spar_rewards::RewardPipeline,
    rt: &tokio::runtime::Runtime,
    by_id: &HashMap<String, Case>,
    seed: u64,
) -> Result<(EvalSummary, String)> {
    let mut cfg = rollout_sec.clone();
    cfg.segmented = false;
    cfg.interruption_rate = 0.0;
    // The rollout needs G >= 2 for a baseline; evaluation reads sample 0 of each (greedy, so both agree).
    cfg.group_size = 2;
    cfg.sampling.temperature = eval_sec.temperature;
    cfg.sampling.max_new_tokens = eval_sec.max_new_tokens;
    cfg.seed = Some(seed);
    let mut ro = Rollout::new(
        cfg,
        cases.to_vec(),
        codec,
        scorer.clone(),
        SimulatorChoice::Fixed(Arc::new(
            spar_rollout::simulator::scripted::ScriptedPatient::new(),
        )),
        "eval",
    )?;
    let pb = bar(cases.len() as u64 * 2, "eval");
    ro.set_progress(Some(pb.clone()));
    let groups = ro.collect_groups(spar_rollout::actor::Policy::Builtin(model), cases.len())?;
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

/// Text for the demo tokenizer: every scripted expert consultation of the training cases, plus case text.
fn corpus(cases: &[Case]) -> Vec<String> {
    let mut texts = Vec::new();
    for c in cases {
        for t in spar_data::Expert::new(c).transcript() {
            texts.push(t.text);
        }
        texts.push(serde_json::to_string(c).unwrap_or_default());
    }
    texts.push(spar_core::recipe::DEFAULT_SYSTEM_PROMPT.to_string());
    texts
}

/// SFT items: each scripted expert consultation as one token stream, rendered the way the rollout renders an
/// episode (system, user turn + generation prompt, reply + `<|im_end|>`, ...); loss on the doctor's tokens.
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
        kl_estimator: KlEstimator::parse(&tr.kl_estimator)?,
        entropy_coef: tr.entropy_coef,
    })
}

/// The batching knobs of the `[trainer]` section.
fn batching_config(tr: &spar_core::recipe::TrainerSection) -> Result<BatchingConfig> {
    Ok(BatchingConfig {
        micro_batch: tr.micro_batch,
        token_budget: tr.token_budget,
        pack: tr.pack_sequences,
        agg: AggMode::parse(&tr.loss_agg)?,
        l_max: tr.l_max,
    })
}

pub fn sft_items(
    cases: &[Case],
    codec: &dyn TextCodec,
    chat: &ChatMl,
    system_prompt: &str,
    max_len: usize,
) -> Result<Vec<TrainItem>> {
    let mut items = Vec::new();
    for c in cases {
        let turns: Vec<Turn> = spar_data::Expert::new(c).transcript();
        let mut ids: Vec<u32> = Vec::new();
        let mut mask: Vec<u8> = Vec::new();
        let push = |toks: Vec<u32>, m: u8, ids: &mut Vec<u32>, mask: &mut Vec<u8>| {
            mask.extend(std::iter::repeat_n(m, toks.len()));
            ids.extend(toks);
        };
        if !system_prompt.is_empty() {
            push(chat.system(codec, system_prompt)?, 0, &mut ids, &mut mask);
        }
        for t in &turns {
            match t.role {
                Role::User => push(
                    chat.user_then_prompt(codec, &t.text)?,
                    0,
                    &mut ids,
                    &mut mask,
                ),
                Role::Assistant => {
                    let mut r = codec.encode(&t.text)?;
                    r.push(chat.im_end);
                    let close = chat.close_reply(&r);
                    push(r, 1, &mut ids, &mut mask);
                    push(close, 0, &mut ids, &mut mask);
                }
                Role::System => {}
            }
        }
        ids.truncate(max_len);
        mask.truncate(max_len);
        let t = ids.len();
        if t < 2 {
            continue;
        }
        let input_ids: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
        let mut targets = vec![0i64; t];
        let mut m = vec![0f32; t];
        for p in 0..t - 1 {
            targets[p] = input_ids[p + 1];
            m[p] = mask[p + 1] as f32;
        }
        items.push(TrainItem {
            group_id: format!("sft/{}", c.id),
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
            "no SFT transcripts could be built from {} cases",
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
    let kind = spar_model::parse_kind(&model_sec.dtype)?;
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
    let loss_cfg = policy_loss_config(&tr, RatioLevel::parse(&tr.policy_loss)?)?;
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
        schedule: LrSchedule::new(tr.lr, 0, 1, "constant")?,
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
