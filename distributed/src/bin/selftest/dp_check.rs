//! The data-parallel identity on real ranks: each rank takes its share of a global batch, divides its loss by
//! the global token / sequence counts, and after the bucketed gradient all-reduce every rank's SGD step equals
//! the step one process takes on the union batch. Tolerance: 1e-5 relative (float32; the sums over <= 18
//! tokens are taken in a different order, each rounding at most 2^-24 relative).
use anyhow::{Result, ensure};
use spar_dist::{Collectives, all_reduce_grads, any_rank, sum_over_ranks};
use tch::{Device, Kind, Tensor};

const SEQS: usize = 6;
const D: i64 = 4;

/// Sequence i has 1 + i % 3 tokens of D features and one target each.
fn batch(d: Device) -> Vec<(Tensor, Tensor)> {
    tch::manual_seed(1);
    (0..SEQS)
        .map(|i| {
            let l = 1 + (i % 3) as i64;
            (
                Tensor::randn([l, D], (Kind::Float, d)),
                Tensor::randn([l, 3], (Kind::Float, d)),
            )
        })
        .collect()
}

fn params(d: Device) -> Vec<Tensor> {
    tch::manual_seed(0);
    [vec![3, D], vec![3], vec![2]]
        .iter()
        .map(|s| Tensor::randn(s.as_slice(), (Kind::Float, d)).set_requires_grad(true))
        .collect()
}

/// Token-mean plus sequence-mean-of-token-means over `seqs`, divided by the given global counts.
fn loss(p: &[Tensor], seqs: &[&(Tensor, Tensor)], tokens: f64, n_seqs: f64) -> Tensor {
    let mut token_sum = Tensor::zeros([], (Kind::Float, p[0].device()));
    let mut seq_sum = Tensor::zeros([], (Kind::Float, p[0].device()));
    for (x, y) in seqs {
        let pred = x.matmul(&p[0].tr()) + &p[1] + p[2].sum(Kind::Float);
        let per_tok = (pred - y).square().sum_dim_intlist(1, false, Kind::Float);
        token_sum += per_tok.sum(Kind::Float);
        seq_sum += per_tok.mean(Kind::Float);
    }
    token_sum / tokens + seq_sum / n_seqs
}

fn sgd(p: &[Tensor]) -> Vec<Tensor> {
    let _g = tch::no_grad_guard();
    p.iter().map(|t| t.detach() - t.grad() * 0.1).collect()
}

fn close(what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    let diff = (a - b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]).max(1.0);
    ensure!(
        diff <= 1e-5 * scale,
        "{what}: ranks differ from one process by {diff:e}"
    );
    Ok(())
}

pub fn dp_step_matches_union_batch(g: &dyn Collectives, d: Device) -> Result<usize> {
    let all = batch(d);
    let total_tokens: f64 = all.iter().map(|(x, _)| x.size()[0] as f64).sum();
    // One process on the union batch.
    let reference = params(d);
    let full = loss(
        &reference,
        &all.iter().collect::<Vec<_>>(),
        total_tokens,
        SEQS as f64,
    );
    full.backward();
    let want = sgd(&reference);
    // This rank's share (strided, so that ranks get different lengths), normalised globally.
    let (r, w) = (g.rank(), g.world_size());
    let mine: Vec<&(Tensor, Tensor)> = all.iter().skip(r).step_by(w).collect();
    let local_tokens: f64 = mine.iter().map(|(x, _)| x.size()[0] as f64).sum();
    let totals = sum_over_ranks(g, &[local_tokens, mine.len() as f64])?;
    ensure!(
        totals == [total_tokens, SEQS as f64],
        "global counts {totals:?}"
    );
    let p = params(d);
    let l = loss(&p, &mine, totals[0], totals[1]);
    l.backward();
    // 24-byte buckets: the weight alone, then bias and the last vector together.
    let grads: Vec<Tensor> = p.iter().map(Tensor::grad).collect();
    all_reduce_grads(g, &grads, 24)?;
    let loss_sum = sum_over_ranks(g, &[l.double_value(&[])])?[0];
    let full_loss = full.double_value(&[]);
    ensure!(
        (loss_sum - full_loss).abs() <= 1e-5 * full_loss.abs().max(1.0),
        "summed rank losses {loss_sum} vs one process {full_loss}"
    );
    for (i, (a, b)) in sgd(&p).iter().zip(&want).enumerate() {
        close(&format!("parameter {i} after the step"), a, b)?;
    }
    ensure!(
        any_rank(g, r == w - 1)?,
        "any_rank missed the last rank's flag"
    );
    ensure!(!any_rank(g, false)?, "any_rank invented a flag");
    Ok(3)
}
