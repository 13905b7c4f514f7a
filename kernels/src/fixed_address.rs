//! Device memory at a fixed virtual address whose physical pages can go back to the driver and come again (CUDA
//! virtual memory management, as vLLM's sleep mode does with its `CuMemAllocator`).
//!
//! A CUDA graph bakes the addresses of the buffers it touches into its kernels' arguments. The rollout engine's
//! KV cache is tens of GB that the learner needs between rounds, so it cannot simply stay allocated, and a new
//! allocation lands elsewhere, which used to mean recapturing every graph each round. A [`FixedAddressRange`]
//! reserves the addresses once; [`FixedAddressRange::map`] backs them with fresh physical memory for a round and
//! the returned [`Backing`] gives that memory back to the driver when dropped. Graphs captured over the range
//! stay valid as long as they only replay while it is mapped.

use anyhow::{Result, anyhow, bail};
use cudarc::driver::{CudaContext, sys};
use std::sync::{Arc, Mutex};

/// A reserved range of device virtual addresses on one GPU, mapped to physical memory at most once at a time.
pub struct FixedAddressRange {
    ctx: Arc<CudaContext>,
    ordinal: usize,
    base: sys::CUdeviceptr,
    bytes: usize,
    /// Whether a [`Backing`] maps the range now.
    mapped: Mutex<bool>,
}

/// Physical memory mapped at a [`FixedAddressRange`]'s addresses; unmapped and given back to the driver on drop
/// (after the device finishes what it has queued: a kernel may still read it).
pub struct Backing {
    range: Arc<FixedAddressRange>,
    handle: sys::CUmemGenericAllocationHandle,
}

fn check(rc: sys::CUresult, what: &str) -> Result<()> {
    if rc == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(anyhow!("{what}: {rc:?}"))
    }
}

fn device_location(ordinal: usize) -> sys::CUmemLocation {
    sys::CUmemLocation {
        type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
        id: ordinal as i32,
    }
}

fn pinned_on(ordinal: usize) -> sys::CUmemAllocationProp {
    // SAFETY: a plain C struct; all-zero is its documented default (no handle types, no flags).
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location = device_location(ordinal);
    prop
}

impl FixedAddressRange {
    /// Reserves at least `bytes` of addresses on CUDA device `ordinal` (rounded up to the driver's
    /// allocation granularity, 2 MiB on current GPUs). Nothing is allocated yet. Errors where the driver
    /// lacks virtual memory management.
    pub fn reserve(ordinal: usize, bytes: usize) -> Result<Arc<Self>> {
        if bytes == 0 {
            bail!("a fixed address range needs at least one byte");
        }
        let ctx =
            CudaContext::new(ordinal).map_err(|e| anyhow!("CUDA context {ordinal}: {e:?}"))?;
        ctx.bind_to_thread()
            .map_err(|e| anyhow!("binding the CUDA context: {e:?}"))?;
        let prop = pinned_on(ordinal);
        let mut granularity = 0usize;
        // SAFETY: valid out-pointer and property struct.
        check(
            unsafe {
                sys::cuMemGetAllocationGranularity(
                    &mut granularity,
                    &prop,
                    sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_RECOMMENDED,
                )
            },
            "cuMemGetAllocationGranularity",
        )?;
        let granularity = granularity.max(1);
        let bytes = bytes.div_ceil(granularity) * granularity;
        let mut base: sys::CUdeviceptr = 0;
        // SAFETY: valid out-pointer; no fixed address asked for.
        check(
            unsafe { sys::cuMemAddressReserve(&mut base, bytes, granularity, 0, 0) },
            "cuMemAddressReserve",
        )?;
        Ok(Arc::new(FixedAddressRange {
            ctx,
            ordinal,
            base,
            bytes,
            mapped: Mutex::new(false),
        }))
    }

    /// The first address of the range.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Its size in bytes (a whole number of the allocation granularity).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The CUDA device it lives on.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Whether a [`Backing`] maps it now.
    pub fn is_mapped(&self) -> bool {
        self.mapped.lock().map(|m| *m).unwrap_or(true)
    }

    /// Backs the whole range with new physical memory (contents undefined), readable and writable by its
    /// device. When the driver is short of memory, torch's caching allocator gives back what it holds unused
    /// and the allocation is tried once more. Errors when the range is mapped already.
    pub fn map(self: &Arc<Self>) -> Result<Backing> {
        let mut mapped = self
            .mapped
            .lock()
            .map_err(|_| anyhow!("fixed address range lock poisoned"))?;
        if *mapped {
            bail!(
                "the fixed address range at {:#x} is mapped already",
                self.base
            );
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("binding the CUDA context: {e:?}"))?;
        let prop = pinned_on(self.ordinal);
        let mut handle: sys::CUmemGenericAllocationHandle = 0;
        // SAFETY: valid out-pointer and property struct.
        let mut rc = unsafe { sys::cuMemCreate(&mut handle, self.bytes, &prop, 0) };
        if rc == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            // torch's cache may hold the memory (the learner's freed blocks): the driver only sees it once
            // torch lets go.
            crate::cuda_memory::empty_cache()?;
            // SAFETY: as above.
            rc = unsafe { sys::cuMemCreate(&mut handle, self.bytes, &prop, 0) };
        }
        check(
            rc,
            &format!(
                "allocating {:.2} GB at a fixed address (cuMemCreate)",
                self.bytes as f64 / 1e9
            ),
        )?;
        let access = sys::CUmemAccessDesc {
            location: device_location(self.ordinal),
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        // SAFETY: the range was reserved by this struct and is unmapped; the handle is as large as the range.
        let mapped_ok = check(
            unsafe { sys::cuMemMap(self.base, self.bytes, 0, handle, 0) },
            "cuMemMap",
        )
        .and_then(|_| {
            // SAFETY: the range is mapped now.
            check(
                unsafe { sys::cuMemSetAccess(self.base, self.bytes, &access, 1) },
                "cuMemSetAccess",
            )
            .inspect_err(|_| unsafe {
                sys::cuMemUnmap(self.base, self.bytes);
            })
        });
        if let Err(e) = mapped_ok {
            // SAFETY: the handle is ours and mapped nowhere.
            unsafe { sys::cuMemRelease(handle) };
            return Err(e);
        }
        *mapped = true;
        Ok(Backing {
            range: self.clone(),
            handle,
        })
    }
}

impl Drop for FixedAddressRange {
    fn drop(&mut self) {
        // Every Backing holds an Arc of the range: nothing is mapped here any more.
        let _ = self.ctx.bind_to_thread();
        // SAFETY: reserved by this struct, unmapped.
        unsafe { sys::cuMemAddressFree(self.base, self.bytes) };
    }
}

impl Backing {
    /// The range this memory backs.
    pub fn range(&self) -> &Arc<FixedAddressRange> {
        &self.range
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        let r = &self.range;
        let _ = r.ctx.bind_to_thread();
        // Kernels queued on any stream may still touch the memory: unmapping under them is a fault.
        // SAFETY: plain driver calls on the range and handle this struct owns.
        unsafe {
            sys::cuCtxSynchronize();
            sys::cuMemUnmap(r.base, r.bytes);
            sys::cuMemRelease(self.handle);
        }
        if let Ok(mut m) = r.mapped.lock() {
            *m = false;
        }
    }
}

impl std::fmt::Debug for FixedAddressRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedAddressRange")
            .field("ordinal", &self.ordinal)
            .field("base", &format_args!("{:#x}", self.base))
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backing")
            .field("range", &self.range)
            .finish()
    }
}
