//! Weights from a learner to actors: a versioned, bucketed broadcast over the job's collectives (gloo on CPU,
//! NCCL on GPU), as verl and OpenRLHF refresh their rollout engines. The root first sends the policy version, so
//! an actor that expected another version fails loudly instead of generating with weights it did not ask for;
//! then the tensors go in flat buckets (one per run of same-dtype tensors up to the bucket size), each bucket
//! one broadcast, every bucket started before the first is waited on.
use crate::collectives::Collectives;
use crate::grads::plan;
use anyhow::{Result, bail};
use tch::{Device, Tensor};

/// Broadcasts `tensors` (in place on the receivers) and `version` from `root` over `group`. Every rank passes
/// tensors of the same shapes and dtypes in the same order; receivers pass the version they expect and get an
/// error naming both when the root sent another. Returns the version.
pub fn broadcast_weights(
    group: &dyn Collectives,
    tensors: &[Tensor],
    root: usize,
    version: u64,
    bucket_bytes: usize,
) -> Result<u64> {
    start_broadcast_weights(group, tensors, root, version, bucket_bytes)?.finish()?;
    Ok(version)
}

/// [`broadcast_weights`] without the root's wait: on the root the buckets are copies, so it may go on (even
/// update the weights) while the receivers take them, and [`PendingWeights::finish`] later. A receiver's call
/// returns once its weights are in place (it must not read them before), so `finish` is immediate there. The
/// root holds one flat copy of the weights until the receivers have taken it.
pub fn start_broadcast_weights(
    group: &dyn Collectives,
    tensors: &[Tensor],
    root: usize,
    version: u64,
    bucket_bytes: usize,
) -> Result<PendingWeights> {
    let mut pending = PendingWeights { works: Vec::new() };
    if group.world_size() == 1 {
        return Ok(pending);
    }
    let _guard = tch::no_grad_guard();
    let dev = group.device();
    let is_root = group.rank() == root;
    let mut header = Tensor::from_slice(&[version as i64, tensors.len() as i64]).to_device(dev);
    let work = group.broadcast(&mut header, root)?;
    if is_root {
        pending.works.push((work, header));
    } else {
        work.wait()?;
        let header = Vec::<i64>::try_from(&header.to_device(Device::Cpu))?;
        let (sent, count) = (header[0] as u64, header[1] as usize);
        if sent != version || count != tensors.len() {
            bail!(
                "weight broadcast: rank {root} sent policy version {sent} ({count} tensors), rank {} expected \
                 version {version} ({} tensors)",
                group.rank(),
                tensors.len()
            );
        }
    }
    // Buckets on the group's device: a CPU model sent over NCCL (or a GPU one over gloo) is staged there.
    let staged: Vec<Tensor> = tensors
        .iter()
        .map(|t| {
            if t.device() == dev {
                t.shallow_clone()
            } else {
                t.to_device(dev)
            }
        })
        .collect();
    let mut buckets = Vec::new();
    for idx in plan(&staged, bucket_bytes)? {
        let mut flat = Tensor::cat(
            &idx.iter()
                .map(|&i| staged[i].reshape([-1]))
                .collect::<Vec<_>>(),
            0,
        )
        .contiguous();
        let work = group.broadcast(&mut flat, root)?;
        buckets.push((idx, flat, work));
    }
    for (idx, flat, work) in buckets {
        if is_root {
            pending.works.push((work, flat));
            continue;
        }
        work.wait()?;
        let mut at = 0i64;
        for i in idx {
            let n = tensors[i].numel() as i64;
            let part = flat.narrow(0, at, n).view_as(&tensors[i]);
            tensors[i].shallow_clone().copy_(&part);
            at += n;
        }
    }
    Ok(pending)
}

/// A weight broadcast the root has started (see [`start_broadcast_weights`]).
#[must_use = "finish() waits until the receivers have the weights"]
pub struct PendingWeights {
    /// Each broadcast's work and the buffer it sends (kept alive until it is done).
    works: Vec<(crate::collectives::Work, Tensor)>,
}

impl PendingWeights {
    /// Waits until every receiver has taken the weights.
    pub fn finish(self) -> Result<()> {
        for (work, _buffer) in self.works {
            work.wait()?;
        }
        Ok(())
    }
}

/// Bytes of `tensors` (what one weight refresh moves to each actor).
pub fn tensor_bytes(tensors: &[Tensor]) -> usize {
    tensors
        .iter()
        .map(|t| t.numel() * t.kind().elt_size_in_bytes())
        .sum()
}
