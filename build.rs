//! Link-time set-up for libtorch: an rpath so the binary runs without LD_LIBRARY_PATH, and
//! `libtorch_cuda` kept as a dependency even though no symbol of it is referenced directly —
//! without `--no-as-needed` the linker drops it and CUDA is silently unavailable on a GPU box.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        return; // torch-sys reports the missing libtorch itself, with its own hint.
    };
    // The checkout holds a link to the per-user cache; the rpath names the real place so the
    // binary keeps working wherever it is copied on this machine.
    let root = PathBuf::from(libtorch);
    let root = root.canonicalize().unwrap_or(root);
    let lib = root.join("lib");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        println!("cargo:rustc-cfg=mdlm_cuda_linked");
    }
    println!("cargo:rustc-check-cfg=cfg(mdlm_cuda_linked)");
}
