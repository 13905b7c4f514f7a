//! The PyTorch profiler (Kineto) over tch: what `torch.profiler.profile` and `record_function` do in Python.
//!
//! tch binds neither, so this goes through the libtorch shim `csrc/torch_profiler.cpp`. A [`Recording`] records
//! every aten op its thread issues (and, with `cuda`, the kernels, memcpys and CUDA runtime calls they cause,
//! through CUPTI) until [`Recording::finish`] writes the Chrome trace JSON torch's `export_chrome_trace`
//! writes: open it in Perfetto (ui.perfetto.dev) or chrome://tracing. [`range`] opens a named span (a
//! `user_annotation` in the trace) around a phase of the caller's, e.g. the engine's prefill; it costs one
//! atomic load when nothing records.
//!
//! The profiler is thread-local in torch: ops of other threads are not recorded. One recording at a time per
//! process (Kineto's CUDA tracing is process-wide).

use anyhow::{Result, bail};
#[cfg(spar_torch_ops)]
use std::ffi::c_char;
use std::ffi::{CString, c_void};
use std::marker::PhantomData;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(spar_torch_ops)]
unsafe extern "C" {
    fn spar_profiler_start(
        cuda: i32,
        record_shapes: i32,
        profile_memory: i32,
        with_stack: i32,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn spar_profiler_stop(path: *const c_char, err: *mut c_char, len: usize) -> i32;
    fn spar_profiler_range_enter(name: *const c_char) -> *mut c_void;
    fn spar_profiler_range_exit(range: *mut c_void);
}

/// Whether this build carries the profiler shim (it needs libtorch's C++ headers at build time).
pub fn available() -> bool {
    cfg!(spar_torch_ops)
}

/// What a recording collects (the arguments of `torch.profiler.profile` of the same names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileOptions {
    /// CUDA kernels, memcpys and runtime calls (`cudaMalloc`, synchronisations) besides the host ops.
    pub cuda: bool,
    /// Each op's input shapes.
    pub record_shapes: bool,
    /// The caching allocator's allocations and frees.
    pub profile_memory: bool,
    /// The C++ call stack of each op.
    pub with_stack: bool,
}

/// Whether a [`Recording`] is running in this process: [`range`] is a no-op otherwise.
static RECORDING: AtomicBool = AtomicBool::new(false);

/// A running profiler on the thread that started it. Dropped without [`Recording::finish`], it stops and drops
/// what it recorded.
pub struct Recording {
    /// Torch's profiler state is the starting thread's: stop it there.
    _thread_bound: PhantomData<*const ()>,
}

impl Recording {
    /// Starts recording this thread's torch work.
    pub fn start(options: ProfileOptions) -> Result<Recording> {
        if !available() {
            bail!(
                "this spar was built without libtorch's C++ headers, so it has no profiler (rebuild with the \
                 torch wheel's include/ folder present)"
            );
        }
        if RECORDING.swap(true, Ordering::SeqCst) {
            bail!("a torch profiler is already recording in this process (one at a time)");
        }
        #[cfg(not(spar_torch_ops))]
        let _ = options;
        #[cfg(spar_torch_ops)]
        {
            let flag = |b: bool| b as i32;
            let started = crate::cuda_graph::call_shim(
                format_args!("starting the torch profiler"),
                |e, l| {
                    // SAFETY: the shim catches every C++ exception and writes at most `l` bytes to `e`.
                    unsafe {
                        spar_profiler_start(
                            flag(options.cuda),
                            flag(options.record_shapes),
                            flag(options.profile_memory),
                            flag(options.with_stack),
                            e,
                            l,
                        )
                    }
                },
            );
            if let Err(e) = started {
                RECORDING.store(false, Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(Recording {
            _thread_bound: PhantomData,
        })
    }

    /// Stops recording and writes the Chrome trace JSON to `trace` (its folder must exist).
    pub fn finish(self, trace: &Path) -> Result<()> {
        let path = CString::new(trace.to_string_lossy().as_bytes())?;
        let out = self.stop(Some(&path));
        std::mem::forget(self);
        out
    }

    fn stop(&self, path: Option<&CString>) -> Result<()> {
        let out = {
            #[cfg(spar_torch_ops)]
            {
                let p = path.map_or(std::ptr::null(), |p| p.as_ptr());
                crate::cuda_graph::call_shim(format_args!("stopping the torch profiler"), |e, l| {
                    // SAFETY: `p` is null or a NUL-terminated path that outlives the call; see above.
                    unsafe { spar_profiler_stop(p, e, l) }
                })
            }
            #[cfg(not(spar_torch_ops))]
            {
                let _ = path;
                Ok(())
            }
        };
        RECORDING.store(false, Ordering::SeqCst);
        out
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Err(e) = self.stop(None) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// A named span in the trace, open until dropped (drop it on the thread that opened it).
#[must_use = "the span closes when this is dropped"]
pub struct Range {
    #[cfg_attr(not(spar_torch_ops), allow(dead_code))]
    ptr: *mut c_void,
}

/// Opens a span `name` in the running recording (a `user_annotation` event); nothing when none records.
pub fn range(name: &str) -> Range {
    if !RECORDING.load(Ordering::Relaxed) {
        return Range {
            ptr: std::ptr::null_mut(),
        };
    }
    #[cfg(spar_torch_ops)]
    {
        let Ok(name) = CString::new(name) else {
            return Range {
                ptr: std::ptr::null_mut(),
            };
        };
        // SAFETY: the shim copies the name and returns null when no profiler would record the span.
        Range {
            ptr: unsafe { spar_profiler_range_enter(name.as_ptr()) },
        }
    }
    #[cfg(not(spar_torch_ops))]
    {
        let _ = name;
        Range {
            ptr: std::ptr::null_mut(),
        }
    }
}

impl Drop for Range {
    fn drop(&mut self) {
        #[cfg(spar_torch_ops)]
        if !self.ptr.is_null() {
            // SAFETY: a span the shim opened, closed once.
            unsafe { spar_profiler_range_exit(self.ptr) };
        }
    }
}
