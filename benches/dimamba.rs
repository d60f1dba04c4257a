//! Speed of the DiMamba path, in one run so ratios are comparable:
//! 1. the selective scan, forward + backward, chunked (several chunk sizes; on CPU the loop
//!    kernel, plus the closed form a GPU runs at chunk 64) vs the sequential oracle, at
//!    L = 128 / 512 / 1024, and what each form keeps for the backward pass;
//! 2. one training step (subs loss, forward + backward) of DiMamba vs the DiT at equal width, and
//!    their ratio.
//!
//! `cargo bench --bench dimamba` (set `MDLM_BENCH_DEVICE=cuda` on a GPU box; `MDLM_BENCH_QUICK=1`
//! for a smoke run).

mod common;

use common::sync;
use mdlm::backbone::scan::{ScanMode, chunked_closed_form, selective_scan, spans};
use mdlm::backbone::{Backbone, Dimamba, DimambaConfig, Dit, DitConfig};
use mdlm::diffusion::Draws;
use std::time::Instant;
use tch::{Device, Kind, Tensor, nn};

/// Fastest of `iters` timed calls after `warmup` untimed ones, in ms. The minimum rather than the
/// mean: on a shared 2-core VM single calls of these allocation-heavy loops vary several-fold
/// from run to run, and the minimum is what the code costs when nothing interferes.
fn best_ms<F: FnMut()>(device: Device, warmup: usize, iters: usize, mut f: F) -> f64 {
    for _ in 0..warmup {
        f();
    }
    (0..iters)
        .map(|_| {
            sync(device);
            let start = Instant::now();
            f();
            sync(device);
            start.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

struct ScanInputs {
    u: Tensor,
    delta: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
}

/// Value ranges as in a freshly initialised Mamba layer: delta in ~[1e-3, 1e-1] after softplus,
/// A = -[1..N].
fn scan_inputs(bs: i64, len: i64, d: i64, n: i64, device: Device) -> ScanInputs {
    let opts = (Kind::Float, device);
    let leaf = |t: Tensor| t.set_requires_grad(true);
    ScanInputs {
        u: leaf(Tensor::randn([bs, len, d], opts)),
        delta: leaf((Tensor::randn([bs, len, d], opts) - 4.0).softplus()),
        a: leaf(
            -Tensor::arange_start(1, n + 1, opts)
                .unsqueeze(0)
                .repeat([d, 1]),
        ),
        b: leaf(Tensor::randn([bs, len, n], opts)),
        c: leaf(Tensor::randn([bs, len, n], opts)),
    }
}

fn scan_step(x: &ScanInputs, scan: impl Fn(&ScanInputs) -> Tensor) {
    for t in [&x.u, &x.delta, &x.a, &x.b, &x.c] {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    scan(x).sum(Kind::Float).backward();
}

/// What the chunked scan keeps for its backward pass besides its inputs, in KiB: one `[B, D, N]`
/// float32 state per span after the first; and what plain autograd over the closed form's ops
/// kept (its five `[B, L, D, N]` products: exp(-S), x, exp(S), the cumulative sum, the states).
fn saved_kib(x: &ScanInputs, chunk: i64) -> (f64, f64) {
    let (bs, len, d) = x.u.size3().unwrap();
    let n = x.a.size()[1];
    let states = (spans(&x.delta, &x.a, chunk).len() as i64 - 1) * bs * d * n;
    let autograd = 5 * bs * len * d * n;
    (states as f64 * 4.0 / 1024.0, autograd as f64 * 4.0 / 1024.0)
}

fn main() {
    let common::Env {
        device,
        precision,
        quick,
    } = common::env();
    let (warmup, iters) = if quick { (0, 1) } else { (1, 3) };
    println!(
        "device {device:?}, precision {precision:?}, torch threads {}",
        tch::get_num_threads()
    );

    // 1. The scan alone: B=2, D_inner=64, N=16.
    let (bs, d, n) = (2, 64, 16);
    println!(
        "\nselective scan, forward + backward, B={bs} D={d} N={n} (ms per call, best of {iters})"
    );
    println!(
        "{:>6} | {:>10} | {:>10} | {:>10} | {:>10} | {:>13} | {:>8} | {:>22}",
        "L",
        "sequential",
        "chunk 16",
        "chunk 64",
        "chunk 256",
        "closed c64",
        "seq/c64",
        "saved KiB c64 (was)"
    );
    let lens: &[i64] = if quick { &[128] } else { &[128, 512, 1024] };
    for &len in lens {
        tch::manual_seed(0);
        let x = scan_inputs(bs, len, d, n, device);
        let mut row = Vec::new();
        for mode in [
            ScanMode::Sequential,
            ScanMode::Chunked(16),
            ScanMode::Chunked(64),
            ScanMode::Chunked(256),
        ] {
            row.push(best_ms(device, warmup, iters, || {
                scan_step(&x, |x| {
                    selective_scan(&x.u, &x.delta, &x.a, &x.b, &x.c, mode)
                })
            }));
        }
        row.push(best_ms(device, warmup, iters, || {
            scan_step(&x, |x| {
                chunked_closed_form(&x.u, &x.delta, &x.a, &x.b, &x.c, 64)
            })
        }));
        let (saved, was) = saved_kib(&x, 64);
        println!(
            "{len:>6} | {:>10.1} | {:>10.1} | {:>10.1} | {:>10.1} | {:>13.1} | {:>7.1}x | {:>22}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[0] / row[2],
            format!("{saved:.0} ({was:.0})")
        );
    }

    // 2. One training step at equal width: hidden 128, 4 blocks, cond 64, a small vocabulary so
    // the backbones dominate.
    let (hidden, blocks, cond, vocab, batch) = (128, 4, 64, 1000, 2);
    println!(
        "\ntraining step (subs loss, forward + backward), hidden {hidden}, {blocks} blocks, vocab {vocab}, B={batch} (ms per step, best of {iters})"
    );
    println!(
        "{:>6} | {:>10} | {:>10} | {:>16} | {:>15}",
        "L", "DiT", "DiMamba", "DiMamba seq scan", "DiMamba / DiT"
    );
    let diff = common::subs_diffusion(vocab);
    let step_lens: &[i64] = if quick { &[128] } else { &[128, 512, 1024] };
    for &len in step_lens {
        tch::manual_seed(0);
        let x0 = Tensor::randint(vocab - 1, [batch, len], (Kind::Int64, device));
        let mask = Tensor::ones([batch, len], (Kind::Float, device));
        let step = |net: &dyn Backbone, vs: &nn::VarStore| {
            let mut params = vs.trainable_variables();
            best_ms(device, warmup, iters, || {
                for p in params.iter_mut() {
                    p.zero_grad();
                }
                let draws = Draws::sample(batch, len, device);
                let parts = diff.loss(net, &x0, &mask, &draws, true).unwrap();
                parts.loss.backward();
            })
        };
        let vs_dit = nn::VarStore::new(device);
        let dit = Dit::new(
            vs_dit.root() / "backbone",
            &DitConfig {
                vocab_size: vocab,
                hidden_size: hidden,
                cond_dim: cond,
                n_blocks: blocks,
                n_heads: 4,
                dropout: 0.1,
                mlp_ratio: 4,
                frequency_embedding_size: 256,
                rotary_base: 10000.0,
            },
            precision,
        );
        let t_dit = step(&dit, &vs_dit);
        let vs_mamba = nn::VarStore::new(device);
        let mut mamba = Dimamba::new(
            vs_mamba.root() / "backbone",
            &DimambaConfig::reference(vocab, hidden, cond, blocks),
            precision,
        );
        let t_mamba = step(&mamba, &vs_mamba);
        mamba.set_scan(ScanMode::Sequential);
        let t_seq = step(&mamba, &vs_mamba);
        if len == step_lens[0] {
            let count = |vs: &nn::VarStore| -> i64 {
                vs.trainable_variables()
                    .iter()
                    .map(|t| t.numel() as i64)
                    .sum()
            };
            println!(
                "(parameters: DiT {}, DiMamba {})",
                count(&vs_dit),
                count(&vs_mamba)
            );
        }
        println!(
            "{len:>6} | {t_dit:>10.1} | {t_mamba:>10.1} | {t_seq:>16.1} | {:>14.2}x",
            t_mamba / t_dit
        );
    }
}
