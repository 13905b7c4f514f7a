// 1. The torch link fixes shared by every libtorch package (rpath, --no-as-needed libtorch_cuda).
// 2. The torch-ops shim (csrc/fused_logprob.cpp: the fused LM-head log-prob autograd function;
//    csrc/torch_profiler.cpp: the PyTorch profiler; csrc/sdpa_backends.cpp: SDPA's backend switches;
//    csrc/varlen_attention.cpp: FlashAttention's varlen kernel over the KV cache, for prefill), compiled
//    against libtorch's C++ headers alone (CPU and CUDA through ATen); without them `fused_logprob::available()`
//    and `torch_profiler::available()` are false, the model uses its plain tch path, profiling is refused and
//    SDPA keeps torch's default backends.
// 3. The CUDA-graph shim (csrc/cuda_graph.cpp) compiled against the C++ headers the torch wheel ships. When
//    the headers are missing (a libtorch without CUDA headers) the crate builds without it and
//    `cuda_graph::available()` says so; everything else falls back to eager execution.
mod torch_link {
    include!("../build-support/torch_link.rs");
    pub(super) fn emit() {
        main();
    }
    pub(super) fn lib_dir() -> Option<std::path::PathBuf> {
        torch_lib_dir()
    }
}

fn main() {
    torch_link::emit();
    torch_ops();
    cuda_graph();
}

/// The fused log-prob autograd function: needs only libtorch's headers (no CUDA headers).
fn torch_ops() {
    println!("cargo:rerun-if-changed=csrc/fused_logprob.cpp");
    println!("cargo:rerun-if-changed=csrc/torch_profiler.cpp");
    println!("cargo:rerun-if-changed=csrc/sdpa_backends.cpp");
    println!("cargo:rerun-if-changed=csrc/varlen_attention.cpp");
    println!("cargo:rerun-if-changed=csrc/shim_errors.h");
    println!("cargo:rerun-if-env-changed=SPAR_NO_TORCH_OPS");
    println!("cargo::rustc-check-cfg=cfg(spar_torch_ops)");
    if std::env::var_os("SPAR_NO_TORCH_OPS").is_some() {
        println!(
            "cargo:warning=SPAR_NO_TORCH_OPS set: building without the fused log-prob and profiler shim"
        );
        return;
    }
    let Some(lib) = torch_link::lib_dir() else {
        println!("cargo:warning=torch not found: building without the fused log-prob shim");
        return;
    };
    let include = lib.parent().map(|p| p.join("include")).unwrap_or_default();
    if !include
        .join("torch/csrc/autograd/custom_function.h")
        .exists()
    {
        println!(
            "cargo:warning=libtorch C++ headers not found: building without the fused log-prob shim"
        );
        return;
    }
    cc::Build::new()
        .cpp(true)
        .file("csrc/fused_logprob.cpp")
        .file("csrc/torch_profiler.cpp")
        .file("csrc/sdpa_backends.cpp")
        .file("csrc/varlen_attention.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .opt_level(2)
        .warnings(false)
        .compile("spar_torch_ops");
    println!("cargo:rustc-link-search=native={}", lib.display());
    for l in ["torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
    println!("cargo:rustc-cfg=spar_torch_ops");
}

fn cuda_graph() {
    println!("cargo:rerun-if-changed=csrc/cuda_graph.cpp");
    println!("cargo:rerun-if-changed=csrc/shim_errors.h");
    println!("cargo:rerun-if-env-changed=SPAR_NO_CUDA_GRAPH");
    println!("cargo::rustc-check-cfg=cfg(spar_cuda_graph)");
    if std::env::var_os("SPAR_NO_CUDA_GRAPH").is_some() {
        println!("cargo:warning=SPAR_NO_CUDA_GRAPH set: building without the CUDA-graph shim");
        return;
    }
    let Some(lib) = torch_link::lib_dir() else {
        println!("cargo:warning=torch not found: building without the CUDA-graph shim");
        return;
    };
    let torch = lib.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let include = torch.join("include");
    // The pip wheel keeps the CUDA runtime headers in nvidia/cu13 (cu12 for older wheels) next to torch.
    let cuda_include = ["cu13", "cu12", "cuda_runtime"]
        .iter()
        .filter_map(|v| {
            torch
                .parent()
                .map(|sp| sp.join("nvidia").join(v).join("include"))
        })
        .find(|p| p.join("cuda_runtime_api.h").exists());
    let (true, Some(cuda_include)) = (include.join("ATen/cuda/CUDAGraph.h").exists(), cuda_include)
    else {
        println!(
            "cargo:warning=torch CUDA headers not found: building without the CUDA-graph shim"
        );
        return;
    };
    // The runtime wheel lacks `crt/` (host_config.h, host_defines.h: host-compiler macros only); triton, a
    // dependency of the torch wheel, ships a copy. Searched last, so it supplies nothing else.
    let crt = torch
        .parent()
        .map(|sp| sp.join("triton/backends/nvidia/include"))
        .filter(|p| p.join("crt/host_config.h").exists());
    if !cuda_include.join("crt/host_config.h").exists() && crt.is_none() {
        println!("cargo:warning=CUDA crt/ headers not found: building without the CUDA-graph shim");
        return;
    }
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("csrc/cuda_graph.cpp")
        .include(&include)
        .include(&cuda_include);
    if let Some(crt) = crt {
        build.include(crt);
    }
    build
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .opt_level(1)
        .warnings(false)
        .compile("spar_cuda_graph");
    println!("cargo:rustc-link-search=native={}", lib.display());
    for l in ["torch_cuda", "c10_cuda", "torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
    println!("cargo:rustc-cfg=spar_cuda_graph");
}
