//! The two steps the original is measured on (`../shared/refbench`), as the trainer and the
//! sampler run them: a training step split into its phases (forward+loss, backward+clip, AdamW,
//! EMA) and a ddpm step (median over a 64-step sampling run), each with its wall time, and the ops
//! of one step — `aten::` ops not nested in another, counted by `mdlm::profile` with the rule the
//! original's counts use (its counts, fixed by the shape, are those of the refbench README).
//!
//! `cargo bench --bench step [-- --iters N --shape base|small --rounds R]`; `MDLM_BENCH_DEVICE=cuda`
//! on a GPU box, `MDLM_BENCH_QUICK=1` for a smoke run, `MDLM_BENCH_OPS=1` for per-op tables.
//! With `MDLM_REF=<the original's tree> MDLM_REF_PY=<its python>` (`setup_ref.sh` prints both),
//! the original's `bench_ref.py` runs in the same process tree, alternated with ours for `R`
//! rounds at the `base` shape, and the times are printed as ratios measured in this one run.
//! Shapes: `base` is DiT 256/4/4, cond 64, L128, batch 16, vocabulary 65 + mask, dropout 0.1
//! (ddpm: batch 8, 64 steps); `small` is 768/12/12, cond 128, L128, batch 2, the GPT-2
//! vocabulary + mask.

mod common;

use common::sync;
use mdlm::backbone::Precision;
use mdlm::model::Model;
use mdlm::profile::Recorder;
use mdlm::sample::categorical::TorchUniforms;
use mdlm::sample::ddpm::{self, DrawMode};
use mdlm::sample::{self, ModelDenoiser, Predictor, SampleSpec, StepAt};
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
    },
];

const PHASES: [&str; 4] = ["forward+loss", "backward+clip", "optimizer", "ema"];
const LEN: i64 = 128;

fn main() {
    let env = common::env();
    let mut iters = if env.quick { 2 } else { 8 };
    let mut rounds = 3;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iters" => iters = args.next().and_then(|n| n.parse().ok()).expect("--iters N"),
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--rounds R")
            }
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
    let original = Original::from_env();
    for s in SHAPES
        .iter()
        .filter(|s| only.as_deref().is_none_or(|o| o == s.name))
    {
        count_ops(s, env.device, env.precision);
        match (&original, s.name) {
            (Some(o), "base") => side_by_side(s, o, env.device, env.precision, iters, rounds),
            _ => {
                let t = train_times(s, env.device, env.precision, iters);
                println!("{} training step, batch {}: {}", s.name, s.batch, t.show());
                let d = ddpm_time(s, env.device, env.precision);
                println!("{} ddpm step, batch {}: {d:.4} s", s.name, s.sample_batch);
            }
        }
    }
}

/// Seconds of a training step by phase (medians), as both sides report them.
struct TrainTimes {
    phases: [f64; 4],
}

impl TrainTimes {
    fn total(&self) -> f64 {
        self.phases.iter().sum()
    }

    fn show(&self) -> String {
        let split: Vec<String> = PHASES
            .iter()
            .zip(&self.phases)
            .map(|(p, t)| format!("{p} {t:.3}"))
            .collect();
        format!("{:.3} s ({})", self.total(), split.join(" / "))
    }
}

/// The original's `bench_ref.py`, run as a child process at the same shape and thread count.
struct Original {
    python: String,
    tree: String,
    script: std::path::PathBuf,
}

impl Original {
    fn from_env() -> Option<Original> {
        let tree = std::env::var("MDLM_REF").ok()?;
        let python = std::env::var("MDLM_REF_PY").ok()?;
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/refbench/bench_ref.py");
        Some(Original {
            python,
            tree,
            script,
        })
    }

    /// (training step by phase, ddpm step median) of one run of the original.
    fn run(&self, s: &Shape, iters: usize) -> (TrainTimes, f64) {
        let n = |v: i64| v.to_string();
        let out = std::process::Command::new(&self.python)
            .arg(&self.script)
            .args(["--ref", &self.tree, "--fast-attn", "--predictors", "ddpm"])
            .args([
                "--hidden",
                &n(s.hidden),
                "--blocks",
                &n(s.blocks),
                "--heads",
                &n(s.heads),
            ])
            .args([
                "--cond",
                &n(s.cond),
                "--length",
                &n(LEN),
                "--vocab",
                &n(s.vocab - 1),
            ])
            .args(["--batch", &n(s.batch), "--sample-batch", &n(s.sample_batch)])
            .args(["--sample-steps", "64", "--warmup", "2"])
            .args(["--train-steps", &iters.to_string()])
            .args(["--threads", &tch::get_num_threads().to_string()])
            .stderr(std::process::Stdio::null())
            .output()
            .expect("running the original's bench_ref.py");
        assert!(
            out.status.success(),
            "bench_ref.py failed: {:?}",
            out.status
        );
        let line = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(line.trim()).expect("bench_ref.py JSON");
        let parts = &v["train"]["median_parts"];
        let f = |x: &serde_json::Value| x.as_f64().expect("a number in bench_ref.py's JSON");
        let phases = [
            f(&parts["forward_loss_s"]),
            f(&parts["backward_clip_s"]),
            f(&parts["adamw_s"]),
            f(&parts["ema_update_s"]),
        ];
        (
            TrainTimes { phases },
            f(&v["sample"]["ddpm"]["step_median_s"]),
        )
    }
}

/// Rounds of the original then mdlm, each timing a training step and a ddpm step; the ratios
/// are of medians over the rounds.
fn side_by_side(
    s: &Shape,
    o: &Original,
    device: Device,
    precision: Precision,
    iters: usize,
    rounds: usize,
) {
    let (mut tr, mut dr) = (Vec::new(), Vec::new());
    for r in 1..=rounds {
        let (ref_train, ref_ddpm) = o.run(s, iters);
        let ours = train_times(s, device, precision, iters);
        let ddpm = ddpm_time(s, device, precision);
        println!("round {r}: original training step {}", ref_train.show());
        println!("round {r}: mdlm     training step {}", ours.show());
        println!("round {r}: ddpm step original {ref_ddpm:.4} s, mdlm {ddpm:.4} s");
        tr.push(ours.total() / ref_train.total());
        dr.push(ddpm / ref_ddpm);
    }
    println!(
        "{} side by side, {rounds} rounds: training step mdlm/original {:.2}x (rounds {}), ddpm step {:.2}x (rounds {})",
        s.name,
        median(&tr),
        list(&tr),
        median(&dr),
        list(&dr)
    );
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn model(s: &Shape, device: Device, precision: Precision, dropout: f64) -> Model {
    tch::manual_seed(0);
    let cfg = common::dit_config(s.hidden, s.blocks, s.heads, s.cond, s.vocab, dropout);
    Model::dit(&cfg, precision, device)
}

/// The trainer's optimizer step (one micro-batch), phase by phase.
struct TrainRig {
    m: Model,
    diff: mdlm::diffusion::Diffusion,
    params: Vec<(String, Tensor)>,
    opt: AdamW,
    ema: Ema,
    x0: Tensor,
    mask: Tensor,
}

impl TrainRig {
    fn new(s: &Shape, device: Device, precision: Precision) -> TrainRig {
        let m = model(s, device, precision, 0.1);
        let params = m.params();
        TrainRig {
            diff: common::subs_diffusion(s.vocab),
            opt: AdamW::new(&params, AdamWConfig::default()),
            ema: Ema::new(&params, 0.9999),
            x0: Tensor::randint(s.vocab - 1, [s.batch, LEN], (Kind::Int64, device)),
            mask: Tensor::ones([s.batch, LEN], (Kind::Float, device)),
            params,
            m,
        }
    }

    /// One step; `phase(k, f)` runs phase `k`.
    fn step(&mut self, phase: &mut dyn FnMut(usize, &mut dyn FnMut())) {
        let mut loss = None;
        let (m, diff, x0, mask) = (&self.m, &self.diff, &self.x0, &self.mask);
        let (opt, ema, params) = (&mut self.opt, &mut self.ema, &self.params);
        phase(0, &mut || {
            opt.zero_grad().unwrap();
            loss = Some(
                m.batch_loss(diff, x0, mask, true, mdlm::model::Rows::Whole)
                    .unwrap()
                    .loss,
            );
        });
        phase(1, &mut || {
            loss.take().unwrap().backward();
            clip_grad_norm(params, 1.0).unwrap();
        });
        phase(2, &mut || opt.step().unwrap());
        phase(3, &mut || ema.update(params).unwrap());
    }
}

/// Medians of each phase over `iters` steps after 2 warm-up steps.
fn train_times(s: &Shape, device: Device, precision: Precision, iters: usize) -> TrainTimes {
    let mut rig = TrainRig::new(s, device, precision);
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
    for i in 0..iters + 2 {
        rig.step(&mut |k, f| {
            sync(device);
            let t0 = Instant::now();
            f();
            sync(device);
            if i >= 2 {
                secs[k].push(t0.elapsed().as_secs_f64());
            }
        });
    }
    let mut phases = [0.0; 4];
    for (p, v) in phases.iter_mut().zip(&secs) {
        *p = median(v);
    }
    TrainTimes { phases }
}

/// Median seconds per step of a 64-step ddpm sampling run from the fully masked prior, as the
/// original's bench times its `_ddpm_update` calls.
fn ddpm_time(s: &Shape, device: Device, precision: Precision) -> f64 {
    let m = model(s, device, precision, 0.1);
    let diff = common::subs_diffusion(s.vocab);
    let den = ModelDenoiser::new(m.backbone(), &diff);
    let spec = SampleSpec {
        noise_removal: false,
        ..SampleSpec::plain(Predictor::Ddpm, 64, s.sample_batch, LEN)
    };
    let mut u = TorchUniforms { kind: Kind::Double };
    let mut run = || {
        let mut secs = Vec::new();
        let mut last = Instant::now();
        sample::sample(&den, &diff, &spec, device, &mut u, false, &mut || {
            sync(device);
            secs.push(last.elapsed().as_secs_f64());
            last = Instant::now();
        })
        .unwrap();
        secs
    };
    run(); // warm-up
    median(&run())
}

/// Ops of one training step (after 2 warm-up steps) and of one ddpm step at t = 0.5 from a fully
/// masked batch, beside the original's counts.
fn count_ops(s: &Shape, device: Device, precision: Precision) {
    let mut rig = TrainRig::new(s, device, precision);
    for _ in 0..2 {
        rig.step(&mut |_, f| f());
    }
    let mut rec = Recorder::start().expect("profiler");
    rig.step(&mut |k, f| rec.span(PHASES[k], &mut *f));
    report_ops(s, "training step", &rec.stop(), s.ref_ops.0);

    let den = ModelDenoiser::new(rig.m.backbone(), &rig.diff);
    let xt = Tensor::full([s.sample_batch, LEN], s.vocab - 1, (Kind::Int64, device));
    let t = Tensor::full([s.sample_batch, 1], 0.5, (Kind::Float, device));
    let mut u = TorchUniforms { kind: Kind::Double };
    let at = StepAt {
        den: &den,
        diff: &rig.diff,
        x: &xt,
        t: &t,
        dt: 1.0 / 64.0,
    };
    let _ = tch::no_grad(|| ddpm::step(at, DrawMode::Reference, &mut u));
    let mut rec = Recorder::start().expect("profiler");
    rec.span("ddpm step", || {
        let _ = tch::no_grad(|| ddpm::step(at, DrawMode::Reference, &mut u));
    });
    report_ops(s, "ddpm step", &rec.stop(), s.ref_ops.1);
}

fn report_ops(s: &Shape, what: &str, r: &mdlm::profile::Recording, reference: f64) {
    let spans: Vec<&str> = if what == "training step" {
        PHASES.to_vec()
    } else {
        vec![what]
    };
    let per: Vec<f64> = spans
        .iter()
        .map(|p| r.ops_per(p).1.values().map(|s| s.count).sum())
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

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
