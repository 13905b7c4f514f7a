//! Peak GPU memory of torch's caching allocator (`torch.cuda.max_memory_allocated` / `max_memory_reserved`),
//! through the libtorch shim; benchmarks report it next to their timings.

#[cfg(spar_cuda_graph)]
use crate::cuda_graph::call_shim;
use anyhow::Result;
#[cfg(not(spar_cuda_graph))]
use anyhow::bail;
#[cfg(spar_cuda_graph)]
use std::ffi::c_char;

#[cfg(spar_cuda_graph)]
unsafe extern "C" {
    fn spar_cuda_peak_memory(
        device: i32,
        allocated: *mut i64,
        reserved: *mut i64,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn spar_cuda_reset_peak_memory(device: i32, err: *mut c_char, len: usize) -> i32;
    fn spar_cuda_empty_cache(err: *mut c_char, len: usize) -> i32;
    fn spar_cuda_allocator_events(
        device: i32,
        retries: *mut i64,
        mallocs: *mut i64,
        frees: *mut i64,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn spar_cuda_memory_now(
        device: i32,
        free: *mut i64,
        total: *mut i64,
        allocated: *mut i64,
        reserved: *mut i64,
        err: *mut c_char,
        len: usize,
    ) -> i32;
}

/// A CUDA device's memory now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Free and total bytes as the driver sees them (`torch.cuda.mem_get_info`).
    pub free: u64,
    pub total: u64,
    /// Bytes torch's caching allocator has allocated and reserved (`memory_allocated` / `memory_reserved`):
    /// `reserved - allocated` is cached, free for torch to hand out again but not free to the driver.
    pub allocated: u64,
    pub reserved: u64,
}

impl DeviceMemory {
    /// Bytes a new torch allocation can take now: the driver's free memory and torch's cache.
    pub fn available(&self) -> u64 {
        self.free + self.reserved.saturating_sub(self.allocated)
    }
}

/// The memory of CUDA device `device` now (see [`DeviceMemory`]).
pub fn memory_now(device: usize) -> Result<DeviceMemory> {
    #[cfg(spar_cuda_graph)]
    {
        let (mut f, mut t, mut a, mut r) = (0i64, 0i64, 0i64, 0i64);
        call_shim(
            format_args!("reading the memory of CUDA device {device}"),
            // SAFETY: plain out-parameters and an error buffer of the stated length; the shim catches exceptions.
            |err, len| unsafe {
                spar_cuda_memory_now(device as i32, &mut f, &mut t, &mut a, &mut r, err, len)
            },
        )?;
        Ok(DeviceMemory {
            free: f as u64,
            total: t as u64,
            allocated: a as u64,
            reserved: r as u64,
        })
    }
    #[cfg(not(spar_cuda_graph))]
    {
        bail!("the memory of CUDA device {device}: this build has no libtorch CUDA shim")
    }
}

/// Counts of torch's caching-allocator events on a CUDA device since the process started
/// (`torch.cuda.memory_stats()`'s `num_alloc_retries`, `num_device_alloc`, `num_device_free`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocatorEvents {
    /// Allocations that failed, freed the allocator's whole cache (synchronizing the device) and tried again.
    pub retries: u64,
    /// `cudaMalloc` calls (the cache had no block to hand out).
    pub mallocs: u64,
    /// `cudaFree` calls.
    pub frees: u64,
}

impl AllocatorEvents {
    /// The events between `earlier` and `self`.
    pub fn since(&self, earlier: &AllocatorEvents) -> AllocatorEvents {
        AllocatorEvents {
            retries: self.retries.saturating_sub(earlier.retries),
            mallocs: self.mallocs.saturating_sub(earlier.mallocs),
            frees: self.frees.saturating_sub(earlier.frees),
        }
    }
}

/// The caching allocator's events on CUDA device `device` so far (see [`AllocatorEvents`]).
pub fn allocator_events(device: usize) -> Result<AllocatorEvents> {
    #[cfg(spar_cuda_graph)]
    {
        let (mut r, mut m, mut f) = (0i64, 0i64, 0i64);
        call_shim(
            format_args!("reading the allocator statistics of CUDA device {device}"),
            // SAFETY: plain out-parameters and an error buffer of the stated length; the shim catches exceptions.
            |err, len| unsafe {
                spar_cuda_allocator_events(device as i32, &mut r, &mut m, &mut f, err, len)
            },
        )?;
        Ok(AllocatorEvents {
            retries: r as u64,
            mallocs: m as u64,
            frees: f as u64,
        })
    }
    #[cfg(not(spar_cuda_graph))]
    {
        bail!("allocator statistics of CUDA device {device}: this build has no libtorch CUDA shim")
    }
}

/// Peak (allocated, reserved) bytes on CUDA device `device` since the last [`reset_peak_memory`].
pub fn peak_memory(device: usize) -> Result<(u64, u64)> {
    #[cfg(spar_cuda_graph)]
    {
        let (mut a, mut r) = (0i64, 0i64);
        call_shim(
            format_args!("reading the CUDA memory statistics of device {device}"),
            // SAFETY: plain out-parameters and an error buffer of the stated length; the shim catches exceptions.
            |err, len| unsafe { spar_cuda_peak_memory(device as i32, &mut a, &mut r, err, len) },
        )?;
        Ok((a as u64, r as u64))
    }
    #[cfg(not(spar_cuda_graph))]
    {
        bail!("CUDA memory statistics of device {device}: this build has no libtorch CUDA shim")
    }
}

/// Starts a new peak for [`peak_memory`] on `device`.
pub fn reset_peak_memory(device: usize) -> Result<()> {
    #[cfg(spar_cuda_graph)]
    {
        call_shim(
            format_args!("resetting the CUDA memory statistics of device {device}"),
            // SAFETY: an error buffer of the stated length; the shim catches exceptions.
            |err, len| unsafe { spar_cuda_reset_peak_memory(device as i32, err, len) },
        )
    }
    #[cfg(not(spar_cuda_graph))]
    {
        bail!("CUDA memory statistics of device {device}: this build has no libtorch CUDA shim")
    }
}

/// Returns the CUDA caching allocator's free blocks to the devices (torch's `torch.cuda.empty_cache()`). Blocks of
/// destroyed CUDA graphs' private pools are among them: they serve no other allocation, and a malloc that fails
/// during a capture cannot free them, so each round's new graphs would otherwise take fresh device memory until
/// a capture runs out of it (seen on an H100 after ~50 rounds, 2026-12-06).
pub fn empty_cache() -> Result<()> {
    #[cfg(spar_cuda_graph)]
    {
        call_shim(
            format_args!("emptying the CUDA caching allocator"),
            // SAFETY: an error buffer of the stated length; the shim catches exceptions.
            |err, len| unsafe { spar_cuda_empty_cache(err, len) },
        )
    }
    #[cfg(not(spar_cuda_graph))]
    {
        bail!("emptying the CUDA caching allocator: this build has no libtorch CUDA shim")
    }
}
