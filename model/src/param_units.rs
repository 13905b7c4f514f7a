//! Fully sharded training's view of the model: its parameters cut into units (the root: embedding, final norm
//! and LM head; then one unit per decoder layer) that a sharding trainer makes whole before the model uses them
//! and frees after, and whose gradients it takes as soon as a backward has finished with them.
//!
//! The model only calls the hooks; what "whole" and "free" mean (an all-gather of each rank's shard, a
//! reduce-scatter of the gradients) is the trainer's. With hooks set, a forward that records autograd always
//! takes the activation-checkpointed path, so that backward re-gathers each layer once, recomputes it and hands
//! its gradients over before the next layer is gathered: at most one layer (plus the root) is whole at a time.
use anyhow::Result;
use tch::Tensor;

/// One unit of parameters, in the order a forward uses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Embedding, final norm and (untied) LM head: whole from the start of a forward to the end of its backward.
    Root,
    /// Decoder layer `l`.
    Layer(usize),
}

impl Unit {
    /// Position in [`crate::Qwen3Model::units`] order: the root 0, layer `l` at `l + 1`.
    pub fn index(&self) -> usize {
        match self {
            Unit::Root => 0,
            Unit::Layer(l) => l + 1,
        }
    }

    /// A stable name for files and messages (`root`, `layers.3`).
    pub fn name(&self) -> String {
        match self {
            Unit::Root => "root".into(),
            Unit::Layer(l) => format!("layers.{l}"),
        }
    }
}

/// What a sharding trainer does around the model's use of a unit. Every rank must make the same calls in the
/// same order (they are collectives): the model never skips one on a rank because that rank's batch left a
/// layer without gradient.
pub trait ParamUnits: Send + Sync {
    /// `unit`'s parameters must be whole before the model reads them (a no-op when they already are).
    fn gather(&self, unit: Unit) -> Result<()>;
    /// The model is done with `unit` for now; the trainer may free the whole copy.
    fn release(&self, unit: Unit) -> Result<()>;
    /// This backward's gradient of each of `unit`'s parameters, in [`crate::Qwen3Model::unit_params`] order
    /// (None: the parameter got none, e.g. an expert no token was routed to).
    fn reduce_grads(&self, unit: Unit, grads: Vec<Option<Tensor>>) -> Result<()>;
}

/// What a data-parallel trainer does as backward finishes each unit (see [`crate::Qwen3Model::set_grads_ready`]).
/// Backward calls it once per unit, last layer first and the root last, on every backward with autograd,
/// including for a unit that got no gradient (ranks must issue the same collectives).
pub trait GradsReady: Send + Sync {
    /// Backward has accumulated all of this backward's gradients of `unit`'s parameters into their `.grad`
    /// (`params` in [`crate::Qwen3Model::unit_params`] order; a `.grad` may be undefined).
    fn ready(&self, unit: Unit, params: &[Tensor]) -> Result<()>;
}
