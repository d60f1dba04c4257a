//! Cost of one reverse step per predictor on the reference's `tiny` DiT (hidden 512, 8 blocks,
//! 8 heads, GPT-2 vocabulary, L = 128, batch 4, random weights), and of a semi-autoregressive run.
//! A step is a denoiser pass (unless ddpm_cache can reuse the last one) plus a categorical draw
//! over `[B, L, V]`; the analytic step adds its score / transition arithmetic on top.
//!
//! `cargo bench --bench samplers` (`MDLM_BENCH_DEVICE=cuda` on a GPU box; `MDLM_BENCH_QUICK=1`
//! for a smoke run).

mod common;

use common::{sync, time};
use mdlm::backbone::{Dit, DitConfig};

use mdlm::sample::categorical::TorchUniforms;
use mdlm::sample::ddpm::DrawMode;
use mdlm::sample::semi_ar::{self, SemiArSpec};
use mdlm::sample::{ModelDenoiser, StepAt, analytic, ddpm, ddpm_cache};
use std::time::Instant;
use tch::{Kind, Tensor, nn};

const VOCAB: i64 = 50258;
const LENGTH: i64 = 128;
const BATCH: i64 = 4;

fn main() {
    let common::Env {
        device,
        precision,
        quick,
    } = common::env();
    let (warmup, iters) = match (quick, device.is_cuda()) {
        (true, _) => (1, 1),
        (false, false) => (1, 3),
        (false, true) => (2, 10),
    };
    println!(
        "device {device:?}, precision {precision:?}, torch threads {}, tiny DiT (512/8/8), V={VOCAB}, L={LENGTH}, B={BATCH}",
        tch::get_num_threads()
    );

    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let cfg = DitConfig {
        vocab_size: VOCAB,
        hidden_size: 512,
        cond_dim: 128,
        n_blocks: 8,
        n_heads: 8,
        dropout: 0.0,
        mlp_ratio: 4,
        frequency_embedding_size: 256,
        rotary_base: 10000.0,
    };
    let dit = Dit::new(vs.root() / "backbone", &cfg, precision);
    let diff = common::subs_diffusion(VOCAB);
    let den = ModelDenoiser::new(&dit, &diff);
    // Half the positions masked, as midway through a run.
    let tokens = Tensor::randint(VOCAB - 1, [BATCH, LENGTH], (Kind::Int64, device));
    let masked = Tensor::rand([BATCH, LENGTH], (Kind::Float, device)).lt(0.5);
    let xt = tokens.masked_fill(&masked, VOCAB - 1);
    let t = Tensor::full([BATCH, 1], 0.5, (Kind::Float, device));
    let dt = 1.0 / 128.0;
    // float64 Gumbel draws, the port's default (`sampling.float64_gumbel=true`).
    let mut u = TorchUniforms { kind: Kind::Double };
    let at = StepAt {
        den: &den,
        diff: &diff,
        x: &xt,
        t: &t,
        dt,
    };

    let forward = time(device, warmup, iters, || {
        let _ = tch::no_grad(|| diff.forward(&dit, &xt, &t.reshape([-1]), false));
    });
    let ddpm_step = time(device, warmup, iters, || {
        let _ = ddpm::step(at, DrawMode::Reference, &mut u);
    });
    let cache_miss = time(device, warmup, iters, || {
        let _ = ddpm_cache::step(at, None, DrawMode::Reference, &mut u);
    });
    let (p_x0, _) = ddpm_cache::step(at, None, DrawMode::Reference, &mut u);
    let cache_hit = time(device, warmup, iters, || {
        let _ = ddpm_cache::step(at, Some(p_x0.shallow_clone()), DrawMode::Reference, &mut u);
    });
    let analytic_step = time(device, warmup, iters, || {
        let _ = analytic::step(at, &mut u);
    });
    let denoiser_step = time(device, warmup, iters, || {
        let _ = analytic::denoise(&den, &diff, &xt, &t, &mut u);
    });
    let ms = |s: f64| s * 1e3;
    println!("denoiser forward alone:      {:8.1} ms", ms(forward));
    println!("ddpm step:                   {:8.1} ms", ms(ddpm_step));
    println!("ddpm_cache step, cache miss: {:8.1} ms", ms(cache_miss));
    println!("ddpm_cache step, cache hit:  {:8.1} ms", ms(cache_hit));
    println!("analytic step:               {:8.1} ms", ms(analytic_step));
    println!("analytic denoiser step:      {:8.1} ms", ms(denoiser_step));
    println!(
        "analytic / ddpm: {:.2}x; analytic overhead over a forward: {:.1} ms, ddpm's: {:.1} ms",
        analytic_step / ddpm_step,
        ms(analytic_step - forward),
        ms(ddpm_step - forward)
    );

    // Semi-AR: num_strides = 2 (three windows), each emitting `stride` tokens; dt = 1 / steps as
    // the reference's generate_samples passes it. On CPU a full-vocabulary step costs seconds, so
    // the grid is coarse there.
    let steps = match (quick, device.is_cuda()) {
        (true, _) => 8,
        (false, false) => 16,
        (false, true) => 128,
    };
    let spec = SemiArSpec {
        batch: BATCH,
        length: LENGTH,
        stride_length: LENGTH / 4,
        num_strides: 2,
        dt: 1.0 / steps as f64,
    };
    tch::manual_seed(1);
    let den = ModelDenoiser::new(&dit, &diff);
    sync(device);
    let start = Instant::now();
    let out = semi_ar::sample_semi_ar(&den, &diff, &spec, device, &mut u).unwrap();
    sync(device);
    let secs = start.elapsed().as_secs_f64();
    let windows = spec.num_strides + 1;
    let n_steps = windows * (steps + 1);
    println!(
        "semi-AR: {windows} windows x {} ddpm_cache steps (dt=1/{steps}), stride {}: {} tokens/row, {} denoiser calls, {:.2} s ({:.1} ms/step, {:.0} generated tokens/s)",
        steps + 1,
        spec.stride_length,
        out.tokens.size()[1],
        out.forward_calls,
        secs,
        secs * 1e3 / n_steps as f64,
        (BATCH * out.tokens.size()[1]) as f64 / secs
    );
}
