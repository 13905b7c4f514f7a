//! The model's expert-parallel exchange ([`spar_model::ExpertExchange`]) over a group of the run's collectives:
//! the counts go through `all_to_all_single`, the rows through the differentiable `all_to_all_rows`.
use anyhow::Result;
use spar_dist::Collectives;
use std::sync::Arc;
use tch::Tensor;

/// An expert-parallel group: the ranks that divide the experts among them.
pub struct ExpertGroup(pub Arc<dyn Collectives>);

impl spar_model::ExpertExchange for ExpertGroup {
    fn rank(&self) -> usize {
        self.0.rank()
    }

    fn size(&self) -> usize {
        self.0.world_size()
    }

    fn exchange_counts(&self, counts: &Tensor) -> Result<Tensor> {
        let input = counts.contiguous();
        let mut out = input.zeros_like();
        self.0
            .all_to_all_single(&mut out, &input, &[], &[])?
            .wait()?;
        Ok(out)
    }

    fn exchange_rows(&self, x: &Tensor, out_splits: &[i64], in_splits: &[i64]) -> Result<Tensor> {
        self.0.all_to_all_rows(x, out_splits, in_splits)
    }
}
