//! What every bench shares: the device and precision from the environment, and timing that waits
//! for CUDA kernels to finish.
#![allow(dead_code)]

use mdlm::backbone::Precision;
use std::time::Instant;
use tch::Device;

/// `MDLM_BENCH_DEVICE=cuda` selects the GPU; `MDLM_BENCH_QUICK=1` a smoke run.
pub struct Env {
    pub device: Device,
    pub precision: Precision,
    pub quick: bool,
}

pub fn env() -> Env {
    let device = match std::env::var("MDLM_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let precision = if device.is_cuda() {
        Precision::Bf16
    } else {
        Precision::F32
    };
    Env {
        device,
        precision,
        quick: std::env::var_os("MDLM_BENCH_QUICK").is_some(),
    }
}

pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Mean seconds per call after `warmup` untimed calls.
pub fn time<F: FnMut()>(device: Device, warmup: usize, iters: usize, mut f: F) -> f64 {
    for _ in 0..warmup {
        f();
    }
    sync(device);
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    sync(device);
    start.elapsed().as_secs_f64() / iters as f64
}

/// The MDLM objective on a vocabulary whose last id is the mask (loglinear noise, no time
/// conditioning): what every bench model is trained and sampled with.
pub fn subs_diffusion(vocab: i64) -> mdlm::diffusion::Diffusion {
    mdlm::diffusion::Diffusion::reference_subs(vocab, vocab - 1)
}

/// The reference's DiT with MLP ratio 4, 256 frequency features and rotary base 10^4, at the
/// given widths; `vocab` includes the mask.
pub fn dit_config(
    hidden: i64,
    blocks: i64,
    heads: i64,
    cond: i64,
    vocab: i64,
    dropout: f64,
) -> mdlm::backbone::DitConfig {
    mdlm::backbone::DitConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        cond_dim: cond,
        n_blocks: blocks,
        n_heads: heads,
        dropout,
        mlp_ratio: 4,
        frequency_embedding_size: 256,
        rotary_base: 10000.0,
    }
}
