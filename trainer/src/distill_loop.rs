//! The offline distillation stage of the M3 pipeline (method.md section 7): teachers (the task-specific RL
//! experts, HF folders) answer the training prompts through the built-in engine, and the student learns their
//! tokens with Clip-Forward-KL. The engine records log pi_t of every token it samples (raw logits, before
//! temperature), so the teacher's log-probs come with its samples and the student needs no second teacher pass.
//!
//! On-policy distillation (reverse KL on the student's own samples + the task reward) is part of the RL round:
//! see [`crate::learner::RlExtras`].
use crate::batch::{TrainItem, item_unscored};
use crate::distill;
use crate::learner::{BatchingConfig, Learner, StepReport, supervised_step};
use crate::policy::Policy;
use anyhow::{Context, Result, bail};
use spar_model::Qwen3Model;
use spar_rollout::Rollout;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// Loads the teacher folders (each an HF model directory) with the student's device and dtype. Names are the
/// folder names (made unique), for metrics. Fails with the folder named when a teacher's vocabulary differs
/// from the student's, or when its tokenizer differs from `student_tokenizer` (a `tokenizer.json`), since
/// log-probs of different token sets cannot be compared.
pub fn load_teachers(
    dirs: &[PathBuf],
    device: Device,
    kind: Kind,
    student_vocab: usize,
    student_tokenizer: Option<&Path>,
) -> Result<Vec<(String, Qwen3Model)>> {
    let mut out: Vec<(String, Qwen3Model)> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let model = Qwen3Model::load(dir, device, kind)
            .with_context(|| format!("loading distillation teacher {}", dir.display()))?;
        if model.config.vocab_size != student_vocab {
            bail!(
                "teacher {}: vocab_size {} differs from the student's {student_vocab}",
                dir.display(),
                model.config.vocab_size
            );
        }
        if let (Some(st), true) = (student_tokenizer, dir.join("tokenizer.json").exists()) {
            let a = std::fs::read(dir.join("tokenizer.json"))?;
            let b = std::fs::read(st).with_context(|| format!("reading {}", st.display()))?;
            if a != b {
                bail!(
                    "teacher {}: its tokenizer.json differs from the student's {} (distillation needs one \
                     tokenizer; for a demo model set trainer.bpe_vocab_size = 0 to use the teacher's)",
                    dir.display(),
                    st.display()
                );
            }
        }
        let mut name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("teacher{i}"));
        if name == "final" || out.iter().any(|(n, _)| *n == name) {
            // `RUN/final` folders all share a name; the run folder says which expert it is.
            let parent = dir
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name = format!("{i}-{parent}-{name}");
        }
        out.push((name, model));
    }
    Ok(out)
}

/// One offline distillation step: Clip-Forward-KL of the student on teacher-sampled tokens, whose teacher
/// log-probs are the items' `rollout_logp`. `extra` reports `distill/forward_kl` (mean of log pi_t - log
/// pi_theta over the teacher's tokens, a sampled estimate of KL(teacher || student)) and `distill/active_frac`
/// (tokens the student still rates below the teacher: the only ones with a gradient).
pub fn distill_update(
    student: &dyn Policy,
    learner: &mut Learner,
    items: &[TrainItem],
    batching: &BatchingConfig,
    device: Device,
) -> Result<StepReport> {
    let (mut fkl, mut active, mut non_finite) = (0.0, 0.0, 0.0);
    let mut rep = supervised_step(
        student,
        learner,
        items,
        batching,
        device,
        false,
        &mut |mb, logp, agg| {
            let teacher = &mb.rollout_logp;
            let finite = logp.isfinite().logical_and(&teacher.isfinite());
            let mask = &mb.mask * finite.to_kind(Kind::Float);
            non_finite += (&mb.mask - &mask).sum(Kind::Double).double_value(&[]);
            let zeros = logp.zeros_like();
            let logp = logp.where_self(&finite, &zeros);
            let teacher = teacher.where_self(&finite, &zeros);
            let loss =
                distill::clip_forward_kl(&logp, &teacher, &mask, &mb.seq_ids, mb.n_seqs, agg);
            let ld = logp.detach();
            fkl += ((&teacher - &ld) * &mask)
                .sum(Kind::Double)
                .double_value(&[]);
            active += (ld.lt_tensor(&teacher).to_kind(Kind::Float) * &mask)
                .sum(Kind::Double)
                .double_value(&[]);
            (loss, mask)
        },
    )?;
    // Sums over the data-parallel ranks (the report's token count already is the union batch's).
    let v = spar_dist::sum_over_ranks(&*learner.group, &[fkl, active, non_finite])?;
    let (fkl, active) = (v[0], v[1]);
    rep.stats.non_finite = v[2];
    let n = rep.stats.tokens.max(1.0);
    rep.extra.insert("distill/forward_kl".to_string(), fkl / n);
    rep.extra
        .insert("distill/active_frac".to_string(), active / n);
    Ok(rep)
}

/// One round of the offline phase: teacher `round mod n` plays `groups` groups of the rollout (its samples
/// stamped with `round`), the student takes one Clip-Forward-KL step on every sampled token. Returns the
/// round's metrics.
#[allow(clippy::too_many_arguments)]
pub fn offline_round(
    student: &Qwen3Model,
    teachers: &[(String, Qwen3Model)],
    rollout: &mut Rollout,
    learner: &mut Learner,
    batching: &BatchingConfig,
    groups: usize,
    round: usize,
    device: Device,
) -> Result<Vec<(String, f64)>> {
    if teachers.is_empty() {
        bail!("offline distillation needs at least one teacher (trainer.distill.teachers)");
    }
    let t0 = std::time::Instant::now();
    let ti = round % teachers.len();
    rollout.set_policy_version(round as u64);
    let played = rollout.collect_groups(
        spar_rollout::actor::Policy::Builtin(&teachers[ti].1),
        groups,
    )?;
    let gen_s = t0.elapsed().as_secs_f64();
    let mut items = Vec::new();
    let mut failed = 0usize;
    for g in &played {
        for s in &g.samples {
            if s.end_reason.is_failure() {
                failed += 1;
                continue;
            }
            let it = item_unscored(s)
                .with_context(|| format!("teacher sample {}/{}", s.group_id, s.sample_idx))?;
            if it.trained_tokens() > 0 {
                items.push(it);
            }
        }
    }
    let tokens: usize = items.iter().map(|it| it.trained_tokens()).sum();
    let mut scalars = vec![
        ("distill/teacher".to_string(), ti as f64),
        ("distill/samples".into(), items.len() as f64),
        ("distill/failed_samples".into(), failed as f64),
        (
            "distill/gen_tokens_per_s".into(),
            tokens as f64 / gen_s.max(1e-9),
        ),
    ];
    if items.is_empty() {
        tracing::warn!(round, "the teacher produced no trainable tokens this round");
        return Ok(scalars);
    }
    let rep = distill_update(student, learner, &items, batching, device)?;
    scalars.push(("distill/loss".into(), rep.loss));
    scalars.push(("distill/grad_norm".into(), rep.grad_norm));
    scalars.push(("distill/lr".into(), rep.lr));
    scalars.push(("distill/skipped".into(), rep.skipped as u8 as f64));
    scalars.push((
        "distill/entropy".into(),
        rep.stats.entropy_sum / rep.stats.tokens.max(1.0),
    ));
    scalars.extend(rep.extra);
    Ok(scalars)
}

/// Training items of a teacher-samples file (`trainer.distill.teacher_samples`, read by the caller; `origin`
/// names it in errors): every non-failed sample with sampled tokens; its `rollout_logprobs` are taken as the
/// teacher's log-probs.
pub fn teacher_sample_items(
    samples: &[spar_core::Sample],
    origin: &str,
    student_vocab: usize,
) -> Result<Vec<TrainItem>> {
    let mut items = Vec::new();
    for s in samples {
        if s.end_reason.is_failure() {
            continue;
        }
        if let Some(&t) = s.token_ids.iter().find(|&&t| t as usize >= student_vocab) {
            bail!(
                "{}: sample {}/{}: field `token_ids` holds {t}, outside the student's vocabulary of {student_vocab} \
                 (were the samples made with another tokenizer?)",
                origin,
                s.group_id,
                s.sample_idx
            );
        }
        let it = item_unscored(s)
            .with_context(|| format!("{}: sample {}/{}", origin, s.group_id, s.sample_idx))?;
        if it.trained_tokens() > 0 {
            items.push(it);
        }
    }
    if items.is_empty() {
        bail!(
            "{}: no sample with sampled tokens to distill from ({} read)",
            origin,
            samples.len()
        );
    }
    Ok(items)
}

/// One round of offline distillation from a file: `n` items drawn without replacement from `pool` with `rng`
/// (the run's RNG, saved in checkpoints, so a resumed run draws the same batches), one Clip-Forward-KL step.
pub fn offline_round_from_pool(
    student: &dyn Policy,
    learner: &mut Learner,
    pool: &[TrainItem],
    rng: &mut rand_chacha::ChaCha8Rng,
    n: usize,
    batching: &BatchingConfig,
    device: Device,
) -> Result<Vec<(String, f64)>> {
    use rand::seq::IndexedRandom;
    let batch: Vec<TrainItem> = pool
        .choose_multiple(rng, n.min(pool.len()))
        .cloned()
        .collect();
    let rep = distill_update(student, learner, &batch, batching, device)?;
    let mut scalars = vec![
        ("distill/samples".to_string(), batch.len() as f64),
        ("distill/loss".into(), rep.loss),
        ("distill/grad_norm".into(), rep.grad_norm),
        ("distill/lr".into(), rep.lr),
        ("distill/skipped".into(), rep.skipped as u8 as f64),
        (
            "distill/entropy".into(),
            rep.stats.entropy_sum / rep.stats.tokens.max(1.0),
        ),
    ];
    scalars.extend(rep.extra);
    Ok(scalars)
}
