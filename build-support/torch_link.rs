// Shared by the build scripts of every package whose binaries or tests link libtorch (`include!` it).
// Two pitfalls (see docs/architecture.md, "Building against libtorch"):
// 1. the binary must find libtorch at run time: add an rpath to the torch lib folder;
// 2. `--as-needed` drops libtorch_cuda.so (only static initialisers reference it), so CUDA silently
//    vanishes on the GPU machine: force it in with `--no-as-needed -ltorch_cuda`.
fn torch_lib_dir() -> Option<std::path::PathBuf> {
    if let Ok(dir) = std::env::var("SPAR_TORCH_LIB") {
        return Some(dir.into());
    }
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return Some(std::path::Path::new(&dir).join("lib"));
    }
    let python = std::env::var("SPAR_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args(["-c", "import torch,os;print(os.path.join(os.path.dirname(torch.__file__),'lib'))"])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().into())
}

fn main() {
    println!("cargo:rerun-if-env-changed=SPAR_TORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=SPAR_PYTHON");
    if let Some(dir) = torch_lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
        if dir.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
}
