//! The world of one process: every collective is the identity (or a copy), with the same shape checks as a
//! real group, so that code written against [`Collectives`] runs unchanged without a launcher.
use crate::collectives::{
    Collectives, ReduceOp, Work, check_contiguous, check_pair, check_ratio, check_splits,
};
use anyhow::{Result, ensure};
use tch::Tensor;

/// Rank 0 of a world of size 1.
#[derive(Clone, Copy, Debug, Default)]
pub struct Local;

impl Collectives for Local {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce(&self, t: &mut Tensor, _op: ReduceOp) -> Result<Work> {
        check_contiguous("all_reduce", t)?;
        Ok(Work::done("all_reduce"))
    }

    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<Work> {
        check_contiguous("broadcast", t)?;
        ensure!(root == 0, "broadcast: root {root} is outside world size 1");
        Ok(Work::done("broadcast"))
    }

    fn all_gather_into_tensor(&self, out: &mut Tensor, input: &Tensor) -> Result<Work> {
        check_pair("all_gather_into_tensor", out, input)?;
        check_ratio("all_gather_into_tensor", out, input, 1)?;
        out.view_as(input).copy_(input);
        Ok(Work::done("all_gather_into_tensor"))
    }

    fn reduce_scatter_tensor(
        &self,
        out: &mut Tensor,
        input: &Tensor,
        _op: ReduceOp,
    ) -> Result<Work> {
        check_pair("reduce_scatter_tensor", out, input)?;
        check_ratio("reduce_scatter_tensor", input, out, 1)?;
        out.view_as(input).copy_(input);
        Ok(Work::done("reduce_scatter_tensor"))
    }

    fn all_to_all_single(
        &self,
        out: &mut Tensor,
        input: &Tensor,
        out_splits: &[i64],
        in_splits: &[i64],
    ) -> Result<Work> {
        check_pair("all_to_all_single", out, input)?;
        check_splits(out, input, out_splits, in_splits, 1)?;
        ensure!(
            out.numel() == input.numel(),
            "all_to_all_single: out and input sizes differ in a world of 1"
        );
        out.view_as(input).copy_(input);
        Ok(Work::done("all_to_all_single"))
    }

    fn barrier(&self) -> Result<Work> {
        Ok(Work::done("barrier"))
    }

    fn all_to_all_rows(
        &self,
        input: &Tensor,
        out_splits: &[i64],
        in_splits: &[i64],
    ) -> Result<Tensor> {
        let rows = input.size().first().copied().unwrap_or(0);
        ensure!(
            out_splits == [rows] && in_splits == [rows],
            "all_to_all_rows: splits {out_splits:?} / {in_splits:?} in a world of 1 for {rows} rows"
        );
        Ok(input.shallow_clone())
    }
}
