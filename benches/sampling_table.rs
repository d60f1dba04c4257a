//! The sampler table of the README, measured in one run on one checkpoint: for each sampler and
//! step count, seconds per sample, denoiser calls per batch (with ddpm_cache's per-row cache a
//! call may cover only the rows that changed), mean unigram entropy of the samples
//! (nats; degenerate, repetitive text scores low), and gen-PPL when an evaluator is given; then
//! the ddpm_cache / ddpm and first_hitting / ddpm time ratios at T = 1000.
//!
//! `MDLM_BENCH_CKPT=<last.safetensors>` picks the checkpoint (default: the newest
//! `outputs/shakespeare/*/*/checkpoints/last.safetensors`, which `scripts/run-default.sh`
//! makes), `MDLM_BENCH_GEN_PPL_MODEL=<folder or cached repo>` adds gen-PPL, `MDLM_BENCH_DEVICE=cuda`
//! runs on the GPU, `MDLM_BENCH_QUICK=1` a smoke run. Extra overrides for every run (e.g. the
//! experiment the checkpoint was trained with) go in `MDLM_BENCH_OVERRIDES` (default
//! `experiment=shakespeare`).

use clap::Parser;
use std::path::{Path, PathBuf};

fn newest_default_checkpoint() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("outputs/shakespeare");
    let mut found: Vec<PathBuf> = Vec::new();
    for day in std::fs::read_dir(&root).ok()?.flatten() {
        for time in std::fs::read_dir(day.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let c = time.path().join("checkpoints/last.safetensors");
            if c.is_file() {
                found.push(c);
            }
        }
    }
    found.sort();
    found.pop()
}

/// Mean over samples of the entropy (nats) of each sample's token histogram.
fn unigram_entropy(rows: &[Vec<u32>]) -> f64 {
    let mut total = 0.0;
    for r in rows {
        let mut counts = std::collections::HashMap::new();
        for t in r {
            *counts.entry(t).or_insert(0usize) += 1;
        }
        let n = r.len() as f64;
        total -= counts
            .values()
            .map(|&c| {
                let p = c as f64 / n;
                p * p.ln()
            })
            .sum::<f64>();
    }
    total / rows.len().max(1) as f64
}

fn main() {
    let quick = std::env::var_os("MDLM_BENCH_QUICK").is_some();
    let Some(ckpt) = std::env::var_os("MDLM_BENCH_CKPT")
        .map(PathBuf::from)
        .or_else(newest_default_checkpoint)
    else {
        println!(
            "sampling_table: no checkpoint; run scripts/run-default.sh first or set MDLM_BENCH_CKPT"
        );
        return;
    };
    let gen_ppl_model = std::env::var("MDLM_BENCH_GEN_PPL_MODEL").ok();
    let device = match std::env::var("MDLM_BENCH_DEVICE").as_deref() {
        Ok("cuda") => "cuda",
        _ => "cpu",
    };
    let base: Vec<String> = std::env::var("MDLM_BENCH_OVERRIDES")
        .unwrap_or_else(|_| "experiment=shakespeare".into())
        .split_whitespace()
        .map(String::from)
        .collect();
    let (samples, batch): (usize, usize) = if quick { (4, 4) } else { (32, 16) };
    let long = if quick { 64 } else { 1000 };
    let runs: Vec<(&str, usize, Vec<&str>)> = vec![
        ("ddpm", 128, vec![]),
        ("ddpm", long, vec![]),
        ("ddpm_cache", 128, vec![]),
        ("ddpm_cache", long, vec![]),
        ("ddpm_cache", long, vec!["sampling.cache_rows=false"]),
        ("analytic", 128, vec![]),
        ("first_hitting", 0, vec![]),
        ("confidence", 32, vec![]),
        ("confidence", 128, vec![]),
        ("ddpm_cache", long, vec!["sampling.top_p=0.9"]),
    ];
    let out_root = std::env::temp_dir().join(format!("mdlm-sampling-table-{}", std::process::id()));
    println!(
        "checkpoint {} on {device}, {samples} samples per row (batch {batch})",
        ckpt.display()
    );
    println!(
        "| sampler | steps | s / sample | denoiser calls / batch | unigram entropy | gen-PPL |"
    );
    println!("|---|---|---|---|---|---|");
    let mut seconds = std::collections::HashMap::new();
    for (i, (predictor, steps, extra)) in runs.iter().enumerate() {
        let mut args: Vec<String> = vec!["mdlm".into(), "sample-eval".into()];
        args.extend(base.iter().cloned());
        args.extend([
            format!("eval.checkpoint_path={}", ckpt.display()),
            format!("sampling.predictor={predictor}"),
            format!("sampling.steps={}", (*steps).max(1)),
            format!("sampling.num_samples={samples}"),
            format!("loader.eval_global_batch_size={batch}"),
            format!("trainer.accelerator={device}"),
            format!("hydra.run.dir={}", out_root.join(i.to_string()).display()),
            "sampling.num_sample_log=0".into(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        if let Some(m) = &gen_ppl_model {
            args.push("eval.compute_generative_perplexity=true".into());
            args.push(format!("eval.gen_ppl_eval_model_name_or_path={m}"));
        }
        let cli = mdlm::cli::Cli::parse_from(&args);
        let cfg = cli.config().expect("config");
        let report = match mdlm::cmd::sample_eval::run(cfg, None) {
            Ok(Some(r)) => r,
            Ok(None) => unreachable!("one process is rank 0"),
            Err(e) => {
                println!("| {predictor} | {steps} | failed: {e:#} | | | |");
                continue;
            }
        };
        let batches = samples.div_ceil(batch);
        let per_sample = report.seconds / report.texts.len() as f64;
        let label = if extra.is_empty() {
            predictor.to_string()
        } else {
            format!("{predictor} ({})", extra.join(", "))
        };
        println!(
            "| {label} | {} | {per_sample:.3} | {:.0} | {:.3} | {} |",
            if *predictor == "first_hitting" {
                "—".to_string()
            } else {
                steps.to_string()
            },
            report.forward_calls as f64 / batches as f64,
            unigram_entropy(&report.tokens),
            report.gen_ppl.map_or("—".into(), |g| format!("{g:.1}")),
        );
        if extra.is_empty() && (*steps == long || *predictor == "first_hitting") {
            seconds.insert(predictor.to_string(), report.seconds);
        }
    }
    let ratio = |a: &str, b: &str| match (seconds.get(a), seconds.get(b)) {
        (Some(x), Some(y)) => format!("{:.2}", x / y),
        _ => "n/a".into(),
    };
    println!(
        "time ratios at T={long}: ddpm / ddpm_cache {}x, ddpm / first_hitting {}x",
        ratio("ddpm", "ddpm_cache"),
        ratio("ddpm", "first_hitting")
    );
    let _ = std::fs::remove_dir_all(&out_root);
}
