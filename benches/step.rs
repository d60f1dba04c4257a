//! The two steps the original is measured on (`../shared/refbench`), as the trainer and the
//! sampler run them: a training step split into its phases (forward+loss, backward+clip, AdamW,
//! EMA) and one ddpm step, each with its wall time and its ops — `aten::` ops not nested in
//! another, counted by `mdlm::profile` with the rule the original's counts use.
//!
//! `cargo bench --bench step [-- --iters N] [-- --shape base|small]`; `MDLM_BENCH_DEVICE=cuda` on
//! a GPU box, `MDLM_BENCH_QUICK=1` for a smoke run. Shapes: `base` is DiT 256/4/4, cond 64, L128,
//! batch 16, vocabulary 65 + mask, dropout 0.1 (ddpm: batch 8, 64 steps); `small` is 768/12/12,
//! cond 128, L128, batch 2, the GPT-2 vocabulary + mask. The original's figures on this machine
//! kind (same shapes, refbench README) are printed beside ours for the ratio.

mod common;

use common::sync;
use mdlm::backbone::{DitConfig, Precision};
use mdlm::model::Model;
use mdlm::profile::Recorder;
use mdlm::sample::categorical::TorchUniforms;
use mdlm::sample::ddpm::{self, DrawMode};
use mdlm::sample::{ModelDenoiser, StepAt};
use mdlm::train::ema::Ema;
use mdlm::train::optim::{AdamW, AdamWConfig, clip_grad_norm};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

struct Shape {
    name: &'static str,
    hidden: i64,
    blocks: i64,
    heads: i64,
    cond: i64,
    /// Including the mask.
    vocab: i64,
    batch: i64,
    sample_batch: i64,
    /// The original's ops per training step and per ddpm step (refbench, torch.profiler).
    ref_ops: (f64, f64),
    /// The original's seconds per training step and per ddpm step on the 2-core machine kind
    /// (refbench README, 2026-12-03), where measured.
    ref_secs: Option<(f64, f64)>,
}

const SHAPES: [Shape; 2] = [
    Shape {
        name: "base",
        hidden: 256,
        blocks: 4,
        heads: 4,
        cond: 64,
        vocab: 66,
        batch: 16,
        sample_batch: 8,
        ref_ops: (1957.0, 477.0),
        ref_secs: Some((0.60, 0.094)),
    },
    Shape {
        name: "small",
        hidden: 768,
        blocks: 12,
        heads: 12,
        cond: 128,
        vocab: 50258,
        batch: 2,
        sample_batch: 2,
        ref_ops: (5197.0, 1253.0),
        ref_secs: None,
    },
];

const PHASES: [&str; 4] = ["forward+loss", "backward+clip", "optimizer", "ema"];
const LEN: i64 = 128;

fn main() {
    let env = common::env();
    let mut iters = if env.quick { 2 } else { 8 };
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iters" => iters = args.next().and_then(|n| n.parse().ok()).expect("--iters N"),
            "--shape" => only = args.next(),
            _ => {} // cargo bench passes --bench
        }
    }
    println!(
        "device {:?}, precision {:?}, torch threads {}, {iters} timed steps after 2 warm-up steps",
        env.device,
        env.precision,
        tch::get_num_threads()
    );
    for s in SHAPES
        .iter()
        .filter(|s| only.as_deref().is_none_or(|o| o == s.name))
    {
        train_step(s, env.device, env.precision, iters);
        ddpm_step(s, env.device, env.precision, iters);
    }
}

fn model(s: &Shape, device: Device, precision: Precision, dropout: f64) -> Model {
    tch::manual_seed(0);
    let cfg = DitConfig {
        vocab_size: s.vocab,
        hidden_size: s.hidden,
        cond_dim: s.cond,
        n_blocks: s.blocks,
        n_heads: s.heads,
        dropout,
        mlp_ratio: 4,
        frequency_embedding_size: 256,
        rotary_base: 10000.0,
    };
    Model::dit(&cfg, precision, device)
}

/// Seconds of each phase of the trainer's optimizer step (one micro-batch), medians over
/// `iters` steps, and the ops each phase dispatched in one step.
fn train_step(s: &Shape, device: Device, precision: Precision, iters: usize) {
    let m = model(s, device, precision, 0.1);
    let diff = common::subs_diffusion(s.vocab);
    let params = m.params();
    let mut opt = AdamW::new(&params, AdamWConfig::default());
    let mut ema = Ema::new(&params, 0.9999);
    let x0 = Tensor::randint(s.vocab - 1, [s.batch, LEN], (Kind::Int64, device));
    let mask = Tensor::ones([s.batch, LEN], (Kind::Float, device));
    let mut phase_secs: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
    let mut rec: Option<Recorder> = None;
    for i in 0..iters + 2 {
        if i == 2 {
            rec = Some(Recorder::start().expect("profiler"));
        }
        let mut phase = |k: usize, f: &mut dyn FnMut()| {
            sync(device);
            let t0 = Instant::now();
            match rec.as_mut() {
                Some(r) => r.span(PHASES[k], &mut *f),
                None => f(),
            }
            sync(device);
            if i >= 2 {
                phase_secs[k].push(t0.elapsed().as_secs_f64());
            }
        };
        let mut loss = None;
        phase(0, &mut || {
            opt.zero_grad().unwrap();
            loss = Some(m.batch_loss(&diff, &x0, &mask, true, None).unwrap().loss);
        });
        phase(1, &mut || {
            loss.take().unwrap().backward();
            clip_grad_norm(&params, 1.0).unwrap();
        });
        phase(2, &mut || opt.step().unwrap());
        phase(3, &mut || ema.update(&params).unwrap());
        if i == 2 {
            // Ops are counted on the first timed step only: the recorder's own cost stays out of
            // the later steps' times.
            let r = rec.take().unwrap().stop();
            report_ops(s, "training step", &r, s.ref_ops.0);
        }
    }
    let medians: Vec<f64> = phase_secs.iter().map(|v| median(v)).collect();
    let total: f64 = medians.iter().sum();
    let split: Vec<String> = PHASES
        .iter()
        .zip(&medians)
        .map(|(p, t)| format!("{p} {t:.3}"))
        .collect();
    println!(
        "{} training step, batch {}: {total:.3} s ({}){}",
        s.name,
        s.batch,
        split.join(" / "),
        ratio(total, s.ref_secs.map(|r| r.0))
    );
}

/// One ddpm step at t = 0.5 from a half-masked batch, 64-step grid (the original's bench).
fn ddpm_step(s: &Shape, device: Device, precision: Precision, iters: usize) {
    let m = model(s, device, precision, 0.1);
    let diff = common::subs_diffusion(s.vocab);
    let den = ModelDenoiser::new(m.backbone(), &diff);
    let xt = Tensor::full([s.sample_batch, LEN], s.vocab - 1, (Kind::Int64, device));
    let t = Tensor::full([s.sample_batch, 1], 0.5, (Kind::Float, device));
    let mut u = TorchUniforms { kind: Kind::Double };
    let at = StepAt {
        den: &den,
        diff: &diff,
        x: &xt,
        t: &t,
        dt: 1.0 / 64.0,
    };
    let mut secs = Vec::new();
    for i in 0..iters + 2 {
        let rec = (i == 2).then(|| Recorder::start().expect("profiler"));
        let mut rec = rec;
        sync(device);
        let t0 = Instant::now();
        match rec.as_mut() {
            Some(r) => r.span("ddpm step", || {
                let _ = ddpm::step(at, DrawMode::Reference, &mut u);
            }),
            None => {
                let _ = ddpm::step(at, DrawMode::Reference, &mut u);
            }
        }
        sync(device);
        if i > 2 {
            secs.push(t0.elapsed().as_secs_f64());
        }
        if let Some(r) = rec {
            report_ops(s, "ddpm step", &r.stop(), s.ref_ops.1);
        }
    }
    let med = median(&secs);
    println!(
        "{} ddpm step, batch {}: {med:.4} s{}",
        s.name,
        s.sample_batch,
        ratio(med, s.ref_secs.map(|r| r.1))
    );
}

fn report_ops(s: &Shape, what: &str, r: &mdlm::profile::Recording, reference: f64) {
    let spans: Vec<&str> = if what == "training step" {
        PHASES.to_vec()
    } else {
        vec![what]
    };
    let per: Vec<f64> = spans
        .iter()
        .map(|p| r.top_ops_per(p).1.values().sum())
        .collect();
    let total: f64 = per.iter().sum();
    let split: Vec<String> = spans
        .iter()
        .zip(&per)
        .map(|(p, n)| format!("{p} {n:.0}"))
        .collect();
    println!(
        "{} {what} ops: {total:.0} ({}); original {reference:.0}: {:.2}x",
        s.name,
        split.join(" / "),
        total / reference
    );
    if std::env::var_os("MDLM_BENCH_OPS").is_some() {
        for p in &spans {
            print!("{}", r.table(p, 25));
        }
    }
}

fn ratio(ours: f64, reference: Option<f64>) -> String {
    match reference {
        Some(r) => format!("; original {r:.3} s on this machine kind: {:.2}x", ours / r),
        None => String::new(),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
