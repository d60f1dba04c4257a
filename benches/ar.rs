//! AR sampling speed with and without the key/value cache, measured in one run on the same model
//! and the same Gumbel noise so the ratio is comparable (and the tokens can be checked equal).
//!
//! `cargo bench --bench ar` (set `MDLM_BENCH_DEVICE=cuda` on a GPU box; `MDLM_BENCH_QUICK=1` for
//! a smoke run at a shorter length).

mod common;

use common::sync;
use mdlm::backbone::{Ar, ArConfig};
use mdlm::sample::ar::{ArSampleSpec, ArSampler, ReplayGumbel, sample_ar};
use std::time::Instant;
use tch::{Kind, Tensor, nn};

fn main() {
    let common::Env {
        device,
        precision,
        quick,
    } = common::env();
    // The reference's `tiny` width (512 / 8 blocks / 8 heads) with the GPT-2 vocabulary + mask.
    let cfg = ArConfig {
        vocab_size: 50258,
        hidden_size: 512,
        n_blocks: 8,
        n_heads: 8,
        dropout: 0.0,
        mlp_ratio: 4,
        rotary_base: 10_000.0,
    };
    let (length, batch) = match (quick, device.is_cuda()) {
        (true, _) => (32, 1),
        (false, false) => (128, 1),
        (false, true) => (128, 16),
    };
    println!(
        "device {device:?}, precision {precision:?}, torch threads {}; AR hidden {} blocks {} heads {} vocab {}; B={batch}, L={length}",
        tch::get_num_threads(),
        cfg.hidden_size,
        cfg.n_blocks,
        cfg.n_heads,
        cfg.vocab_size
    );
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let ar = Ar::new(vs.root() / "backbone", &cfg, precision);
    // The output layer starts at zero; random weights make the samples depend on the model, so
    // the token comparison below means something.
    tch::no_grad(|| {
        for (name, v) in vs.variables() {
            if name.starts_with("backbone.output_layer.linear") {
                v.shallow_clone().copy_(&(Tensor::randn_like(&v) * 0.05));
            }
        }
    });
    let spec = ArSampleSpec {
        batch,
        length,
        bos: 50256,
        mask_index: cfg.vocab_size - 1,
    };
    let noise = ReplayGumbel::upfront(batch, length, cfg.vocab_size, Kind::Double, device);

    // Warm-up (allocator, kernels) on a short run of each.
    let warm = ArSampleSpec {
        length: 4,
        ..spec.clone()
    };
    for sampler in [ArSampler::Recompute, ArSampler::Cached] {
        let mut g = ReplayGumbel {
            noise: noise.noise.narrow(1, 0, 3),
        };
        let _ = sample_ar(&ar, &warm, sampler, device, &mut g, false);
    }

    let mut results = Vec::new();
    for sampler in [ArSampler::Recompute, ArSampler::Cached] {
        let mut g = ReplayGumbel {
            noise: noise.noise.shallow_clone(),
        };
        sync(device);
        let start = Instant::now();
        let out = sample_ar(&ar, &spec, sampler, device, &mut g, false);
        sync(device);
        let secs = start.elapsed().as_secs_f64();
        let tokens = (batch * (length - 1)) as f64;
        println!(
            "{sampler:?}: {} forward calls, {secs:.2} s, {:.1} tokens/s",
            out.forward_calls,
            tokens / secs
        );
        results.push((out.tokens, secs));
    }
    let same = results[0].0.equal(&results[1].0);
    println!(
        "cached vs recompute: {:.2}x faster at L={length}; tokens identical: {same}",
        results[0].1 / results[1].1
    );
}
