//! Data parallelism on CPU with Gloo over loopback, at a tiny size:
//! - the training step time of 1 process (whole batch) vs 2 processes (half each), from
//!   `mdlm train` runs of two lengths so start-up cancels out;
//! - gradient accumulation: with 4 micro-batches per optimizer step the gradients are exchanged
//!   once per optimizer step (the trainer's count of its exchanges and all-reduces);
//! - all-reduce throughput (MB/s) for the gradient size of `model=small` (the reference's DiT),
//!   in the 25 MB buckets training uses, between two processes.
//!
//! `cargo bench --bench dist` (`MDLM_BENCH_QUICK=1` for a smoke run). The Shakespeare corpus
//! must be installed (scripts/setup-data.sh). On a 2-core machine two ranks share the cores, so
//! the step-time ratio shows the communication and sharing overhead, not a speed-up.

use mdlm::dist::{self, Backend, Launch, ProcessGroup};
use std::process::Command;
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

const TINY: &[&str] = &[
    "experiment=shakespeare",
    "model.hidden_size=64",
    "model.cond_dim=32",
    "model.n_blocks=2",
    "model.n_heads=2",
    "model.length=64",
    "loader.global_batch_size=16",
    "trainer.accelerator=cpu",
    "trainer.val_check_interval=100000",
    "trainer.log_every_n_steps=100000",
    "callbacks.checkpoint_every_n_steps.every_n_train_steps=100000",
];

fn train_seconds(devices: usize, steps: u64, dir: &std::path::Path) -> f64 {
    let t = Instant::now();
    train(devices, steps, dir, &[]);
    t.elapsed().as_secs_f64()
}

/// `mdlm train` on the tiny model with `devices` processes; its stderr.
fn train(devices: usize, steps: u64, dir: &std::path::Path, extra: &[&str]) -> String {
    let _ = std::fs::remove_dir_all(dir);
    let o = Command::new(env!("CARGO_BIN_EXE_mdlm"))
        .arg("train")
        .args(TINY)
        .args(extra)
        .arg(format!("trainer.devices={devices}"))
        .arg(format!("trainer.max_steps={steps}"))
        .arg(format!("hydra.run.dir={}", dir.display()))
        .env("OMP_NUM_THREADS", "1")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("running mdlm");
    assert!(
        o.status.success(),
        "mdlm train failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Gradient accumulation under data parallelism: 2 processes x 4 micro-batches per optimizer
/// step; the trainer's own count of its gradient exchanges and all-reduces.
fn accumulation(dir: &std::path::Path) {
    let steps = 3;
    let log = train(2, steps, dir, &["loader.batch_size=2"]);
    let line = log
        .lines()
        .find(|l| l.starts_with("gradients exchanged"))
        .unwrap_or_else(|| panic!("no exchange count in the log:\n{log}"));
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let (syncs, opt_steps, micro) = (n[0], n[1], n[2]);
    assert_eq!(opt_steps, steps);
    assert_eq!(
        micro,
        4 * steps,
        "global batch 16 = 2 x 2 processes x accumulate 4"
    );
    assert_eq!(syncs, opt_steps, "{line}");
    println!(
        "gradient accumulation under data parallelism (2 processes x accumulate 4): {line} — communication once per optimizer step, none per micro-batch"
    );
}

/// One rank of the all-reduce measurement (this bench re-run with RANK/WORLD_SIZE set).
fn allreduce_worker(numel: i64, iters: usize) {
    let launch = Launch::from_env()
        .unwrap()
        .expect("worker without RANK/WORLD_SIZE");
    let pg = ProcessGroup::init(&launch, Backend::Gloo, Duration::from_secs(300)).unwrap();
    let bucket = (dist::ddp::DEFAULT_BUCKET_MB * 1e6 / 4.0) as i64;
    let grads = Tensor::ones([numel], (Kind::Float, tch::Device::Cpu));
    pg.barrier().unwrap();
    let mut best = f64::INFINITY;
    for _ in 0..iters {
        pg.barrier().unwrap();
        let t = Instant::now();
        let mut off = 0;
        while off < numel {
            let n = bucket.min(numel - off);
            let mut b = grads.narrow(0, off, n);
            pg.all_reduce_avg(&mut b).unwrap();
            off += n;
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    // Averaging ones leaves ones: a wrong reduction would show here.
    assert_eq!(grads.sum(Kind::Double).double_value(&[]), numel as f64);
    if pg.is_main() {
        let mb = numel as f64 * 4.0 / 1e6;
        println!(
            "all-reduce (Gloo, 2 processes, loopback): {mb:.0} MB of gradients in {} buckets: best {best:.3} s = {:.0} MB/s",
            (numel + bucket - 1) / bucket,
            mb / best
        );
    }
    pg.shutdown().unwrap();
}

/// Trainable parameters of the reference's `small` DiT at the GPT-2 vocabulary (+ mask).
fn small_numel() -> i64 {
    let cfg = mdlm::config::compose(&["model=small".to_string()]).unwrap();
    let m = mdlm::cmd::setup::build_model(&cfg, 50258, tch::Device::Cpu).unwrap();
    m.params().iter().map(|(_, t)| t.numel() as i64).sum()
}

fn main() {
    let quick = std::env::var_os("MDLM_BENCH_QUICK").is_some();
    let iters = if quick { 1 } else { 3 };
    if let Ok(n) = std::env::var("MDLM_BENCH_ALLREDUCE_NUMEL") {
        allreduce_worker(n.parse().unwrap(), iters);
        return;
    }
    let tmp = std::env::temp_dir().join(format!("mdlm-bench-dist-{}", std::process::id()));
    let (short, long) = if quick { (2, 6) } else { (10, 60) };
    for devices in [1, 2] {
        let a = train_seconds(devices, short, &tmp.join("a"));
        let b = train_seconds(devices, long, &tmp.join("b"));
        println!(
            "train step, {devices} process(es), global batch 16 x 64 tokens: {:.1} ms/step ({short} vs {long} steps: {a:.2} s / {b:.2} s)",
            (b - a) / (long - short) as f64 * 1e3
        );
    }
    accumulation(&tmp.join("accumulate"));
    let _ = std::fs::remove_dir_all(&tmp);

    let numel = if quick { 10_000_000 } else { small_numel() };
    let port = dist::launch::free_port().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut kids: Vec<_> = (0..2)
        .map(|r| {
            Command::new(&exe)
                .env("MDLM_BENCH_ALLREDUCE_NUMEL", numel.to_string())
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("OMP_NUM_THREADS", "1")
                .spawn()
                .unwrap()
        })
        .collect();
    for k in &mut kids {
        assert!(k.wait().unwrap().success(), "all-reduce worker failed");
    }
}
