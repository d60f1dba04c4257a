//! Link-time set-up for libtorch: an rpath so the binary runs without LD_LIBRARY_PATH, and
//! `libtorch_cuda` kept as a dependency even though no symbol of it is referenced directly —
//! without `--no-as-needed` the linker drops it and CUDA is silently unavailable on a GPU box.
//!
//! It also compiles `src/dist/*.cpp` (the bridge to torch.distributed's c10d engine),
//! `src/profile/record.cpp` (the profiler's hook) and `src/train/foreach.cpp` (multi-tensor ops)
//! with the flags torch-sys uses for its own C++ (C++17, the new libstdc++ ABI of PyTorch 2
//! wheels, the same include folders), so both sides agree on `at::Tensor`. Gloo needs gloo's
//! headers (not in
//! the wheel: Debian's libgloo-dev); NCCL needs CUDA runtime, CCCL and NCCL headers (the wheel's
//! nvidia packages plus the two header wheels `scripts/setup-dist.sh` adds). Whatever is missing
//! is compiled out, and the matching entry point then says so at run time.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=MDLM_GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=MDLM_CUDA_INCLUDE");
    println!("cargo:rerun-if-env-changed=MDLM_NO_NCCL");
    println!("cargo:rerun-if-changed=build.rs");
    for f in [
        "dist/c10d.cpp",
        "dist/c10d_nccl.cpp",
        "dist/c10d_bridge.h",
        "profile/record.cpp",
        "train/foreach.cpp",
        "backbone/scan.cpp",
        "backbone/dropout.cpp",
        "backbone/rotary.cpp",
        "backbone/parallel.h",
        "ffi_error.h",
    ] {
        println!("cargo:rerun-if-changed=src/{f}");
    }
    println!("cargo:rustc-check-cfg=cfg(mdlm_cuda_linked)");
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
    let cuda_linked = lib.join("libtorch_cuda.so").exists();
    if cuda_linked {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        println!("cargo:rustc-cfg=mdlm_cuda_linked");
    }
    compile_bridge(&root, cuda_linked);
}

fn compile_bridge(root: &Path, cuda_linked: bool) {
    let torch_includes = [
        root.join("include"),
        root.join("include/torch/csrc/api/include"),
    ];
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .includes(&torch_includes)
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT");

    let gloo = gloo_include();
    match &gloo {
        Some(dir) => {
            // Headers only: torch's gloo lives inside libtorch_cpu; linking the system libgloo
            // as well would give two copies of its symbols.
            build
                .include(dir)
                .define("USE_C10D_GLOO", None)
                .define("MDLM_GLOO", None);
        }
        None => println!(
            "cargo:warning=gloo headers not found (apt-get install libgloo-dev, or set MDLM_GLOO_INCLUDE): distributed CPU training is compiled out"
        ),
    }
    // The profiler's hook and the multi-tensor ops need only ATen.
    build
        .clone()
        .file("src/profile/record.cpp")
        .file("src/train/foreach.cpp")
        .file("src/backbone/scan.cpp")
        .file("src/backbone/dropout.cpp")
        .file("src/backbone/rotary.cpp")
        .compile("mdlm_aten");
    let mut gloo_build = build.clone();
    gloo_build.file("src/dist/c10d.cpp").compile("mdlm_c10d");

    let nccl = if cuda_linked && std::env::var_os("MDLM_NO_NCCL").is_none() {
        cuda_includes(root)
    } else {
        None
    };
    if let Some(dirs) = &nccl {
        build
            .includes(dirs)
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None);
    } else if cuda_linked {
        println!(
            "cargo:warning=CUDA runtime/CCCL/NCCL headers not found (scripts/setup-dist.sh, or MDLM_CUDA_INCLUDE): NCCL process groups are compiled out"
        );
    }
    build
        .file("src/dist/c10d_nccl.cpp")
        .compile("mdlm_c10d_nccl");
}

/// The folder holding `gloo/algorithm.h`.
fn gloo_include() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("MDLM_GLOO_INCLUDE") {
        Some(d) => vec![PathBuf::from(d)],
        None => vec!["/usr/include".into(), "/usr/local/include".into()],
    };
    candidates
        .into_iter()
        .find(|d| d.join("gloo/algorithm.h").exists())
}

/// Include folders covering every header `ProcessGroupNCCL.hpp` reaches, or `None` when one is
/// missing. The torch wheel ships the CUDA runtime and NCCL headers but not `crt/` or CCCL's
/// `nv/target`, which come from the `nvidia-cuda-crt` / `nvidia-cuda-cccl` wheels.
fn cuda_includes(root: &Path) -> Option<Vec<PathBuf>> {
    let site = root.parent()?.to_path_buf();
    let dirs: Vec<PathBuf> = match std::env::var_os("MDLM_CUDA_INCLUDE") {
        Some(v) => std::env::split_paths(&v).collect(),
        None => {
            let extra = site.join("mdlm-cuda-headers/nvidia/cu13/include");
            let mut d = vec![
                site.join("nvidia/cu13/include"),
                extra.clone(),
                extra.join("cccl"),
                site.join("nvidia/nccl/include"),
            ];
            if let Some(home) = std::env::var_os("CUDA_HOME") {
                d.push(PathBuf::from(home).join("include"));
            }
            d
        }
    };
    let needed = ["cuda_runtime.h", "crt/host_config.h", "nv/target", "nccl.h"];
    let complete = needed
        .iter()
        .all(|f| dirs.iter().any(|d| d.join(f).exists()));
    complete.then(|| dirs.into_iter().filter(|d| d.exists()).collect())
}
