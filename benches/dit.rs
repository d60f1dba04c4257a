//! Speed of the model path, measured in one run so ratios are comparable:
//! one training step (forward + backward + AdamW-free SGD-style zero) in tokens/s, one sampling
//! step, and ddpm vs ddpm_cache on the same samples (denoiser calls and wall time).
//!
//! `cargo bench --bench dit` (set `MDLM_BENCH_DEVICE=cuda` on a GPU box; `MDLM_BENCH_QUICK=1` for
//! a smoke run).

mod common;

use common::{sync, time};
use mdlm::backbone::{Backbone, Dit, DitConfig};
use mdlm::diffusion::Draws;
use mdlm::sample::categorical::TorchUniforms;
use mdlm::sample::ddpm::DrawMode;
use mdlm::sample::{self, ModelDenoiser, Predictor, SampleSpec, StepAt};
use std::time::Instant;
use tch::{Kind, Tensor, nn};

struct Shape {
    name: &'static str,
    hidden: i64,
    blocks: i64,
    heads: i64,
    cond: i64,
    vocab: i64,
    len: i64,
    batch: i64,
}

fn dit_config(s: &Shape, dropout: f64) -> DitConfig {
    common::dit_config(s.hidden, s.blocks, s.heads, s.cond, s.vocab, dropout)
}

fn main() {
    let common::Env {
        device,
        precision,
        quick,
    } = common::env();
    let scale = if device.is_cuda() { 8 } else { 1 };
    let shapes = [
        // The reference's `tiny` (512/8/8) and `small` (768/12/12) widths with the GPT-2 vocabulary.
        Shape {
            name: "tiny",
            hidden: 512,
            blocks: 8,
            heads: 8,
            cond: 128,
            vocab: 50258,
            len: 128,
            batch: 4 * scale,
        },
        Shape {
            name: "small",
            hidden: 768,
            blocks: 12,
            heads: 12,
            cond: 128,
            vocab: 50258,
            len: 128,
            batch: 2 * scale,
        },
    ];
    let (warmup, iters) = if quick { (1, 1) } else { (2, 5) };
    println!(
        "device {device:?}, precision {precision:?}, torch threads {}",
        tch::get_num_threads()
    );
    for s in &shapes {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(device);
        let cfg = dit_config(s, 0.1);
        let dit = Dit::new(vs.root() / "backbone", &cfg, precision);
        let diff = common::subs_diffusion(s.vocab);
        let x0 = Tensor::randint(s.vocab - 1, [s.batch, s.len], (Kind::Int64, device));
        let mask = Tensor::ones([s.batch, s.len], (Kind::Float, device));
        let mut params: Vec<Tensor> = vs.trainable_variables();
        let step = time(device, warmup, iters, || {
            for p in params.iter_mut() {
                p.zero_grad();
            }
            let draws = Draws::sample(s.batch, s.len, device);
            let parts = diff.loss(&dit, &x0, &mask, &draws, true).unwrap();
            parts.loss.backward();
        });
        let tokens = (s.batch * s.len) as f64;
        println!(
            "{:<6} train step: {:.1} ms, {:.0} tokens/s (B={}, L={})",
            s.name,
            step * 1e3,
            tokens / step,
            s.batch,
            s.len
        );

        let den = ModelDenoiser::new(&dit, &diff);
        let xt = Tensor::full([s.batch, s.len], s.vocab - 1, (Kind::Int64, device));
        let t = Tensor::full([s.batch, 1], 0.5, (Kind::Float, device));
        let mut u = TorchUniforms { kind: Kind::Double };
        let one = time(device, warmup, iters, || {
            let _ = sample::ddpm::step(
                StepAt {
                    den: &den,
                    diff: &diff,
                    x: &xt,
                    t: &t,
                    dt: 1.0 / 128.0,
                },
                DrawMode::Reference,
                &mut u,
            );
        });
        println!("{:<6} ddpm sampling step: {:.1} ms", s.name, one * 1e3);
        let _ = dit.forward(&xt, &Tensor::zeros([s.batch], (Kind::Float, device)), false);
    }

    // ddpm vs ddpm_cache on the same samples: with many steps most steps change no token, so the
    // cache skips their forward passes.
    let s = &shapes[0];
    let vs = nn::VarStore::new(device);
    let cfg = dit_config(s, 0.0);
    let dit = Dit::new(vs.root() / "backbone", &cfg, precision);
    let diff = common::subs_diffusion(s.vocab);
    let steps = if quick { 32 } else { 1000 };
    let len = if quick { 32 } else { s.len };
    let mut results = Vec::new();
    for (predictor, draws) in [
        (Predictor::Ddpm, DrawMode::Reference),
        (Predictor::DdpmCache, DrawMode::Reference),
        (Predictor::DdpmCache, DrawMode::Sparse),
    ] {
        tch::manual_seed(1);
        let den = ModelDenoiser::new(&dit, &diff);
        let spec = SampleSpec {
            predictor,
            steps,
            eps: 1e-5,
            noise_removal: true,
            batch: 1,
            length: len,
            draws,
            temperature: 1.0,
            top_p: 1.0,
            confidence: mdlm::sample::ConfidenceRule::Schedule,
            held: None,
            cache_rows: false,
        };
        let mut u = TorchUniforms { kind: Kind::Double };
        sync(device);
        let start = Instant::now();
        let out = sample::sample(&den, &diff, &spec, device, &mut u, false, &mut || {}).unwrap();
        sync(device);
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{predictor:?} ({draws:?} draws): {steps} steps, L={len}: {} denoiser calls, {secs:.2} s",
            out.forward_calls
        );
        results.push((out.forward_calls, secs));
    }
    println!(
        "ddpm_cache vs ddpm (reference draws): {:.2}x fewer denoiser calls, {:.2}x faster; with sparse draws {:.2}x faster than ddpm",
        results[0].0 as f64 / results[1].0 as f64,
        results[0].1 / results[1].1,
        results[0].1 / results[2].1
    );
}
