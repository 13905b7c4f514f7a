//! The data-parallel step's collectives: global loss denominators, one decision for all ranks, and the
//! bucketed gradient all-reduce. With each rank's loss divided by the *global* token / sequence counts, the sum
//! of the ranks' gradients is the gradient of the union batch's loss, so N ranks take the step one process
//! would take on the union batch (up to float summation order).
use crate::collectives::{Collectives, ReduceOp, Work};
use anyhow::{Result, ensure};
use tch::{Device, Kind, Tensor};

/// Default bucket size of [`all_reduce_grads`]: big enough to amortise a collective, small enough to start
/// sending before every gradient is flattened.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Sums `values` (e.g. trained tokens, trained sequences, loss) over the ranks, in float64.
pub fn sum_over_ranks(group: &dyn Collectives, values: &[f64]) -> Result<Vec<f64>> {
    if group.world_size() == 1 || values.is_empty() {
        return Ok(values.to_vec());
    }
    reduce_f64(group, values, ReduceOp::Sum)
}

/// Elementwise maximum of `values` over the ranks, in float64.
pub fn max_over_ranks(group: &dyn Collectives, values: &[f64]) -> Result<Vec<f64>> {
    if group.world_size() == 1 || values.is_empty() {
        return Ok(values.to_vec());
    }
    reduce_f64(group, values, ReduceOp::Max)
}

fn reduce_f64(group: &dyn Collectives, values: &[f64], op: ReduceOp) -> Result<Vec<f64>> {
    let mut t = Tensor::from_slice(values).to_device(group.device());
    group.all_reduce(&mut t, op)?.wait()?;
    Ok(Vec::<f64>::try_from(&t.to_device(Device::Cpu))?)
}

/// True on every rank when `flag` is true on any rank (ranks must take the same branch, or the collectives of
/// one branch wait forever for the ranks in the other).
pub fn any_rank(group: &dyn Collectives, flag: bool) -> Result<bool> {
    if group.world_size() == 1 {
        return Ok(flag);
    }
    let mut t = Tensor::from_slice(&[flag as i64]).to_device(group.device());
    group.all_reduce(&mut t, ReduceOp::Max)?.wait()?;
    Ok(t.int64_value(&[0]) != 0)
}

/// Every rank's `bytes`, in rank order, on every rank (e.g. serialized per-rank results for metrics).
pub fn all_gather_bytes(group: &dyn Collectives, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let world = group.world_size();
    if world == 1 {
        return Ok(vec![bytes.to_vec()]);
    }
    let dev = group.device();
    let len = Tensor::from_slice(&[bytes.len() as i64]).to_device(dev);
    let mut lens = Tensor::zeros([world as i64], (Kind::Int64, dev));
    group.all_gather_into_tensor(&mut lens, &len)?.wait()?;
    let lens = Vec::<i64>::try_from(&lens.to_device(Device::Cpu))?;
    let max = lens.iter().copied().max().unwrap_or(0).max(1);
    let mut mine = vec![0u8; max as usize];
    mine[..bytes.len()].copy_from_slice(bytes);
    let mine = Tensor::from_slice(&mine).to_device(dev);
    let mut all = Tensor::zeros([world as i64 * max], (Kind::Uint8, dev));
    group.all_gather_into_tensor(&mut all, &mine)?.wait()?;
    let all = Vec::<u8>::try_from(&all.to_device(Device::Cpu))?;
    Ok(lens
        .iter()
        .enumerate()
        .map(|(r, &n)| all[r * max as usize..r * max as usize + n as usize].to_vec())
        .collect())
}

/// Copies `root`'s values of `tensors` into every rank's (in place, e.g. a model's initial weights). Tensors not
/// on the group's device or not contiguous go through a staging copy.
pub fn broadcast_tensors(group: &dyn Collectives, tensors: &[Tensor], root: usize) -> Result<()> {
    if group.world_size() == 1 {
        return Ok(());
    }
    let _guard = tch::no_grad_guard();
    let dev = group.device();
    for t in tensors {
        let direct = t.device() == dev && t.is_contiguous();
        let mut buf = if direct {
            t.shallow_clone()
        } else {
            t.to_device(dev).contiguous()
        };
        group.broadcast(&mut buf, root)?.wait()?;
        if !direct {
            t.shallow_clone().copy_(&buf);
        }
    }
    Ok(())
}

/// Sums `grads` over the ranks in place, in flat buckets of at most `bucket_bytes` (one tensor larger than
/// that gets a bucket of its own). Every bucket is sent before the first is waited on, so flattening the next
/// bucket overlaps the reduction of the previous one. All ranks must pass gradients of the same shapes in the
/// same order.
pub fn all_reduce_grads(
    group: &dyn Collectives,
    grads: &[Tensor],
    bucket_bytes: usize,
) -> Result<()> {
    start_all_reduce_grads(group, grads, bucket_bytes)?.finish()
}

/// [`all_reduce_grads`] without the wait: the buckets are flattened and their all-reduces started; the sums
/// reach `grads` at [`PendingGradSum::finish`]. Meanwhile the caller may go on (e.g. back-propagate the layers
/// before these), as long as it does not write these gradients.
pub fn start_all_reduce_grads(
    group: &dyn Collectives,
    grads: &[Tensor],
    bucket_bytes: usize,
) -> Result<PendingGradSum> {
    let mut pending = PendingGradSum {
        grads: grads.iter().map(|g| g.shallow_clone()).collect(),
        buckets: Vec::new(),
    };
    if group.world_size() == 1 || grads.is_empty() {
        return Ok(pending);
    }
    let _guard = tch::no_grad_guard();
    for idx in plan(grads, bucket_bytes)? {
        let flat = Tensor::cat(
            &idx.iter()
                .map(|&i| grads[i].reshape([-1]))
                .collect::<Vec<_>>(),
            0,
        );
        let mut flat = flat.contiguous();
        let work = group.all_reduce(&mut flat, ReduceOp::Sum)?;
        pending.buckets.push((idx, flat, work));
    }
    Ok(pending)
}

/// Gradient all-reduces in flight (see [`start_all_reduce_grads`]).
pub struct PendingGradSum {
    grads: Vec<Tensor>,
    buckets: Vec<(Vec<usize>, Tensor, Work)>,
}

impl PendingGradSum {
    /// Waits for every bucket and copies the sums back into the gradients.
    pub fn finish(self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let mut done = Vec::with_capacity(self.buckets.len());
        for (idx, flat, work) in self.buckets {
            work.wait()?;
            done.push((idx, flat));
        }
        for (idx, flat) in done {
            let mut at = 0i64;
            for i in idx {
                let n = self.grads[i].numel() as i64;
                let mut g = self.grads[i].shallow_clone();
                g.copy_(&flat.narrow(0, at, n).view_as(&self.grads[i]));
                at += n;
            }
        }
        Ok(())
    }
}

/// Consecutive runs of gradients of one dtype and device, each at most `bucket_bytes`.
pub(crate) fn plan(grads: &[Tensor], bucket_bytes: usize) -> Result<Vec<Vec<usize>>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let (mut bytes, mut key): (usize, Option<(Kind, Device)>) = (0, None);
    for (i, g) in grads.iter().enumerate() {
        ensure!(
            g.defined(),
            "gradient {i} is undefined: run backward on every rank before the all-reduce"
        );
        let k = (g.kind(), g.device());
        let size = g.numel() * g.kind().elt_size_in_bytes();
        let fits = key == Some(k) && bytes + size <= bucket_bytes;
        match out.last_mut() {
            Some(b) if fits => b.push(i),
            _ => {
                out.push(vec![i]);
                bytes = 0;
            }
        }
        bytes += size;
        key = Some(k);
    }
    Ok(out)
}
