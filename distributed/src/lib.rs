//! Multi-process training for spar: collectives over libtorch's own c10d (TCPStore, ProcessGroupGloo,
//! ProcessGroupNCCL) reached through the C++ shim in `csrc/`, the rendezvous from torchrun's or Slurm's
//! environment, and the start-up checks that make a misconfigured job fail fast with the rank named.
//!
//! Entry points: [`DistEnv::from_env`] then [`init`] gives a [`Dist`] whose `group` implements
//! [`Collectives`]; without a launcher it is the one-process [`Local`] world. [`flight`] moves record batches
//! (samples) from actors to learners over Arrow Flight; [`broadcast_weights`] moves a learner's weights to them.
mod collectives;
mod env;
mod ffi;
pub mod flight;
mod grads;
mod group;
mod init;
pub mod launch;
mod local;
mod rendezvous;
mod store;
mod weights;

pub use collectives::{Collectives, ReduceOp, Work};
pub use env::{DistEnv, Launcher, first_host};
pub use grads::{
    DEFAULT_BUCKET_BYTES, PendingGradSum, all_gather_bytes, all_reduce_grads, any_rank,
    broadcast_tensors, max_over_ranks, start_all_reduce_grads, sum_over_ranks,
};
pub use group::{Backend, ProcessGroup, nccl_compiled};
pub use init::{DEFAULT_TIMEOUT, Dist, InitOptions, default_gloo, init};
pub use local::Local;
pub use rendezvous::Rendezvous;
pub use store::Store;
pub use weights::{PendingWeights, broadcast_weights, start_broadcast_weights, tensor_bytes};
