//! CUDA graphs over tch: capture the torch work of a closure once, replay it with one launch.
//!
//! tch binds neither CUDA graphs nor streams, so this goes through a small C++ shim (`csrc/cuda_graph.cpp`)
//! over libtorch's `at::cuda::CUDAGraph`. [`CudaGraph::capture`] runs a closure of ordinary tch calls on a
//! side stream while the graph records them (capture is illegal on the legacy default stream tch uses); the
//! tensors the closure returns live in the graph's private memory pool, so they are the graph's outputs and
//! hold fresh values after every [`CudaGraph::replay`]. Inputs are tensors allocated before capture and
//! overwritten in place (`copy_`) before each replay.
//!
//! Rules for a closure: no host synchronisation (`.to_device(Cpu)`, `int64_value`, `nonzero`, ...), no
//! host-to-device copies from pageable host memory, and only shapes that do not depend on tensor values. An op
//! torch refuses during capture (its checks, e.g. that pageable copy) is just an error. A host synchronisation
//! instead invalidates the capture, and torch 2.11 then leaves its CUDA random generator in capture mode (later
//! random ops on that device fail): never synchronise in a body. Capture runs in thread-local mode, so other
//! threads may keep using CUDA meanwhile, except torch's CUDA random generator, which a capture claims. The
//! NVRTC kernels of [`crate::cuda`] launch on torch's current stream ([`current_stream`]), so they are
//! captured like torch's own.

use anyhow::{Result, bail};
use std::ffi::{CStr, c_char, c_void};

#[cfg(spar_cuda_graph)]
unsafe extern "C" {
    fn spar_cuda_graph_new(err: *mut c_char, len: usize) -> *mut c_void;
    fn spar_cuda_graph_drop(g: *mut c_void);
    fn spar_cuda_side_stream_enter(device: i32, err: *mut c_char, len: usize) -> i32;
    fn spar_cuda_side_stream_leave(device: i32, err: *mut c_char, len: usize) -> i32;
    fn spar_cuda_graph_capture_begin(
        g: *mut c_void,
        device: i32,
        pool_a: u64,
        pool_b: u64,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn spar_cuda_graph_pool(
        g: *mut c_void,
        a: *mut u64,
        b: *mut u64,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn spar_cuda_graph_capture_end(g: *mut c_void, err: *mut c_char, len: usize) -> i32;
    fn spar_cuda_graph_replay(g: *mut c_void, err: *mut c_char, len: usize) -> i32;
    fn spar_cuda_current_stream(device: i32) -> *mut c_void;
    fn spar_cuda_event_record(device: i32, err: *mut c_char, len: usize) -> *mut c_void;
    fn spar_cuda_event_synchronize(ev: *mut c_void, err: *mut c_char, len: usize) -> i32;
    fn spar_cuda_event_drop(ev: *mut c_void);
}

/// The raw `cudaStream_t` torch currently issues work on for `device` (null: the legacy default stream), or
/// None in a build without the shim. Kernels launched outside torch go there to be ordered with torch's work
/// and recorded by a capture in progress.
pub fn current_stream(device: usize) -> Option<*mut c_void> {
    #[cfg(spar_cuda_graph)]
    {
        // SAFETY: reads torch's thread-local current stream; never throws across the boundary.
        Some(unsafe { spar_cuda_current_stream(device as i32) })
    }
    #[cfg(not(spar_cuda_graph))]
    {
        let _ = device;
        None
    }
}

/// Whether this build carries the CUDA-graph shim (it needs libtorch's CUDA headers at build time). A CUDA
/// device must also be present for graphs to run.
pub fn available() -> bool {
    cfg!(spar_cuda_graph)
}

/// Calls a shim function with an error buffer; a non-zero return becomes an error with its message.
#[cfg_attr(not(spar_cuda_graph), allow(dead_code))]
fn checked(what: &str, f: impl FnOnce(*mut c_char, usize) -> i32) -> Result<()> {
    call_shim(format_args!("CUDA graph {what}"), f)
}

/// Calls a function of the libtorch shim with an error buffer; a non-zero return becomes the error
/// "`context`: the shim's message". Every shim call that reports errors goes through here.
#[cfg_attr(not(any(spar_cuda_graph, spar_torch_ops)), allow(dead_code))]
pub(crate) fn call_shim(
    context: std::fmt::Arguments<'_>,
    f: impl FnOnce(*mut c_char, usize) -> i32,
) -> Result<()> {
    let mut buf = vec![0 as c_char; 2048];
    if f(buf.as_mut_ptr(), buf.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the shim always NUL-terminates inside the buffer it was given.
    let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    bail!("{context}: {msg}")
}

/// A captured CUDA graph (see the module documentation). Not `Send`: replay it on the thread that made it.
pub struct CudaGraph {
    ptr: *mut c_void,
}

/// A graph memory pool that several graphs share (their temporaries overlap: replay them one at a time, and
/// copy outputs that must outlive the next replay of any of them into tensors allocated outside the pool).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphPool(u64, u64);

impl CudaGraph {
    /// Captures the torch work `body` issues on CUDA device `device` and returns the graph with `body`'s
    /// result (typically the output tensors, valid across replays). The capture itself does not run the
    /// work: call [`CudaGraph::replay`] to execute it. If `body` or the capture fails, the stream is restored
    /// and the error returned.
    /// `pool`: share the memory pool of an earlier graph (see [`CudaGraph::pool`]); None gives this graph its own.
    pub fn capture<T>(
        device: usize,
        pool: Option<GraphPool>,
        body: impl FnOnce() -> Result<T>,
    ) -> Result<(CudaGraph, T)> {
        #[cfg(spar_cuda_graph)]
        {
            let mut buf = vec![0 as c_char; 2048];
            // SAFETY: plain constructor; null means it threw, with the message in `buf`.
            let ptr = unsafe { spar_cuda_graph_new(buf.as_mut_ptr(), buf.len()) };
            if ptr.is_null() {
                let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
                bail!("CUDA graph create: {msg}");
            }
            let graph = CudaGraph { ptr };
            let GraphPool(a, b) = pool.unwrap_or_default();
            checked("capture_begin", |e, l| unsafe {
                spar_cuda_graph_capture_begin(ptr, device as i32, a, b, e, l)
            })?;
            // A panicking body must still end the capture, or the stream stays unusable.
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
            let end = checked("capture_end", |e, l| unsafe {
                spar_cuda_graph_capture_end(ptr, e, l)
            });
            let out = match out {
                Ok(o) => o,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            let out = match (out, end) {
                (Ok(o), Ok(())) => o,
                (Err(e), _) => return Err(e.context("while capturing a CUDA graph")),
                (Ok(_), Err(e)) => return Err(e),
            };
            Ok((graph, out))
        }
        #[cfg(not(spar_cuda_graph))]
        {
            let _ = (device, pool, body);
            bail!(
                "this build has no CUDA-graph support (libtorch CUDA headers were missing at build time)"
            )
        }
    }

    /// The memory pool this graph allocated from, to share with later captures.
    pub fn pool(&self) -> Result<GraphPool> {
        #[cfg(spar_cuda_graph)]
        {
            let (mut a, mut b) = (0u64, 0u64);
            checked("pool", |e, l| unsafe {
                spar_cuda_graph_pool(self.ptr, &mut a, &mut b, e, l)
            })?;
            Ok(GraphPool(a, b))
        }
        #[cfg(not(spar_cuda_graph))]
        bail!("this build has no CUDA-graph support")
    }

    /// Runs the captured work on the current (default) stream, after everything queued before it.
    pub fn replay(&self) -> Result<()> {
        #[cfg(spar_cuda_graph)]
        {
            checked("replay", |e, l| unsafe {
                spar_cuda_graph_replay(self.ptr, e, l)
            })
        }
        #[cfg(not(spar_cuda_graph))]
        bail!("this build has no CUDA-graph support")
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        #[cfg(spar_cuda_graph)]
        // SAFETY: `ptr` came from spar_cuda_graph_new and is dropped once.
        unsafe {
            spar_cuda_graph_drop(self.ptr)
        }
    }
}

/// A fence in torch's current stream: [`CudaEvent::record`] marks the work queued so far, and
/// [`CudaEvent::synchronize`] waits for that work only, not for what was queued after the mark (a stream
/// synchronisation, which torch runs for every blocking device-to-host copy, waits for both). Not `Send`.
pub struct CudaEvent {
    ptr: *mut c_void,
}

impl CudaEvent {
    /// Records an event on torch's current stream of CUDA device `device`.
    pub fn record(device: usize) -> Result<CudaEvent> {
        #[cfg(spar_cuda_graph)]
        {
            let mut buf = vec![0 as c_char; 2048];
            // SAFETY: null means it threw, with the message in `buf`.
            let ptr = unsafe { spar_cuda_event_record(device as i32, buf.as_mut_ptr(), buf.len()) };
            if ptr.is_null() {
                let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
                bail!("CUDA event record: {msg}");
            }
            Ok(CudaEvent { ptr })
        }
        #[cfg(not(spar_cuda_graph))]
        {
            let _ = device;
            bail!("this build has no CUDA-graph support (no CUDA events)")
        }
    }

    /// Blocks the host until the work queued before the event has run.
    pub fn synchronize(&self) -> Result<()> {
        #[cfg(spar_cuda_graph)]
        {
            checked("event synchronize", |e, l| unsafe {
                spar_cuda_event_synchronize(self.ptr, e, l)
            })
        }
        #[cfg(not(spar_cuda_graph))]
        bail!("this build has no CUDA-graph support")
    }
}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        #[cfg(spar_cuda_graph)]
        // SAFETY: `ptr` came from spar_cuda_event_record and is dropped once.
        unsafe {
            spar_cuda_event_drop(self.ptr)
        }
    }
}

/// Runs `body` with this thread's torch work on a side stream of `device` (synchronised before and after).
/// Used to warm up what a capture will record: cuBLAS workspaces and lazily initialised kernels must exist
/// before capture, and creating them on the default stream does not make them for the capture stream.
pub fn on_side_stream<T>(device: usize, body: impl FnOnce() -> Result<T>) -> Result<T> {
    #[cfg(spar_cuda_graph)]
    {
        checked("side stream", |e, l| unsafe {
            spar_cuda_side_stream_enter(device as i32, e, l)
        })?;
        let out = body();
        checked("side stream", |e, l| unsafe {
            spar_cuda_side_stream_leave(device as i32, e, l)
        })?;
        out
    }
    #[cfg(not(spar_cuda_graph))]
    {
        let _ = device;
        body()
    }
}
