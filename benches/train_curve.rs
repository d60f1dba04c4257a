//! Training curves beside the original's (issue 12): mdlm trained on the blocks and configuration
//! of each committed reference curve (`tests/ref_curves/*.json`, made by `benches/ref/curves.sh`),
//! validation NELBO at every evaluation for both, the ratio, and the verdict the CI check
//! (`tests/train_curve.rs`, `dit_ci` only) applies.
//!
//! `cargo bench --bench train_curve [-- NAME ...] [--seeds 0,1,2] [--threads N] [--reuse]`; NAME of
//! dit_ci, dit_full, ar, dimamba (default: all but dimamba). Runs go to `target/train-curve/NAME-SEED/`;
//! `--reuse` keeps a finished one there (mdlm resumes it at its end) instead of training afresh,
//! and a curve whose reference file is missing is printed alone.

#[path = "../tests/support/mod.rs"]
mod support;

use support::curve::{
    ALL, CurveSpec, DEFAULT, blocks_sha256, limit, load_ref, ref_curve_path, table, train_mdlm,
};
use support::full_shakespeare_cache;

fn main() {
    let mut names: Vec<String> = Vec::new();
    let mut seeds: Vec<u64> = vec![0];
    let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut reuse = false;
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
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--threads N")
            }
            "--reuse" => reuse = true,
            "--bench" => {}
            other => names.push(other.to_string()),
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/train-curve");
    full_shakespeare_cache(&root);
    let chosen: Vec<&CurveSpec> = if names.is_empty() {
        DEFAULT.to_vec()
    } else {
        ALL.into_iter()
            .filter(|s| names.iter().any(|n| n == s.name))
            .collect()
    };
    for spec in chosen {
        let r = ref_curve_path(spec.name)
            .exists()
            .then(|| load_ref(spec.name));
        let mut finals = Vec::new();
        for &seed in &seeds {
            let started = std::time::Instant::now();
            let run = root.join(format!("{}-{seed}", spec.name));
            if !reuse {
                let _ = std::fs::remove_dir_all(&run);
            }
            let ours = train_mdlm(&root, spec, seed, &run, threads);
            let shown = match &r {
                Some(r) => {
                    let same = blocks_sha256(&root) == r.data_sha256;
                    assert!(same, "other blocks than the original's");
                    table(r, &ours)
                }
                None => format!(
                    "(no {} yet) mdlm: {ours:?}\n",
                    ref_curve_path(spec.name).display()
                ),
            };
            println!(
                "{} seed {seed} ({} steps, {:.0} s, {threads} threads):\n{shown}",
                spec.name,
                spec.steps,
                started.elapsed().as_secs_f64(),
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
        let Some(r) = &r else { continue };
        println!(
            "{}: final val NELBO mdlm {mean:.4} ± {se:.4} ({} seeds) vs the original {:.4} ± {:.4} ({} seeds): ratio {:.4}, limit {:.4} -> {}\n",
            spec.name,
            finals.len(),
            r.final_mean,
            r.final_se,
            r.seeds,
            mean / r.final_mean,
            limit(r),
            if mean <= limit(r) { "pass" } else { "FAIL" }
        );
    }
}
