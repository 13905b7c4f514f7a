//! Peak GPU memory of torch's caching allocator (`torch.cuda.max_memory_allocated` / `max_memory_reserved`),
//! through the libtorch shim; benchmarks report it next to their timings.

use anyhow::{Result, bail};
#[cfg(spar_cuda_graph)]
use std::ffi::{CStr, c_char};

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
        let mut err = [0 as c_char; 512];
        // SAFETY: plain out-parameters and an error buffer of the stated length; the shim catches exceptions.
        let rc = unsafe {
            spar_cuda_memory_now(
                device as i32,
                &mut f,
                &mut t,
                &mut a,
                &mut r,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            // SAFETY: the shim writes a NUL-terminated message into `err`.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
            bail!("reading the memory of CUDA device {device}: {msg}");
        }
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

/// Peak (allocated, reserved) bytes on CUDA device `device` since the last [`reset_peak_memory`].
pub fn peak_memory(device: usize) -> Result<(u64, u64)> {
    #[cfg(spar_cuda_graph)]
    {
        let (mut a, mut r) = (0i64, 0i64);
        let mut err = [0 as c_char; 512];
        // SAFETY: plain out-parameters and an error buffer of the stated length; the shim catches exceptions.
        let rc = unsafe {
            spar_cuda_peak_memory(device as i32, &mut a, &mut r, err.as_mut_ptr(), err.len())
        };
        if rc != 0 {
            // SAFETY: the shim writes a NUL-terminated message into `err`.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
            bail!("reading the CUDA memory statistics of device {device}: {msg}");
        }
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
        let mut err = [0 as c_char; 512];
        // SAFETY: an error buffer of the stated length; the shim catches exceptions.
        if unsafe { spar_cuda_reset_peak_memory(device as i32, err.as_mut_ptr(), err.len()) } != 0 {
            // SAFETY: the shim writes a NUL-terminated message into `err`.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
            bail!("resetting the CUDA memory statistics of device {device}: {msg}");
        }
        Ok(())
    }
    #[cfg(not(spar_cuda_graph))]
    {
        bail!("CUDA memory statistics of device {device}: this build has no libtorch CUDA shim")
    }
}
