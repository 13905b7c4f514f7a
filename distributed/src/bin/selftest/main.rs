//! `spar-dist-selftest [--backend gloo|nccl] [--timeout-secs S] [--identity TEXT] [--fail-rank K]
//! [--sleep-secs S]`: joins the job its environment describes (torchrun / Slurm / `spar launch` contract), runs
//! every collective of the `Collectives` trait on rank-dependent data and checks each result against the value
//! one process computes for the whole world. Exits 0 after printing `selftest ok`, else 1 with the error on
//! stderr. `--fail-rank` and `--sleep-secs` (after joining, before the collectives) let the launcher's tests
//! make one rank fail while the others are busy.
use anyhow::{Context, Result, bail, ensure};
use spar_dist::{Backend, Collectives, DistEnv, InitOptions, ReduceOp, init};

mod dp_check;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

fn main() {
    let env = match DistEnv::from_env() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    match run(&env) {
        Ok(n) => println!(
            "selftest ok: rank {} of {} passed {n} checks",
            env.rank, env.world_size
        ),
        Err(e) => {
            eprintln!("rank {} error: {e:#}", env.rank);
            std::process::exit(1);
        }
    }
}

fn run(env: &DistEnv) -> Result<usize> {
    let mut opts = InitOptions::default();
    let mut args = std::env::args().skip(1);
    let mut device = Device::Cpu;
    let (mut fail_rank, mut sleep, mut fail_attempts) = (None, 0.0, u32::MAX);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--backend" => match value()?.as_str() {
                "gloo" => {}
                "nccl" => {
                    opts.backend = Some(Backend::Nccl {
                        device: env.local_rank,
                    });
                    device = Device::Cuda(env.local_rank);
                }
                b => bail!("--backend {b}: expected gloo or nccl"),
            },
            "--timeout-secs" => opts.timeout = Duration::from_secs_f64(value()?.parse()?),
            "--identity" => opts.identity.push(("recipe".into(), value()?.into_bytes())),
            "--fail-rank" => fail_rank = Some(value()?.parse::<usize>()?),
            "--sleep-secs" => sleep = value()?.parse::<f64>()?,
            // --fail-rank fails only in the launcher's first K attempts (TORCHELASTIC_RESTART_COUNT < K).
            "--fail-attempts" => fail_attempts = value()?.parse::<u32>()?,
            _ => bail!("unknown argument {a}"),
        }
    }
    let dist = init(env, &opts)?;
    println!("rank {} joined", env.rank);
    if fail_rank == Some(env.rank) && env.restart_count < fail_attempts {
        bail!("injected failure");
    }
    std::thread::sleep(Duration::from_secs_f64(sleep));
    let n = check_all(dist.group.as_ref(), device)?;
    Ok(n + dp_check::dp_step_matches_union_batch(dist.group.as_ref(), device)?)
}

fn close_all(what: &str, got: &Tensor, want: &Tensor) -> Result<()> {
    ensure!(
        got.size() == want.size(),
        "{what}: shape {:?}, expected {:?}",
        got.size(),
        want.size()
    );
    if got.numel() > 0 {
        let d = (got - want).abs().max().double_value(&[]);
        ensure!(d <= 1e-6, "{what}: differs by {d}");
    }
    Ok(())
}

fn f32s(v: &[f32], d: Device) -> Tensor {
    Tensor::from_slice(v).to_device(d)
}

fn expect(what: &str, got: &Tensor, want: &[f32]) -> Result<()> {
    let got: Vec<f32> = Vec::try_from(
        got.to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .flatten(0, -1),
    )?;
    let ok = got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1.0));
    ensure!(ok, "{what}: got {got:?}, want {want:?}");
    Ok(())
}

fn check_all(g: &dyn Collectives, d: Device) -> Result<usize> {
    let (r, w) = (g.rank() as f32, g.world_size());
    let wf = w as f32;
    let tri = wf * (wf + 1.0) / 2.0;
    let mut n = 0;

    // Two reductions in flight at once: the handles are independent.
    let mut a = f32s(&[r + 1.0, 2.0 * (r + 1.0), 3.0 * (r + 1.0)], d);
    let mut b = f32s(&[r + 1.0, 2.0 * (r + 1.0), 3.0 * (r + 1.0)], d);
    let (wa, wb) = (
        g.all_reduce(&mut a, ReduceOp::Sum)?,
        g.all_reduce(&mut b, ReduceOp::Avg)?,
    );
    wa.wait()?;
    wb.wait()?;
    expect("all_reduce(sum)", &a, &[tri, 2.0 * tri, 3.0 * tri])?;
    let avg = (wf + 1.0) / 2.0;
    expect("all_reduce(avg)", &b, &[avg, 2.0 * avg, 3.0 * avg])?;
    n += 2;

    let mut m = f32s(&[r, -r], d);
    g.all_reduce(&mut m, ReduceOp::Max)?.wait()?;
    expect("all_reduce(max)", &m, &[wf - 1.0, 0.0])?;
    let mut m = f32s(&[r, -r], d);
    g.all_reduce(&mut m, ReduceOp::Min)?.wait()?;
    expect("all_reduce(min)", &m, &[0.0, 1.0 - wf])?;
    let mut i = Tensor::from_slice(&[g.rank() as i64 + 1]).to_device(d);
    g.all_reduce(&mut i, ReduceOp::Sum)?.wait()?;
    expect("all_reduce(sum, int64)", &i, &[tri])?;
    n += 3;

    let mut t = f32s(&[r; 4], d);
    g.broadcast(&mut t, w - 1)?.wait()?;
    expect("broadcast(root = last)", &t, &[wf - 1.0; 4])?;
    n += 1;

    let mut out = Tensor::zeros([w as i64 * 2], (Kind::Float, d));
    g.all_gather_into_tensor(&mut out, &f32s(&[10.0 * r, 10.0 * r + 1.0], d))?
        .wait()?;
    let want: Vec<f32> = (0..w)
        .flat_map(|s| [10.0 * s as f32, 10.0 * s as f32 + 1.0])
        .collect();
    expect("all_gather_into_tensor", &out, &want)?;
    n += 1;

    let input: Vec<f32> = (0..2 * w).map(|k| k as f32 + r).collect();
    let mut out = Tensor::zeros([2], (Kind::Float, d));
    g.reduce_scatter_tensor(&mut out, &f32s(&input, d), ReduceOp::Sum)?
        .wait()?;
    let k = g.rank() as f32;
    let base = wf * (wf - 1.0) / 2.0;
    expect(
        "reduce_scatter_tensor(sum)",
        &out,
        &[wf * 2.0 * k + base, wf * (2.0 * k + 1.0) + base],
    )?;
    n += 1;

    // Equal splits: rank r sends r*100 + s to rank s.
    let input: Vec<f32> = (0..w).map(|s| 100.0 * r + s as f32).collect();
    let mut out = Tensor::zeros([w as i64], (Kind::Float, d));
    g.all_to_all_single(&mut out, &f32s(&input, d), &[], &[])?
        .wait()?;
    let want: Vec<f32> = (0..w).map(|s| 100.0 * s as f32 + r).collect();
    expect("all_to_all_single(equal)", &out, &want)?;
    // Unequal splits: rank r sends s + 1 rows (of 2 columns) to rank s, valued 1000 r + 10 s + row.
    let in_splits: Vec<i64> = (0..w as i64).map(|s| s + 1).collect();
    let input: Vec<f32> = (0..w)
        .flat_map(|s| (0..=s).flat_map(move |row| [1000.0 * r + 10.0 * s as f32 + row as f32; 2]))
        .collect();
    let me = g.rank();
    let out_splits = vec![me as i64 + 1; w];
    let mut out = Tensor::zeros([(w * (me + 1)) as i64, 2], (Kind::Float, d));
    let input = f32s(&input, d).view([-1, 2]);
    g.all_to_all_single(&mut out, &input, &out_splits, &in_splits)?
        .wait()?;
    let want: Vec<f32> = (0..w)
        .flat_map(|s| {
            (0..=me).flat_map(move |row| [1000.0 * s as f32 + 10.0 * me as f32 + row as f32; 2])
        })
        .collect();
    expect("all_to_all_single(splits)", &out, &want)?;
    n += 2;

    // The differentiable row exchange, the same unequal splits: values as above, and the gradient of
    // 0.5 * sum(out^2) sent back is each input row's own value.
    let input = input.set_requires_grad(true);
    let out = g.all_to_all_rows(&input, &out_splits, &in_splits)?;
    expect("all_to_all_rows", &out, &want)?;
    (&out * &out * 0.5).sum(Kind::Float).backward();
    close_all("all_to_all_rows backward", &input.grad(), &input.detach())?;
    // Zero rows to some ranks (rank r sends (r + s) % 2 rows to s): every rank still takes part.
    let sends: Vec<i64> = (0..w).map(|s| ((me + s) % 2) as i64).collect();
    let x = Tensor::full([sends.iter().sum::<i64>(), 3], r as f64, (Kind::Float, d))
        .set_requires_grad(true);
    let y = g.all_to_all_rows(&x, &sends, &sends)?;
    (&y * 2.0).sum(Kind::Float).backward();
    close_all(
        "all_to_all_rows backward (empty splits)",
        &x.grad(),
        &x.detach().full_like(2.0),
    )?;
    n += 2;

    g.barrier()?.wait()?;
    n += 1;

    // Bad input is an error before anything is sent (a mistake must not hang the other ranks).
    let mut bad = Tensor::zeros([3], (Kind::Float, d));
    ensure!(
        g.all_gather_into_tensor(&mut bad, &f32s(&[1.0, 2.0], d))
            .is_err(),
        "a wrongly sized all_gather output was accepted"
    );
    n += 1;

    // The weight refresh to actors: mixed dtypes in several buckets (64-byte buckets), root 0. The root may change
    // its weights once the broadcast has started (its buckets are copies): receivers get the values at the start.
    let shapes: [(&[i64], Kind, f64); 3] = [
        (&[3, 4], Kind::Float, 1.0),
        (&[5], Kind::BFloat16, 2.0),
        (&[30], Kind::Float, -3.0),
    ];
    // Rank q holds base * (q + offset); rank 0's values are base * offset.
    let held = |q: f32| -> Vec<Tensor> {
        shapes
            .iter()
            .map(|(shape, kind, off)| {
                let n: i64 = shape.iter().product();
                (Tensor::arange(n, (Kind::Float, d)) * (q as f64 + off))
                    .view(*shape)
                    .to_kind(*kind)
            })
            .collect()
    };
    let weights = held(r);
    let pending = spar_dist::start_broadcast_weights(g, &weights, 0, 7, 64)?;
    if g.rank() == 0 {
        let _guard = tch::no_grad_guard();
        for t in &weights {
            let _ = t.shallow_clone().fill_(-1.0);
        }
    }
    pending.finish()?;
    if g.rank() != 0 {
        for (k, (t, want)) in weights.iter().zip(held(0.0)).enumerate() {
            close_all(&format!("broadcast_weights tensor {k}"), t, &want)?;
        }
    }
    n += 1;
    Ok(n)
}
