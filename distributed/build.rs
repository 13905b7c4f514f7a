// 1. The torch link fixes shared by every libtorch package (rpath, --no-as-needed libtorch_cuda).
// 2. The c10d shim (csrc/c10d.cpp: TCPStore, ProcessGroupGloo, the collectives) compiled against the C++
//    headers the torch wheel ships, plus the gloo headers vendored in csrc/gloo (the wheel lacks them).
// 3. ProcessGroupNCCL (csrc/nccl.cpp) compiled in only when NCCL, CUDA runtime and CCCL (`nv/target`) headers
//    are found; otherwise the shim says at run time that NCCL is not compiled in.
mod torch_link {
    include!("../build-support/torch_link.rs");
    pub(super) fn emit() {
        main();
    }
    pub(super) fn lib_dir() -> Option<std::path::PathBuf> {
        torch_lib_dir()
    }
}

use std::path::{Path, PathBuf};

fn main() {
    torch_link::emit();
    for f in ["csrc/c10d.cpp", "csrc/nccl.cpp", "csrc/shim.h", "csrc/gloo"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=SPAR_CUDA_EXTRA_INCLUDE");
    println!("cargo:rerun-if-env-changed=SPAR_NO_NCCL");
    println!("cargo::rustc-check-cfg=cfg(spar_nccl)");
    // Unlike the CUDA-graph shim, c10d is this crate's whole purpose: no silent fallback.
    let lib = torch_link::lib_dir()
        .expect("spar-dist needs libtorch (set LIBTORCH or SPAR_TORCH_LIB, or put the torch venv's python on PATH)");
    let torch = lib.parent().map(Path::to_path_buf).unwrap_or_default();
    let include = torch.join("include");
    assert!(
        include
            .join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp")
            .exists(),
        "spar-dist: libtorch's c10d headers not found under {}",
        include.display()
    );
    let mut build = base(&include);
    build
        .file("csrc/c10d.cpp")
        .include("csrc/gloo")
        .define("USE_C10D_GLOO", None);
    let nccl = nccl_includes(&torch);
    build.file("csrc/nccl.cpp");
    if let Some(dirs) = &nccl {
        build
            .define("USE_C10D_NCCL", None)
            .define("SPAR_WITH_NCCL", None);
        for d in dirs {
            build.include(d);
        }
        println!("cargo:rustc-cfg=spar_nccl");
    } else {
        println!(
            "cargo:warning=NCCL/CUDA/CCCL headers not found: spar-dist builds without ProcessGroupNCCL"
        );
    }
    build.compile("spar_c10d");
    println!("cargo:rustc-link-search=native={}", lib.display());
    let libs: &[&str] = if nccl.is_some() {
        &["torch_cuda", "c10_cuda", "torch_cpu", "c10"]
    } else {
        &["torch_cpu", "c10"]
    };
    for l in libs {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
}

fn base(include: &Path) -> cc::Build {
    let mut b = cc::Build::new();
    b.cpp(true)
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .opt_level(1)
        .warnings(false);
    b
}

/// The include folders ProcessGroupNCCL.hpp needs: the wheel's CUDA runtime (nvidia/cu13), NCCL (nvidia/nccl),
/// CCCL's `nv/target` (the `nvidia-cuda-cccl` wheel, or `$SPAR_CUDA_EXTRA_INCLUDE`) and `crt/` (triton's copy).
fn nccl_includes(torch: &Path) -> Option<Vec<PathBuf>> {
    if std::env::var_os("SPAR_NO_NCCL").is_some() {
        return None;
    }
    let sp = torch.parent()?;
    let cuda = ["cu13", "cu12"]
        .iter()
        .map(|v| sp.join("nvidia").join(v).join("include"))
        .find(|p| p.join("cuda_runtime_api.h").exists())?;
    let nccl = sp.join("nvidia/nccl/include");
    let extra = std::env::var_os("SPAR_CUDA_EXTRA_INCLUDE").map(PathBuf::from);
    let cccl = [Some(cuda.clone()), extra.clone()]
        .into_iter()
        .flatten()
        .find(|p| p.join("nv/target").exists())?;
    let crt = [
        Some(cuda.clone()),
        Some(sp.join("triton/backends/nvidia/include")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.join("crt/host_config.h").exists())?;
    let ok = torch
        .join("include/torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp")
        .exists()
        && nccl.join("nccl.h").exists();
    // Order matters: cuda first so that CCCL's and triton's copies supply only what the runtime wheel lacks.
    ok.then(|| vec![cuda, nccl, cccl, crt])
}
