//! NVRTC compilation and launching through cudarc (libraries opened at run time, so this crate builds and runs
//! without CUDA). Kernels run on torch's current stream (the legacy default stream tch uses, or the capture
//! stream while a CUDA graph records), so they are ordered with torch's kernels without extra synchronisation.

use anyhow::{Result, anyhow, bail};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, sys};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

const SOURCE: &str = r#"
// bf16 handled as raw bits: NVRTC then needs no CUDA headers.
__device__ __forceinline__ float bf16_to_f32(unsigned short b) { return __uint_as_float(((unsigned int)b) << 16); }
__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u); // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                                  // round to nearest even
    return (unsigned short)(u >> 16);
}

__device__ __forceinline__ float block_sum(float v, float* shared) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < nw) ? shared[threadIdx.x] : 0.0f;
    if (warp == 0) for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) shared[0] = v;
    __syncthreads();
    return shared[0];
}

// Programmatic dependent launch (sm_90+): spar launches the kernels that call this first (PDL_KERNELS in cuda.rs)
// with the programmatic stream serialization attribute, so the GPU may schedule a kernel's blocks while the kernel
// ahead of it on the stream still runs: a decode step at batch 1 is ~400 dependent kernels of a few microseconds,
// each paying its launch and ramp-up. The prologue waits until the kernel ahead has finished and its writes are
// visible (the kernel reads and writes nothing before it: semantics are those of plain stream order), then lets
// the kernel behind this one be scheduled. Without the attribute (or before sm_90) it does nothing.
__device__ __forceinline__ void pdl_prologue() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

extern "C" __global__ void rms_norm_f32(const float* x, const float* w, float* y, int h, float eps) {
    __shared__ float shared[32];
    const float* row = x + (size_t)blockIdx.x * h;
    float* out = y + (size_t)blockIdx.x * h;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < h; i += blockDim.x) { float v = row[i]; ss += v * v; }
    float r = rsqrtf(block_sum(ss, shared) / (float)h + eps);
    for (int i = threadIdx.x; i < h; i += blockDim.x) out[i] = w[i] * (row[i] * r);
}

extern "C" __global__ void rms_norm_bf16(const unsigned short* x, const unsigned short* w, unsigned short* y, int h, float eps) {
    __shared__ float shared[32];
    const unsigned short* row = x + (size_t)blockIdx.x * h;
    unsigned short* out = y + (size_t)blockIdx.x * h;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < h; i += blockDim.x) { float v = bf16_to_f32(row[i]); ss += v * v; }
    float r = rsqrtf(block_sum(ss, shared) / (float)h + eps);
    for (int i = threadIdx.x; i < h; i += blockDim.x) {
        // torch: (x_f32 * r).to(bf16), then weight * that in bf16 (computed in f32, rounded once)
        float n = bf16_to_f32(f32_to_bf16(bf16_to_f32(row[i]) * r));
        out[i] = f32_to_bf16(bf16_to_f32(w[i]) * n);
    }
}
"#;

/// The CUDA source of every kernel of the module.
pub fn module_source() -> String {
    format!(
        "{SOURCE}\n{}\n{}\n{}",
        include_str!("decode_kernels.cu"),
        include_str!("logprob_kernels.cu"),
        include_str!("optimizer_kernels.cu")
    )
}

/// The kernels whose first statement is `pdl_prologue()`: only these may be launched with programmatic
/// dependent launch (a kernel without the prologue could read its inputs before the kernel ahead wrote them).
const PDL_KERNELS: [&str; 7] = [
    "skinny_linear_",
    "add_rms_norm_",
    "qk_norm_rope_store_",
    "silu_mul_",
    "decode_attention_",
    "greedy_pick_",
    "temperature_pick_",
];

/// Whether `name` starts with the prologue (see [`PDL_KERNELS`]).
fn has_pdl_prologue(name: &str) -> bool {
    PDL_KERNELS.iter().any(|p| name.starts_with(p))
}

/// Which launches of the kernels with the prologue are programmatic (`SPAR_PDL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PdlMode {
    /// `0`: plain stream order.
    Off,
    /// `1`: every launch.
    All,
    /// Unset or `small`, the default: only the launches of steps of at most [`PDL_SMALL_ROWS`] rows (see
    /// [`with_step_rows`]), where it helped on every machine measured: a batch-1 step 10-13% faster on an H200
    /// and two H100s, 3.5% on a third H100. From 4 rows on it cost 2-5% on that third H100 and saved 1-4% on the
    /// other two, so larger steps keep plain stream order (docs/benchmarks.md, 2026-12-06 afternoon and late night).
    SmallSteps,
}

/// The most rows of a step [`PdlMode::SmallSteps`] launches programmatically.
pub const PDL_SMALL_ROWS: usize = 2;

impl PdlMode {
    /// `SPAR_PDL`'s value; None for one it does not know.
    pub fn parse(value: Option<&str>) -> Option<PdlMode> {
        match value.map(str::trim) {
            Some("0") => Some(PdlMode::Off),
            Some("1") => Some(PdlMode::All),
            None | Some("" | "small") => Some(PdlMode::SmallSteps),
            Some(_) => None,
        }
    }
}

/// This process's `SPAR_PDL` (an unknown value is reported once and taken as off).
pub fn pdl_mode() -> PdlMode {
    static MODE: std::sync::OnceLock<PdlMode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| {
        let v = std::env::var("SPAR_PDL").ok();
        PdlMode::parse(v.as_deref()).unwrap_or_else(|| {
            eprintln!(
                "warning: SPAR_PDL={} is not 0, 1 or small: programmatic dependent launch stays off",
                v.unwrap_or_default()
            );
            PdlMode::Off
        })
    })
}

thread_local! {
    /// The rows of the step this thread is launching, inside [`with_step_rows`].
    static STEP_ROWS: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` as the launches of one step of `rows` rows (a decode step, or the capture of its graph: the launch
/// attributes are captured with the kernels), so that [`PdlMode::SmallSteps`] can tell small steps apart.
pub fn with_step_rows<R>(rows: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            STEP_ROWS.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(STEP_ROWS.with(|c| c.replace(Some(rows))));
    f()
}

/// Whether launches on this thread now are programmatic under `mode`.
fn pdl_now(mode: PdlMode) -> bool {
    match mode {
        PdlMode::Off => false,
        PdlMode::All => true,
        PdlMode::SmallSteps => STEP_ROWS.with(|c| c.get().is_some_and(|r| r <= PDL_SMALL_ROWS)),
    }
}

/// Compiled kernels of one device.
pub struct Kernels {
    ordinal: usize,
    /// Programmatic dependent launch is possible for the kernels with the prologue: an sm_90+ device, its own
    /// PTX target. `SPAR_PDL` says for which launches ([`pdl_mode`]).
    pdl_capable: bool,
    _ctx: Arc<CudaContext>,
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
    /// Streaming multiprocessors of the device.
    sm_count: u32,
    /// [`Kernels::resident_blocks`] per (kernel, threads a block), asked of the driver once.
    resident: Mutex<HashMap<(&'static str, u32), u32>>,
}

impl Kernels {
    fn build(ordinal: usize) -> Result<Self> {
        let ctx =
            CudaContext::new(ordinal).map_err(|e| anyhow!("CUDA context {ordinal}: {e:?}"))?;
        let source = module_source();
        // PTX for the device's own compute capability: the decode-attention kernel's asynchronous copies need
        // sm_80 or newer (older targets compile a synchronous fallback).
        let cc = |a| {
            ctx.attribute(a)
                .map_err(|e| anyhow!("device attribute: {e:?}"))
        };
        let major = cc(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = cc(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let opts = cudarc::nvrtc::CompileOptions {
            options: vec![format!("--gpu-architecture=compute_{major}{minor}")],
            ..Default::default()
        };
        let (ptx, own_target) = match cudarc::nvrtc::compile_ptx_with_opts(&source, opts) {
            Ok(p) => (p, true),
            // An NVRTC older than the device: its default target, which every driver still runs.
            Err(_) => (
                cudarc::nvrtc::compile_ptx(source).map_err(|e| anyhow!("NVRTC: {e:?}"))?,
                false,
            ),
        };
        let module = ctx
            .load_module(ptx)
            .map_err(|e| anyhow!("loading PTX: {e:?}"))?;
        let mut functions = HashMap::new();
        for name in [
            "rms_norm_f32",
            "rms_norm_bf16",
            "qk_norm_rope_store_f32",
            "qk_norm_rope_store_bf16",
            "qk_norm_rope_store_warp_f32_d32",
            "qk_norm_rope_store_warp_f32_d64",
            "qk_norm_rope_store_warp_f32_d128",
            "qk_norm_rope_store_warp_f32_d256",
            "qk_norm_rope_store_warp_bf16_d32",
            "qk_norm_rope_store_warp_bf16_d64",
            "qk_norm_rope_store_warp_bf16_d128",
            "qk_norm_rope_store_warp_bf16_d256",
            "add_rms_norm_f32",
            "add_rms_norm_bf16",
            "add_rms_norm_warp_f32_h256",
            "add_rms_norm_warp_f32_h512",
            "add_rms_norm_warp_f32_h1024",
            "add_rms_norm_warp_f32_h2048",
            "add_rms_norm_warp_bf16_h256",
            "add_rms_norm_warp_bf16_h512",
            "add_rms_norm_warp_bf16_h1024",
            "add_rms_norm_warp_bf16_h2048",
            "silu_mul_f32",
            "silu_mul_bf16",
            "decode_attention_f32_d32_h1",
            "decode_attention_f32_d32_h2",
            "decode_attention_f32_d32_h4",
            "decode_attention_f32_d64_h1",
            "decode_attention_f32_d64_h2",
            "decode_attention_f32_d64_h4",
            "decode_attention_f32_d128_h1",
            "decode_attention_f32_d128_h2",
            "decode_attention_f32_d128_h4",
            "decode_attention_f32_d256_h1",
            "decode_attention_f32_d256_h2",
            "decode_attention_f32_d256_h4",
            "decode_attention_bf16_d32_h1",
            "decode_attention_bf16_d32_h2",
            "decode_attention_bf16_d32_h4",
            "decode_attention_bf16_d64_h1",
            "decode_attention_bf16_d64_h2",
            "decode_attention_bf16_d64_h4",
            "decode_attention_bf16_d128_h1",
            "decode_attention_bf16_d128_h2",
            "decode_attention_bf16_d128_h4",
            "decode_attention_bf16_d256_h1",
            "decode_attention_bf16_d256_h2",
            "decode_attention_bf16_d256_h4",
            "decode_attention_async_bf16_d64_h1",
            "decode_attention_async_bf16_d64_h2",
            "decode_attention_async_bf16_d64_h4",
            "decode_attention_async_bf16_d128_h1",
            "decode_attention_async_bf16_d128_h2",
            "decode_attention_async_bf16_d128_h4",
            "greedy_pick_f32",
            "greedy_pick_bf16",
            "greedy_pick_part_f32",
            "greedy_pick_part_bf16",
            "greedy_pick_merge",
            "temperature_pick_f32",
            "temperature_pick_bf16",
            "temperature_pick_part_f32",
            "temperature_pick_part_bf16",
            "temperature_pick_select_f32",
            "temperature_pick_select_bf16",
            "decode_attention_combine_f32",
            "decode_attention_combine_bf16",
            "lp_fwd_f32",
            "lp_fwd_bf16",
            "lp_bwd_f32",
            "lp_bwd_bf16",
            "adamw_flat_f32",
            "adamw_compact_bf16",
            "adamw_packed_bf16",
        ]
        .into_iter()
        .chain(crate::decode_ops::SKINNY_LINEAR_KERNELS)
        {
            functions.insert(
                name,
                module
                    .load_function(name)
                    .map_err(|e| anyhow!("{name}: {e:?}"))?,
            );
        }
        let sm_count = cc(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        Ok(Kernels {
            ordinal,
            sm_count: sm_count.max(1) as u32,
            resident: Mutex::new(HashMap::new()),
            pdl_capable: own_target && major >= 9,
            _ctx: ctx,
            _module: module,
            functions,
        })
    }

    /// Whether kernels with the prologue launched now, on this thread, are programmatic (an sm_90+ device and
    /// [`pdl_mode`], inside [`with_step_rows`] for [`PdlMode::SmallSteps`]): a caller may then pick a variant
    /// that does independent work before the wait.
    pub fn pdl(&self) -> bool {
        self.pdl_capable && pdl_now(pdl_mode())
    }

    /// How many blocks of `block` threads of kernel `name` the device runs at once: its SMs times the blocks an
    /// SM holds (registers, shared memory, threads), asked of the driver once per (kernel, block size). A grid
    /// of more blocks runs in waves; launch heuristics size grids to fill them.
    pub fn resident_blocks(&self, name: &str, block: u32) -> Result<u32> {
        let (key, f) = self
            .functions
            .get_key_value(name)
            .ok_or_else(|| anyhow!("no kernel {name}"))?;
        let mut cache = self
            .resident
            .lock()
            .map_err(|_| anyhow!("resident-blocks cache poisoned"))?;
        if let Some(n) = cache.get(&(*key, block)) {
            return Ok(*n);
        }
        self._ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("binding the CUDA context: {e:?}"))?;
        let per_sm = f
            .occupancy_max_active_blocks_per_multiprocessor(block, 0, None)
            .map_err(|e| anyhow!("occupancy of {name}: {e:?}"))?;
        let n = per_sm * self.sm_count;
        cache.insert((*key, block), n);
        Ok(n)
    }

    /// Launches `name` with `grid` blocks of `block` threads on torch's current stream (the legacy default
    /// stream in a build without the CUDA-graph shim). `args` must match the kernel's parameters in order.
    pub fn launch(&self, name: &str, grid: u32, block: u32, args: &[Arg]) -> Result<()> {
        let f = self
            .functions
            .get(name)
            .ok_or_else(|| anyhow!("no kernel {name}"))?;
        let stream =
            crate::cuda_graph::current_stream(self.ordinal).unwrap_or(std::ptr::null_mut());
        self._ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("binding the CUDA context: {e:?}"))?;
        let mut params: Vec<*mut c_void> = args
            .iter()
            .map(|a| match a {
                Arg::Ptr(p) => p as *const u64 as *mut c_void,
                Arg::I32(v) => v as *const i32 as *mut c_void,
                Arg::I64(v) => v as *const i64 as *mut c_void,
                Arg::F32(v) => v as *const f32 as *mut c_void,
            })
            .collect();
        let rc = if has_pdl_prologue(name) && self.pdl() {
            let mut attr = sys::CUlaunchAttribute {
                id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
                pad: [0; 4],
                value: sys::CUlaunchAttributeValue {
                    programmaticStreamSerializationAllowed: 1,
                },
            };
            let config = sys::CUlaunchConfig {
                gridDimX: grid,
                gridDimY: 1,
                gridDimZ: 1,
                blockDimX: block,
                blockDimY: 1,
                blockDimZ: 1,
                sharedMemBytes: 0,
                hStream: stream as sys::CUstream,
                attrs: &mut attr,
                numAttrs: 1,
            };
            // SAFETY: as for cuLaunchKernel below, and `config` and `attr` outlive the call. The kernel's
            // prologue keeps the stream's order for its memory accesses.
            unsafe {
                sys::cuLaunchKernelEx(
                    &config,
                    f.cu_function(),
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            }
        } else {
            // SAFETY: `params` point into `args`, alive for the call; the caller passes device pointers of live
            // tensors sized for the kernel and values of the kernel's parameter types.
            unsafe {
                sys::cuLaunchKernel(
                    f.cu_function(),
                    grid,
                    1,
                    1,
                    block,
                    1,
                    1,
                    0,
                    stream as sys::CUstream,
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            }
        };
        if rc != sys::CUresult::CUDA_SUCCESS {
            bail!("launching {name}: {rc:?}");
        }
        Ok(())
    }
}

/// One kernel argument for [`Kernels::launch`].
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// A device pointer.
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

static KERNELS: OnceLock<Mutex<HashMap<usize, Option<Arc<Kernels>>>>> = OnceLock::new();

/// The kernels of CUDA device `ordinal`, compiled on first use; None (logged once) when NVRTC or the driver
/// is unavailable.
pub fn kernels(ordinal: usize) -> Option<Arc<Kernels>> {
    let map = KERNELS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut m = map.lock().ok()?;
    m.entry(ordinal)
        .or_insert_with(|| match Kernels::build(ordinal) {
            Ok(k) => Some(Arc::new(k)),
            Err(e) => {
                eprintln!("spar-kernels: fused kernels unavailable on cuda:{ordinal}, using torch ops ({e:#})");
                None
            }
        })
        .clone()
}

/// False when `SPAR_KERNELS=off` (forces the torch fallbacks, e.g. to compare).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("SPAR_KERNELS")
            .map(|v| v != "off" && v != "0")
            .unwrap_or(true)
    })
}

/// Whether autograd records operations right now (false inside `tch::no_grad`).
pub fn grad_enabled() -> Result<bool> {
    let probe = tch::Tensor::f_zeros([1], (tch::Kind::Float, tch::Device::Cpu))?
        .f_set_requires_grad(true)?;
    Ok(probe.f_mul_scalar(1.0)?.requires_grad())
}

#[cfg(test)]
mod tests {
    use super::{PDL_SMALL_ROWS, PdlMode, pdl_now, with_step_rows};

    #[test]
    fn spar_pdl_values() {
        assert_eq!(PdlMode::parse(None), Some(PdlMode::SmallSteps));
        assert_eq!(PdlMode::parse(Some("0")), Some(PdlMode::Off));
        assert_eq!(PdlMode::parse(Some("1")), Some(PdlMode::All));
        assert_eq!(PdlMode::parse(Some(" small")), Some(PdlMode::SmallSteps));
        assert_eq!(PdlMode::parse(Some("yes")), None);
    }

    #[test]
    fn small_steps_mode_launches_programmatically_only_inside_small_steps() {
        let small = || pdl_now(PdlMode::SmallSteps);
        assert!(!small(), "outside any step");
        with_step_rows(1, || {
            assert!(small());
            with_step_rows(PDL_SMALL_ROWS + 1, || assert!(!small()));
            assert!(small(), "the outer step's rows are back");
        });
        assert!(with_step_rows(PDL_SMALL_ROWS, small));
        assert!(!small(), "after the step");
        let _ = std::panic::catch_unwind(|| with_step_rows(1, || panic!("inside a step")));
        assert!(!small(), "a panicking step restores the rows");
        assert!(with_step_rows(64, || pdl_now(PdlMode::All)));
        assert!(!with_step_rows(1, || pdl_now(PdlMode::Off)));
    }

    /// The module compiles with NVRTC (which needs no GPU): a syntax error in one kernel would otherwise only
    /// show on the GPU machine, and take every fused kernel down with it.
    #[test]
    fn nvrtc_compiles_the_kernel_module() {
        let source = super::module_source();
        let opts = cudarc::nvrtc::CompileOptions {
            options: vec!["--gpu-architecture=compute_90".into()],
            ..Default::default()
        };
        match std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(&source, opts)) {
            Ok(Ok(ptx)) => {
                let ptx = ptx.to_src();
                every_pdl_kernel_waits_first(&ptx);
                for name in crate::decode_ops::attention_kernel_names() {
                    assert!(
                        ptx.contains(&format!(".entry {name}(")),
                        "decode_ops picks {name}, which the module does not define"
                    );
                }
            }
            Ok(Err(e)) => panic!("NVRTC rejects the kernel module: {e:?}"),
            Err(_) => eprintln!("SKIP: NVRTC is not loadable here"),
        }
    }

    /// `SPAR_PDL` launches the kernels named by `PDL_KERNELS` early; one without `pdl_prologue` would touch
    /// memory before the kernel ahead finished. In the sm_90 PTX, each such entry's first global load or store
    /// must come after its `griddepcontrol.wait`. The `skinny_linear_early_*` kernels load weights before it,
    /// which no kernel writes: there, every access before the wait must be the weight stream's load
    /// (`ld_stream`'s `ld.global.nc.L1::no_allocate`; x is read through `__ldg`, a plain `ld.global.nc`).
    fn every_pdl_kernel_waits_first(ptx: &str) {
        const WEIGHT_STREAM: &str = "ld.global.nc.L1::no_allocate";
        let (mut checked, mut early) = (0, 0);
        for entry in ptx.split(".entry ").skip(1) {
            let name = entry.split('(').next().unwrap_or_default().trim();
            if !super::has_pdl_prologue(name) {
                continue;
            }
            let wait = entry.find("griddepcontrol.wait").unwrap_or_else(|| {
                panic!("{name}: launched with PDL but has no griddepcontrol.wait")
            });
            let before = &entry[..wait];
            let accesses = [
                "ld.global",
                "st.global",
                "cp.async",
                "atom.global",
                "red.global",
            ]
            .iter()
            .flat_map(|op| before.match_indices(op).map(|(at, _)| &before[at..]))
            .collect::<Vec<_>>();
            if name.starts_with("skinny_linear_early_") {
                assert!(
                    accesses.iter().any(|a| a.starts_with(WEIGHT_STREAM)),
                    "{name}: no weight load before griddepcontrol.wait (the variant's point)"
                );
                let other = accesses.iter().find(|a| !a.starts_with(WEIGHT_STREAM));
                assert!(
                    other.is_none(),
                    "{name}: touches global memory other than the weights before griddepcontrol.wait: {}",
                    other.map_or("", |a| a.lines().next().unwrap_or_default())
                );
                early += 1;
            } else {
                assert!(
                    accesses.is_empty(),
                    "{name}: touches global memory before griddepcontrol.wait"
                );
            }
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} PDL kernels found in the PTX");
        assert_eq!(early, 4, "the skinny kernels' early variants");
    }
}
