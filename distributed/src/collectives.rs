//! The one collectives trait the learner programs against, its reduce ops and its async handle.
use anyhow::{Context, Result, bail, ensure};
use tch::Tensor;

/// How `all_reduce` / `reduce_scatter_tensor` combine the ranks' values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Elementwise sum.
    Sum,
    /// Elementwise mean over the ranks (floating tensors only).
    Avg,
    /// Elementwise maximum.
    Max,
    /// Elementwise minimum.
    Min,
}

impl ReduceOp {
    /// The code the shim understands (`reduce_op` in csrc/c10d.cpp).
    pub(crate) fn code(self) -> i32 {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Avg => 1,
            ReduceOp::Max => 2,
            ReduceOp::Min => 3,
        }
    }
}

/// Collectives over the ranks of one process group. Every call is asynchronous: it returns a [`Work`] whose
/// `wait` makes the result visible in the output tensor. Tensors must be contiguous, on the group's device,
/// and shaped as each method says; a violation is an error before anything is sent. Every rank must issue the
/// same collectives in the same order.
pub trait Collectives: Send + Sync {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world_size(&self) -> usize;
    /// Where this group's tensors must live (CPU for gloo and [`crate::Local`], the rank's GPU for NCCL).
    fn device(&self) -> tch::Device {
        tch::Device::Cpu
    }
    /// Reduces `t` across ranks in place.
    fn all_reduce(&self, t: &mut Tensor, op: ReduceOp) -> Result<Work>;
    /// Copies `root`'s `t` into every rank's `t`.
    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<Work>;
    /// `out` (`world_size` times `input`'s elements, rank-major along dim 0) receives every rank's `input`.
    fn all_gather_into_tensor(&self, out: &mut Tensor, input: &Tensor) -> Result<Work>;
    /// Reduces `input` (`world_size` equal chunks along dim 0) across ranks; rank r keeps chunk r in `out`.
    fn reduce_scatter_tensor(&self, out: &mut Tensor, input: &Tensor, op: ReduceOp)
    -> Result<Work>;
    /// Rank r sends `input`'s r-th dim-0 slice of `in_splits[r]` rows to rank r and receives `out_splits[s]`
    /// rows from each rank s into `out`. Empty splits mean equal splits.
    fn all_to_all_single(
        &self,
        out: &mut Tensor,
        input: &Tensor,
        out_splits: &[i64],
        in_splits: &[i64],
    ) -> Result<Work>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<Work>;
    /// [`Collectives::all_to_all_single`] of `input`'s rows into a new tensor (`out_splits` rows from each
    /// rank), as an autograd op: its backward sends the rows' gradients back the reverse way (expert
    /// parallelism's dispatch and combine). Done when it returns (gloo) or ordered on the current CUDA stream
    /// (NCCL). Every rank must call it, also when sending or receiving no rows.
    fn all_to_all_rows(
        &self,
        input: &Tensor,
        out_splits: &[i64],
        in_splits: &[i64],
    ) -> Result<Tensor>;
}

/// What finishes a collective: the c10d work (absent for work done at once) and a step to run after it, e.g.
/// the division of an average that the backend computes as a sum.
pub struct Work {
    pending: Option<Box<dyn FnOnce() -> Result<()> + Send>>,
    then: Option<Box<dyn FnOnce() -> Result<()> + Send>>,
    what: &'static str,
}

impl Work {
    /// Work already complete.
    pub fn done(what: &'static str) -> Self {
        Self {
            pending: None,
            then: None,
            what,
        }
    }

    /// Work completed by `wait`.
    pub(crate) fn pending(
        what: &'static str,
        wait: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> Self {
        Self {
            pending: Some(Box::new(wait)),
            then: None,
            what,
        }
    }

    /// Runs `f` after the work completes.
    pub(crate) fn then(mut self, f: impl FnOnce() -> Result<()> + Send + 'static) -> Self {
        self.then = Some(Box::new(f));
        self
    }

    /// Blocks until the collective is complete (or failed: a peer died, the timeout passed).
    pub fn wait(self) -> Result<()> {
        if let Some(w) = self.pending {
            w().with_context(|| format!("{} failed", self.what))?;
        }
        if let Some(f) = self.then {
            f()?;
        }
        Ok(())
    }
}

/// The checks every backend shares: contiguity and shapes, so that a mistake is a clear error here rather than a
/// C++ assertion (or a hang on the other ranks).
pub(crate) fn check_contiguous(what: &str, t: &Tensor) -> Result<()> {
    ensure!(
        t.is_contiguous(),
        "{what}: the tensor must be contiguous (call .contiguous() first)"
    );
    Ok(())
}

pub(crate) fn check_pair(what: &str, out: &Tensor, input: &Tensor) -> Result<()> {
    check_contiguous(what, out)?;
    check_contiguous(what, input)?;
    ensure!(
        out.kind() == input.kind() && out.device() == input.device(),
        "{what}: out is {:?} on {:?} but input is {:?} on {:?}",
        out.kind(),
        out.device(),
        input.kind(),
        input.device()
    );
    Ok(())
}

/// Checks the element counts of `all_gather_into_tensor` (big = out) and `reduce_scatter_tensor` (big = input).
pub(crate) fn check_ratio(what: &str, big: &Tensor, small: &Tensor, world: usize) -> Result<()> {
    let (b, s) = (big.numel(), small.numel());
    ensure!(
        b == s * world,
        "{what}: the larger tensor has {b} elements, expected world_size ({world}) x {s}"
    );
    Ok(())
}

/// Resolves `all_to_all_single`'s splits (empty: equal) and checks them against the tensors' dim 0.
pub(crate) fn check_splits(
    out: &Tensor,
    input: &Tensor,
    out_splits: &[i64],
    in_splits: &[i64],
    world: usize,
) -> Result<()> {
    for (name, t, s) in [("out", out, out_splits), ("input", input, in_splits)] {
        let rows = t.size().first().copied().unwrap_or(0);
        if s.is_empty() {
            ensure!(
                rows % world as i64 == 0,
                "all_to_all_single: {name} has {rows} rows, not divisible by world_size {world}"
            );
            continue;
        }
        ensure!(
            s.len() == world,
            "all_to_all_single: {} {name} splits for {world} ranks",
            s.len()
        );
        if s.iter().any(|&x| x < 0) {
            bail!("all_to_all_single: negative {name} split in {s:?}");
        }
        let sum: i64 = s.iter().sum();
        ensure!(
            sum == rows,
            "all_to_all_single: {name} splits {s:?} sum to {sum}, but {name} has {rows} rows"
        );
    }
    Ok(())
}

/// `all_to_all_rows`' splits: one per rank, none negative, the input's adding up to its `rows`.
pub(crate) fn check_row_splits(
    rows: i64,
    out_splits: &[i64],
    in_splits: &[i64],
    world: usize,
) -> Result<()> {
    for (name, s) in [("out", out_splits), ("input", in_splits)] {
        ensure!(
            s.len() == world,
            "all_to_all_rows: {} {name} splits for {world} ranks",
            s.len()
        );
        ensure!(
            s.iter().all(|&x| x >= 0),
            "all_to_all_rows: negative {name} split in {s:?}"
        );
    }
    let sum: i64 = in_splits.iter().sum();
    ensure!(
        sum == rows,
        "all_to_all_rows: input splits {in_splits:?} sum to {sum}, but the input has {rows} rows"
    );
    Ok(())
}
