//! A c10d process group (ProcessGroupGloo on CPU, ProcessGroupNCCL on GPU) behind [`Collectives`].
use crate::collectives::{
    Collectives, ReduceOp, Work, check_contiguous, check_pair, check_ratio, check_row_splits,
    check_splits,
};
use crate::ffi;
use crate::store::Store;
use anyhow::{Result, ensure};
use std::ffi::{CString, c_void};
use std::sync::Arc;
use std::time::Duration;
use tch::Tensor;

/// Which c10d backend carries the collectives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// ProcessGroupGloo: CPU tensors. `interface` (GLOO_SOCKET_IFNAME) or `host` picks the address it binds;
    /// neither: the machine's hostname (loopback when it does not resolve).
    Gloo {
        interface: Option<String>,
        host: Option<String>,
    },
    /// ProcessGroupNCCL on CUDA device `device` (one GPU per rank, usually LOCAL_RANK).
    Nccl { device: usize },
}

/// Whether ProcessGroupNCCL was compiled into this build (see build.rs).
pub fn nccl_compiled() -> bool {
    unsafe { ffi::spar_nccl_compiled() != 0 }
}

struct Raw(*mut c_void);
// c10d backends are thread-safe: collectives are queued and run by the backend's own threads / streams.
unsafe impl Send for Raw {}
unsafe impl Sync for Raw {}
impl Drop for Raw {
    fn drop(&mut self) {
        unsafe { ffi::spar_pg_free(self.0) }
    }
}

struct RawWork(*mut c_void);
unsafe impl Send for RawWork {}
impl Drop for RawWork {
    fn drop(&mut self) {
        unsafe { ffi::spar_work_free(self.0) }
    }
}

/// One process group over all ranks.
pub struct ProcessGroup {
    raw: Arc<Raw>,
    rank: usize,
    world: usize,
    timeout: Duration,
    native_avg: bool,
    /// NCCL: a wait orders the current CUDA stream instead of blocking the host (see `work`).
    stream_wait: bool,
    device: tch::Device,
}

impl ProcessGroup {
    /// Creates the group: every rank must call this with the same store, world size and backend. Blocks until
    /// all ranks have connected or `timeout` passes; `timeout` also bounds each collective's wait.
    pub fn new(
        store: &Store,
        rank: usize,
        world: usize,
        backend: &Backend,
        timeout: Duration,
    ) -> Result<Self> {
        ensure!(
            world >= 1 && rank < world,
            "rank {rank} is outside world size {world}"
        );
        let t = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let (r, w) = (rank as i32, world as i32);
        let raw = match backend {
            Backend::Gloo { interface, host } => {
                let i = CString::new(interface.clone().unwrap_or_default())?;
                let h = CString::new(host.clone().unwrap_or_default())?;
                ffi::object(
                    &format!("ProcessGroupGloo (rank {rank} of {world})"),
                    |e, l| unsafe {
                        ffi::spar_pg_gloo_new(store.raw(), r, w, t, i.as_ptr(), h.as_ptr(), e, l)
                    },
                )?
            }
            Backend::Nccl { device } => {
                let d = *device as i32;
                ffi::object(
                    &format!("ProcessGroupNCCL (rank {rank} of {world})"),
                    |e, l| unsafe { ffi::spar_pg_nccl_new(store.raw(), r, w, t, d, e, l) },
                )?
            }
        };
        let native_avg = matches!(backend, Backend::Nccl { .. });
        let device = match backend {
            Backend::Nccl { device } => tch::Device::Cuda(*device),
            Backend::Gloo { .. } => tch::Device::Cpu,
        };
        Ok(Self {
            raw: Arc::new(Raw(raw)),
            rank,
            world,
            timeout,
            native_avg,
            stream_wait: matches!(backend, Backend::Nccl { .. }),
            device,
        })
    }

    fn work(
        &self,
        what: &'static str,
        f: impl FnOnce(*mut c_void, *mut std::ffi::c_char, usize) -> *mut c_void,
    ) -> Result<Work> {
        let g = self.raw.0;
        let w = RawWork(ffi::object(what, |e, l| f(g, e, l))?);
        // Gloo: wait on this thread with the group's timeout. NCCL: 0, the wait orders the current CUDA stream
        // after the collective without blocking the host (results read on the host, e.g. a loss copied to the
        // CPU, still wait for it); the group's timeout is then NCCL's watchdog's (set at creation).
        let t = if self.stream_wait {
            0
        } else {
            i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX)
        };
        // The group must outlive its work: the closure holds it.
        let group = self.raw.clone();
        Ok(Work::pending(what, move || {
            let (_keep, work) = (group, w);
            ffi::status("wait", |e, l| unsafe {
                ffi::spar_work_wait(work.0, t, e, l)
            })
        }))
    }
}

impl Collectives for ProcessGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn device(&self) -> tch::Device {
        self.device
    }

    fn all_reduce(&self, t: &mut Tensor, op: ReduceOp) -> Result<Work> {
        check_contiguous("all_reduce", t)?;
        // Gloo has no AVG: sum, then divide once the sum is there.
        let (code, divide) = match op {
            ReduceOp::Avg if !self.native_avg => {
                ensure!(
                    t.is_floating_point(),
                    "all_reduce(Avg) needs a floating tensor, got {:?}",
                    t.kind()
                );
                (ReduceOp::Sum.code(), true)
            }
            _ => (op.code(), false),
        };
        let p = ffi::raw(t);
        let work = self.work("all_reduce", |g, e, l| unsafe {
            ffi::spar_pg_all_reduce(g, p, code, e, l)
        })?;
        if !divide {
            return Ok(work);
        }
        let (mut view, n) = (t.shallow_clone(), self.world as f64);
        Ok(work.then(move || {
            let _ = view.g_div_scalar_(n);
            Ok(())
        }))
    }

    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<Work> {
        check_contiguous("broadcast", t)?;
        ensure!(
            root < self.world,
            "broadcast: root {root} is outside world size {}",
            self.world
        );
        let p = ffi::raw(t);
        self.work("broadcast", |g, e, l| unsafe {
            ffi::spar_pg_broadcast(g, p, root as i32, e, l)
        })
    }

    fn all_gather_into_tensor(&self, out: &mut Tensor, input: &Tensor) -> Result<Work> {
        check_pair("all_gather_into_tensor", out, input)?;
        check_ratio("all_gather_into_tensor", out, input, self.world)?;
        let (o, i) = (ffi::raw(out), ffi::raw(input));
        self.work("all_gather_into_tensor", |g, e, l| unsafe {
            ffi::spar_pg_all_gather_into(g, o, i, e, l)
        })
    }

    fn reduce_scatter_tensor(
        &self,
        out: &mut Tensor,
        input: &Tensor,
        op: ReduceOp,
    ) -> Result<Work> {
        check_pair("reduce_scatter_tensor", out, input)?;
        check_ratio("reduce_scatter_tensor", input, out, self.world)?;
        let (code, divide) = match op {
            ReduceOp::Avg if !self.native_avg => {
                ensure!(
                    out.is_floating_point(),
                    "reduce_scatter_tensor(Avg) needs a floating tensor"
                );
                (ReduceOp::Sum.code(), true)
            }
            _ => (op.code(), false),
        };
        let (o, i) = (ffi::raw(out), ffi::raw(input));
        let work = self.work("reduce_scatter_tensor", |g, e, l| unsafe {
            ffi::spar_pg_reduce_scatter(g, o, i, code, e, l)
        })?;
        if !divide {
            return Ok(work);
        }
        let (mut view, n) = (out.shallow_clone(), self.world as f64);
        Ok(work.then(move || {
            let _ = view.g_div_scalar_(n);
            Ok(())
        }))
    }

    fn all_to_all_single(
        &self,
        out: &mut Tensor,
        input: &Tensor,
        out_splits: &[i64],
        in_splits: &[i64],
    ) -> Result<Work> {
        check_pair("all_to_all_single", out, input)?;
        check_splits(out, input, out_splits, in_splits, self.world)?;
        let (o, i) = (ffi::raw(out), ffi::raw(input));
        self.work("all_to_all_single", |g, e, l| unsafe {
            ffi::spar_pg_all_to_all_single(
                g,
                o,
                i,
                out_splits.as_ptr(),
                out_splits.len(),
                in_splits.as_ptr(),
                in_splits.len(),
                e,
                l,
            )
        })
    }

    fn all_to_all_rows(
        &self,
        input: &Tensor,
        out_splits: &[i64],
        in_splits: &[i64],
    ) -> Result<Tensor> {
        ensure!(
            !input.size().is_empty(),
            "all_to_all_rows: a scalar has no rows"
        );
        if input.device() != self.device {
            // A GPU model over gloo (two ranks sharing one GPU): the rows go through the group's device. The
            // copies are autograd ops, so the backward's gradients come back the same way.
            let staged = input.f_to_device(self.device)?;
            let out = self.all_to_all_rows(&staged, out_splits, in_splits)?;
            return Ok(out.f_to_device(input.device())?);
        }
        check_row_splits(input.size()[0], out_splits, in_splits, self.world)?;
        let (g, i) = (self.raw.0, ffi::raw(input));
        let out = ffi::object("all_to_all_rows", |e, l| unsafe {
            ffi::spar_pg_all_to_all_autograd(
                g,
                i,
                out_splits.as_ptr(),
                out_splits.len(),
                in_splits.as_ptr(),
                in_splits.len(),
                e,
                l,
            )
        })?;
        Ok(unsafe { Tensor::from_ptr(out as *mut _) })
    }

    fn barrier(&self) -> Result<Work> {
        self.work("barrier", |g, e, l| unsafe {
            ffi::spar_pg_barrier(g, e, l)
        })
    }
}
