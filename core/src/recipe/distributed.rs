//! `[distributed]`: torchrun-style layout. Owner: trainer.
//!
//! Multi-process training is not built yet: every command runs one process. The section is accepted when
//! every degree is 1 (it then describes exactly what runs) and rejected otherwise, so a recipe never believes
//! it trains on a layout that nothing sets up.
use super::check;
use serde::{Deserialize, Serialize};

recipe_enum! {
    /// Collective-communication backend of a multi-process run.
    pub enum DistributedBackend {
        /// NVIDIA's collectives (GPUs).
        Nccl = "nccl",
        /// Gloo (CPU).
        Gloo = "gloo",
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistributedSection {
    /// Data-parallel degree (WORLD_SIZE when launched by torchrun).
    pub data_parallel: usize,
    /// Tensor-parallel degree.
    pub tensor_parallel: usize,
    /// Expert-parallel degree (MoE).
    pub expert_parallel: usize,
    /// Pipeline-parallel degree.
    pub pipeline_parallel: usize,
    /// Collective backend.
    pub backend: DistributedBackend,
}

impl Default for DistributedSection {
    fn default() -> Self {
        DistributedSection {
            data_parallel: 1,
            tensor_parallel: 1,
            expert_parallel: 1,
            pipeline_parallel: 1,
            backend: DistributedBackend::Nccl,
        }
    }
}

impl DistributedSection {
    /// Each degree is >= 1, and (until multi-process training exists) exactly 1.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (k, v) in [
            ("data_parallel", self.data_parallel),
            ("tensor_parallel", self.tensor_parallel),
            ("expert_parallel", self.expert_parallel),
            ("pipeline_parallel", self.pipeline_parallel),
        ] {
            check(v >= 1, k, "must be >= 1")?;
            check(
                v == 1,
                k,
                &format!(
                    "is {v}, but multi-process training is not built yet: every spar command runs one \
                     process (leave out [distributed] or set every degree to 1)"
                ),
            )?;
        }
        Ok(())
    }

    /// Processes the layout asks for (data x tensor x pipeline; expert parallelism reuses those ranks).
    pub fn world_size(&self) -> usize {
        self.data_parallel * self.tensor_parallel * self.pipeline_parallel
    }
}
