//! Plain data parallelism's gradient sum, overlapped with backward (DDP's overlap, one bucket set per unit).
//!
//! The model's backward says, through [`spar_model::GradsReady`], when it has finished each unit's gradients:
//! the last layer first, the root last. On the last micro-batch of an update (when the learner has armed this)
//! each unit's gradients are flattened and their all-reduce started at once, so that layer l's reduction runs
//! while backward computes layer l-1; the earlier micro-batches only accumulate. [`OverlappedGradSum::finish`]
//! waits for the reductions and copies the sums back before the step. A unit that no backward reported (a rank
//! whose share of the batch was empty, a backward outside the learner's loops) is reduced there, in the same
//! order as backward reports them, so every rank issues the same collectives in the same order.
use anyhow::Result;
use spar_dist::{Collectives, PendingGradSum};
use spar_model::{GradsReady, Qwen3Model, Unit};
use std::sync::{Arc, Mutex};
use tch::{Kind, Tensor};

/// The overlapped gradient sum of one model over one data-parallel group.
pub struct OverlappedGradSum {
    group: Arc<dyn Collectives>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Each unit's parameters, by [`Unit::index`] (in the mutex: tensors are not `Sync`).
    units: Vec<(Unit, Vec<Tensor>)>,
    /// The coming backward is the update's last: reduce as units complete.
    armed: bool,
    /// Reductions started, by unit index.
    pending: Vec<Option<PendingGradSum>>,
    /// Units whose reduction started during backward (the rest start in `finish`), over this object's life.
    overlapped: usize,
    /// All units reduced, over this object's life.
    total: usize,
}

impl OverlappedGradSum {
    /// Installs the overlapped sum on `model` (its backward then reports each unit) over `group`.
    pub fn install(model: &mut Qwen3Model, group: Arc<dyn Collectives>) -> Arc<Self> {
        let units = model
            .units()
            .into_iter()
            .map(|u| {
                (
                    u,
                    model.unit_params(u).into_iter().map(|(_, t)| t).collect(),
                )
            })
            .collect::<Vec<_>>();
        let n = units.len();
        let sum = Arc::new(Self {
            group,
            state: Mutex::new(State {
                units,
                pending: (0..n).map(|_| None).collect(),
                ..Default::default()
            }),
        });
        model.set_grads_ready(Some(sum.clone()));
        sum
    }

    /// The next backward is the last before the step: start each unit's reduction as backward completes it.
    pub fn arm(&self) {
        self.lock().armed = true;
    }

    /// Starts the reductions no backward started (in backward's order: last layer first, the root last), waits
    /// for all and leaves every parameter's `.grad` holding the sum over the ranks.
    pub fn finish(&self) -> Result<()> {
        let mut guard = self.lock();
        let st = &mut *guard;
        st.armed = false;
        let mut order: Vec<usize> = (0..st.units.len()).collect();
        order.sort_by_key(|&i| backward_rank(st.units[i].0));
        for &i in &order {
            if st.pending[i].is_none() {
                st.pending[i] = Some(self.start(&st.units[i].1)?);
                st.total += 1;
            }
        }
        for i in order {
            if let Some(p) = st.pending[i].take() {
                p.finish()?;
            }
        }
        Ok(())
    }

    /// (units reduced during backward, all units reduced) since installation.
    pub fn overlap_counts(&self) -> (usize, usize) {
        let st = self.lock();
        (st.overlapped, st.total)
    }

    fn start(&self, params: &[Tensor]) -> Result<PendingGradSum> {
        define_missing_grads(params)?;
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
        spar_dist::start_all_reduce_grads(&*self.group, &grads, spar_dist::DEFAULT_BUCKET_BYTES)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl GradsReady for OverlappedGradSum {
    fn ready(&self, unit: Unit, params: &[Tensor]) -> Result<()> {
        let mut st = self.lock();
        if !st.armed {
            return Ok(());
        }
        let i = unit.index();
        anyhow::ensure!(
            st.pending[i].is_none(),
            "unit {} reported twice in one update's last backward",
            unit.name()
        );
        st.pending[i] = Some(self.start(params)?);
        st.overlapped += 1;
        st.total += 1;
        Ok(())
    }
}

/// The position of `unit` in backward's order: the last layer first, the root last.
fn backward_rank(unit: Unit) -> i64 {
    match unit {
        Unit::Root => i64::MAX,
        Unit::Layer(l) => -(l as i64),
    }
}

/// Gives a zero `.grad` to each parameter that has none (e.g. an expert no token of this rank was routed to):
/// every rank must send the same tensors.
pub(crate) fn define_missing_grads(params: &[Tensor]) -> Result<()> {
    let zero = params
        .iter()
        .filter(|p| !p.grad().defined())
        .map(|p| p.f_mul_scalar(0.0).and_then(|z| z.f_sum(Kind::Float)))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .reduce(|a, b| a + b);
    if let Some(z) = zero {
        z.f_backward()?;
    }
    Ok(())
}
