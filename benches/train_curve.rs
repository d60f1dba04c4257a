//! Training curves beside the original's (issue 12): mdlm trained on the blocks and configuration
//! of each committed reference curve (`tests/ref_curves/*.json`, made by `benches/ref/curves.sh`),
//! validation NELBO at every evaluation for both, the ratio, and the verdict the CI check
//! (`tests/train_curve.rs`, `dit_ci` only) applies.
//!
//! `cargo bench --bench train_curve [-- NAME ...] [--seeds 0,1,2]`; NAME of dit_ci, dit_full, ar,
//! dimamba (default: all).

#[path = "../tests/support/mod.rs"]
mod support;

use support::TempDir;
use support::curve::{
    ALL, blocks_sha256, full_shakespeare_cache, limit, load_ref, table, train_mdlm,
};

fn main() {
    let mut names: Vec<String> = Vec::new();
    let mut seeds: Vec<u64> = vec![0];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seeds" => {
                seeds = args
                    .next()
                    .expect("--seeds 0,1,2")
                    .split(',')
                    .map(|s| s.parse().expect("a seed is an integer"))
                    .collect()
            }
            "--bench" => {}
            other => names.push(other.to_string()),
        }
    }
    let tmp = TempDir::new("train-curve");
    full_shakespeare_cache(tmp.path());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    for spec in ALL {
        if !names.is_empty() && !names.iter().any(|n| n == spec.name) {
            continue;
        }
        let r = load_ref(spec.name);
        let mut finals = Vec::new();
        for &seed in &seeds {
            let started = std::time::Instant::now();
            let run = tmp.path().join(format!("{}-{seed}", spec.name));
            let ours = train_mdlm(
                std::path::Path::new(env!("CARGO_BIN_EXE_mdlm")),
                tmp.path(),
                spec,
                seed,
                &run,
                threads,
            );
            assert_eq!(
                blocks_sha256(tmp.path()),
                r.data_sha256,
                "other blocks than the original's"
            );
            println!(
                "{} seed {seed} ({} steps, {:.0} s, {threads} threads):\n{}",
                spec.name,
                spec.steps,
                started.elapsed().as_secs_f64(),
                table(&r, &ours)
            );
            finals.push(ours.last().expect("no validation").1);
        }
        let n = finals.len() as f64;
        let mean = finals.iter().sum::<f64>() / n;
        let se = if finals.len() > 1 {
            (finals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() / n.sqrt()
        } else {
            f64::NAN
        };
        println!(
            "{}: final val NELBO mdlm {mean:.4} ± {se:.4} ({} seeds) vs the original {:.4} ± {:.4} ({} seeds): ratio {:.4}, limit {:.4} -> {}\n",
            spec.name,
            finals.len(),
            r.final_mean,
            r.final_se,
            r.seeds,
            mean / r.final_mean,
            limit(&r),
            if mean <= limit(&r) { "pass" } else { "FAIL" }
        );
    }
}
