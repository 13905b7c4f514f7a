//! Batch assembly: `Sample` + `Scored` -> per-sample training items -> micro-batches of tensors. The trainer
//! spreads each step's advantage A_j (computed by spar-rewards) over the step's sampled tokens and never
//! recomputes it. Arrays are position-aligned: entry p concerns the prediction of token p+1 from position p,
//! so packing several samples into one row is a plain concatenation.
use anyhow::{Context, Result, bail};
use spar_core::{Sample, Scored};
use std::collections::HashMap;
use tch::{Device, Tensor};

/// One sample ready for training (CPU vectors, length T = the sample's token count).
#[derive(Clone, Debug)]
pub struct TrainItem {
    pub group_id: String,
    pub sample_idx: u32,
    pub input_ids: Vec<i64>,
    /// `target[p] = input_ids[p+1]` (0 at the last position).
    pub targets: Vec<i64>,
    /// 1.0 where target p is a sampled token.
    pub mask: Vec<f32>,
    pub advantages: Vec<f32>,
    /// Step index j of target p (-1 outside every step).
    pub step_ids: Vec<i64>,
    pub n_steps: usize,
    pub rollout_logp: Vec<f32>,
    /// Routed experts for routing replay, `[T, layers, k]` flattened.
    pub routed: Option<(usize, usize, Vec<i64>)>,
    /// R (final reward), for logging.
    pub reward: f64,
}

impl TrainItem {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
    pub fn trained_tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m > 0.0).count()
    }
}

/// Why samples did not make it into the batch (each is counted and logged, never silently dropped).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AssemblyReport {
    pub samples: usize,
    pub dropped_by_rewards: usize,
    pub missing_scored: usize,
    pub no_trained_tokens: usize,
}

/// Builds training items from samples and their scores (joined on group_id + sample_idx). `origin` names the
/// input in errors.
pub fn assemble(
    samples: &[Sample],
    scored: &[Scored],
    origin: &str,
) -> Result<(Vec<TrainItem>, AssemblyReport)> {
    let by_key: HashMap<(&str, u32), &Scored> = scored
        .iter()
        .map(|s| ((s.group_id.as_str(), s.sample_idx), s))
        .collect();
    let mut report = AssemblyReport {
        samples: samples.len(),
        ..Default::default()
    };
    let mut items = Vec::new();
    for s in samples {
        s.check().map_err(|(field, msg)| {
            anyhow::anyhow!(
                "{origin}: sample {}/{}: field `{field}`: {msg}",
                s.group_id,
                s.sample_idx
            )
        })?;
        let Some(sc) = by_key.get(&(s.group_id.as_str(), s.sample_idx)) else {
            report.missing_scored += 1;
            continue;
        };
        if sc.drop_reason.is_some() {
            report.dropped_by_rewards += 1;
            continue;
        }
        let item = item_from(s, sc)
            .with_context(|| format!("{origin}: sample {}/{}", s.group_id, s.sample_idx))?;
        if item.trained_tokens() == 0 {
            report.no_trained_tokens += 1;
            continue;
        }
        items.push(item);
    }
    Ok((items, report))
}

/// One item; advantages come from `scored.steps[j].advantage`.
pub fn item_from(s: &Sample, sc: &Scored) -> Result<TrainItem> {
    if sc.steps.len() != s.steps.len() {
        bail!(
            "field `steps`: the sample has {} steps but its score has {}",
            s.steps.len(),
            sc.steps.len()
        );
    }
    for (j, score) in sc.steps.iter().enumerate() {
        if !score.advantage.is_finite() {
            bail!("field `steps[{j}].advantage` is not finite");
        }
    }
    let mut item = item_unscored(s)?;
    for (p, &j) in item.step_ids.iter().enumerate() {
        if j >= 0 {
            item.advantages[p] = sc.steps[j as usize].advantage as f32;
        }
    }
    item.reward = sc.reward;
    Ok(item)
}

/// One item without a score (advantages 0, reward 0): distillation trains on tokens, not rewards.
pub fn item_unscored(s: &Sample) -> Result<TrainItem> {
    let t = s.token_ids.len();
    if t < 2 {
        bail!("field `token_ids`: a sample needs at least 2 tokens");
    }
    if s.loss_mask[0] != 0 {
        bail!("field `loss_mask`: the first token cannot be a sampled token (nothing predicts it)");
    }
    let input_ids: Vec<i64> = s.token_ids.iter().map(|&x| x as i64).collect();
    let mut targets = vec![0i64; t];
    let mut mask = vec![0f32; t];
    let mut rollout_logp = vec![0f32; t];
    let mut step_ids = vec![-1i64; t];
    for p in 0..t - 1 {
        targets[p] = input_ids[p + 1];
        mask[p] = s.loss_mask[p + 1] as f32;
        rollout_logp[p] = s.rollout_logprobs[p + 1];
    }
    for (j, span) in s.steps.iter().enumerate() {
        for tok in span.start.max(1)..span.end.min(t) {
            if s.loss_mask[tok] == 1 {
                step_ids[tok - 1] = j as i64;
            }
        }
    }
    let routed = s
        .routed_experts
        .as_ref()
        .map(|r| (r.layers, r.k, r.ids.iter().map(|&x| x as i64).collect()));
    Ok(TrainItem {
        group_id: s.group_id.clone(),
        sample_idx: s.sample_idx,
        input_ids,
        targets,
        mask,
        advantages: vec![0f32; t],
        step_ids,
        n_steps: s.steps.len(),
        rollout_logp,
        routed,
        reward: 0.0,
    })
}

/// Routing replay switch (`trainer.routing_replay`): on, the training forward is forced onto the experts the
/// rollout engine chose for each position (R3); off, the recorded choices are dropped and the trainer routes
/// afresh. Returns how many items, with replay on, carry no expert choices: those route afresh (a micro-batch of
/// such items alone trains without replay), so the caller reports them rather than let it pass unseen.
pub fn set_routing_replay(items: &mut [TrainItem], on: bool) -> usize {
    if !on {
        for it in items.iter_mut() {
            it.routed = None;
        }
        return 0;
    }
    items.iter().filter(|it| it.routed.is_none()).count()
}

/// Splits items into micro-batches: `micro_batch` items each, or (with `token_budget` > 0) as many as fit
/// the budget, counting padded tokens (`pack` off) or real tokens (`pack` on). Longest first, so padding waste
/// stays small. An item longer than the budget gets a micro-batch of its own.
pub fn plan_micro_batches(
    items: &[TrainItem],
    micro_batch: usize,
    token_budget: usize,
    pack: bool,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    if token_budget == 0 {
        return order
            .chunks(micro_batch.max(1))
            .map(|c| c.to_vec())
            .collect();
    }
    order.sort_by(|&a, &b| items[b].len().cmp(&items[a].len()).then(a.cmp(&b)));
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut cur_max = 0;
    let mut cur_sum = 0;
    for i in order {
        let l = items[i].len();
        let cost = if pack {
            cur_sum + l
        } else {
            cur_max.max(l) * (cur.len() + 1)
        };
        if !cur.is_empty() && cost > token_budget {
            out.push(std::mem::take(&mut cur));
            cur_max = 0;
            cur_sum = 0;
        }
        cur.push(i);
        cur_max = cur_max.max(l);
        cur_sum += l;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A micro-batch of tensors (rows of length L; packed rows hold several samples).
pub struct MicroBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    /// Positions restart at 0 for each packed sample.
    pub position_ids: Tensor,
    /// Packed rows: which sample each position belongs to, for the model's block-diagonal attention. None
    /// when each row holds one sample.
    pub packed_seq_ids: Option<Tensor>,
    pub targets: Tensor,
    pub mask: Tensor,
    pub advantages: Tensor,
    /// Sample index within this micro-batch (-1 on padding).
    pub seq_ids: Tensor,
    pub n_seqs: usize,
    /// Segment index within this micro-batch (-1 outside every step).
    pub seg_ids: Tensor,
    pub n_segs: usize,
    pub rollout_logp: Tensor,
    /// pi_old, filled by the trainer's forward before the first update on the batch.
    pub old_logp: Option<Tensor>,
    pub ref_logp: Option<Tensor>,
    pub forced_experts: Option<Tensor>,
    pub tokens: usize,
    /// A stand-in that trains nothing (fully sharded ranks with fewer micro-batches than another run these so
    /// that every rank makes the same gathers and reductions); its loss is multiplied by 0.
    pub padding: bool,
}

/// Puts `items` into tensors on `device`. `pack`: concatenate all items into one row.
pub fn collate(items: &[&TrainItem], pack: bool, device: Device) -> Result<MicroBatch> {
    let rows: Vec<Vec<usize>> = if pack {
        vec![(0..items.len()).collect()]
    } else {
        (0..items.len()).map(|i| vec![i]).collect()
    };
    let l = rows
        .iter()
        .map(|r| r.iter().map(|&i| items[i].len()).sum::<usize>())
        .max()
        .unwrap_or(0);
    let n = rows.len() * l;
    let mut ids = vec![0i64; n];
    let mut attn = vec![0i64; n];
    let mut pos = vec![0i64; n];
    let mut pseq = vec![-1i64; n];
    let mut tgt = vec![0i64; n];
    let mut mask = vec![0f32; n];
    let mut adv = vec![0f32; n];
    let mut seq = vec![-1i64; n];
    let mut seg = vec![-1i64; n];
    let mut rlp = vec![0f32; n];
    let routed_shape = items
        .first()
        .and_then(|it| it.routed.as_ref().map(|(layers, k, _)| (*layers, *k)));
    let mut routed = routed_shape.map(|(layers, k)| vec![0i64; n * layers * k]);
    let mut seg_base = 0i64;
    for (r, row) in rows.iter().enumerate() {
        let mut off = r * l;
        for &i in row {
            let it = items[i];
            for p in 0..it.len() {
                let o = off + p;
                ids[o] = it.input_ids[p];
                attn[o] = 1;
                pos[o] = p as i64;
                pseq[o] = i as i64;
                tgt[o] = it.targets[p];
                mask[o] = it.mask[p];
                adv[o] = it.advantages[p];
                seq[o] = i as i64;
                seg[o] = if it.step_ids[p] >= 0 {
                    seg_base + it.step_ids[p]
                } else {
                    -1
                };
                rlp[o] = it.rollout_logp[p];
            }
            match (&mut routed, &it.routed, routed_shape) {
                (Some(dst), Some((layers, k, src)), Some(shape)) if (*layers, *k) == shape => {
                    let w = layers * k;
                    dst[off * w..(off + it.len()) * w].copy_from_slice(src);
                }
                (None, None, None) => {}
                _ => bail!(
                    "sample {}/{}: routed experts missing or of another shape than the batch's",
                    it.group_id,
                    it.sample_idx
                ),
            }
            seg_base += it.n_steps as i64;
            off += it.len();
        }
    }
    let shape = [rows.len() as i64, l as i64];
    let t_i = |v: &[i64]| Tensor::from_slice(v).reshape(shape).to_device(device);
    let t_f = |v: &[f32]| Tensor::from_slice(v).reshape(shape).to_device(device);
    let forced_experts = match (routed, routed_shape) {
        (Some(v), Some((layers, k))) => Some(
            Tensor::from_slice(&v)
                .reshape([shape[0], shape[1], layers as i64, k as i64])
                .to_device(device),
        ),
        _ => None,
    };
    Ok(MicroBatch {
        input_ids: t_i(&ids),
        attention_mask: t_i(&attn),
        position_ids: t_i(&pos),
        packed_seq_ids: pack.then(|| t_i(&pseq)),
        targets: t_i(&tgt),
        mask: t_f(&mask),
        advantages: t_f(&adv),
        seq_ids: t_i(&seq),
        n_seqs: items.len(),
        seg_ids: t_i(&seg),
        n_segs: seg_base as usize,
        rollout_logp: t_f(&rlp),
        old_logp: None,
        ref_logp: None,
        forced_experts,
        tokens: items.iter().map(|it| it.len()).sum(),
        padding: false,
    })
}

/// Mini-batch denominators for [`crate::agg::Aggregator`]: trained tokens and sequences over all items.
pub fn totals(items: &[TrainItem]) -> (f64, f64) {
    let tokens: usize = items.iter().map(|it| it.trained_tokens()).sum();
    let seqs = items.iter().filter(|it| it.trained_tokens() > 0).count();
    (tokens as f64, seqs as f64)
}
