//! `[distributed]`: torchrun-style layout. Owner: trainer (multi-GPU work to come).
use super::check;
use serde::{Deserialize, Serialize};

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
    /// "nccl" | "gloo".
    pub backend: String,
}

impl Default for DistributedSection {
    fn default() -> Self {
        DistributedSection {
            data_parallel: 1,
            tensor_parallel: 1,
            expert_parallel: 1,
            pipeline_parallel: 1,
            backend: "nccl".into(),
        }
    }
}

impl DistributedSection {
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (k, v) in [
            ("data_parallel", self.data_parallel),
            ("tensor_parallel", self.tensor_parallel),
            ("expert_parallel", self.expert_parallel),
            ("pipeline_parallel", self.pipeline_parallel),
        ] {
            check(v >= 1, k, "must be >= 1")?;
        }
        check(
            ["nccl", "gloo"].contains(&self.backend.as_str()),
            "backend",
            "must be nccl or gloo",
        )
    }

    pub fn world_size(&self) -> usize {
        self.data_parallel * self.tensor_parallel * self.pipeline_parallel
    }
}
