//! The training-curve check (issue 12): mdlm trained on the blocks and configuration the original
//! was trained on for a committed reference curve (`tests/ref_curves/NAME.json`, made by
//! `benches/ref/curves.sh`), its validation NELBO (EMA weights, whole validation split) compared
//! with the original's at every evaluation. Shared by `tests/train_curve.rs` (the CI-sized DiT
//! check) and `benches/train_curve.rs` (every curve, printed side by side).
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// One committed configuration; its shape must equal the flags `benches/ref/curves.sh` gives the
/// original for the same name.
pub struct CurveSpec {
    pub name: &'static str,
    /// mdlm overrides selecting the architecture.
    pub arch: &'static [&'static str],
    pub steps: u64,
}

pub const DIT_CI: CurveSpec = CurveSpec {
    name: "dit_ci",
    arch: &["backbone=dit", "model=tiny-char", "parameterization=subs"],
    steps: 300,
};
pub const DIT_FULL: CurveSpec = CurveSpec {
    name: "dit_full",
    arch: &["backbone=dit", "model=tiny-char", "parameterization=subs"],
    steps: 600,
};
pub const AR: CurveSpec = CurveSpec {
    name: "ar",
    arch: &["backbone=ar", "model=small-ar", "parameterization=ar"],
    steps: 600,
};
pub const DIMAMBA: CurveSpec = CurveSpec {
    name: "dimamba",
    arch: &[
        "backbone=dimamba",
        "model=tiny-dimamba",
        "parameterization=subs",
    ],
    steps: 300,
};
pub const ALL: [&CurveSpec; 4] = [&DIT_CI, &DIT_FULL, &AR, &DIMAMBA];
/// What the bench runs when no name is given. DiMamba only when named: on the project's 2-core
/// machine mdlm trained it at about 15 s a step and the original's CPU path (mamba-ssm's
/// pure-torch scan) took 410 s for one step, so `tests/ref_curves/dimamba.json` is not made
/// here: the original needs its CUDA kernels for a curve of that length.
pub const DEFAULT: [&CurveSpec; 3] = [&DIT_CI, &DIT_FULL, &AR];

/// The original's curve, pooled over its seeds.
pub struct RefCurve {
    pub steps: Vec<u64>,
    pub mean: Vec<f64>,
    pub se: Vec<f64>,
    pub final_mean: f64,
    pub final_se: f64,
    pub seeds: usize,
    /// sha256 of the train and validation block files, comma-joined.
    pub data_sha256: String,
}

pub fn ref_curve_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ref_curves")
        .join(format!("{name}.json"))
}

pub fn load_ref(name: &str) -> RefCurve {
    let path = ref_curve_path(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (made by benches/ref/curves.sh)", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).expect("reference curve JSON");
    let f64s = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .unwrap_or_else(|| panic!("{k} missing"))
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    RefCurve {
        steps: v["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect(),
        mean: f64s("val_nelbo_mean"),
        se: f64s("val_nelbo_se"),
        final_mean: v["final"]["mean"].as_f64().expect("final.mean"),
        final_se: v["final"]["se"].as_f64().expect("final.se"),
        seeds: v["seeds"].as_array().map_or(0, |s| s.len()),
        data_sha256: v["data"]["sha256"].as_str().unwrap_or("").to_string(),
    }
}

/// The configuration of `benches/ref/curves.sh`, as mdlm overrides.
pub fn overrides(spec: &CurveSpec, seed: u64, run_dir: &Path) -> Vec<String> {
    let mut o: Vec<String> = spec.arch.iter().map(|s| s.to_string()).collect();
    o.extend(
        [
            "data=shakespeare",
            "model.hidden_size=128",
            "model.cond_dim=64",
            "model.n_blocks=4",
            "model.n_heads=4",
            "model.length=128",
            "model.dropout=0.1",
            "loader.global_batch_size=32",
            "loader.eval_global_batch_size=32",
            "optim.lr=3e-4",
            "lr_scheduler=constant_warmup",
            "lr_scheduler.num_warmup_steps=100",
            "trainer.val_check_interval=100",
            "trainer.limit_val_batches=1.0",
            "trainer.accelerator=cpu",
            "callbacks.checkpoint_every_n_steps.every_n_train_steps=1000000",
        ]
        .map(String::from),
    );
    o.push(format!("trainer.max_steps={}", spec.steps));
    o.push(format!("seed={seed}"));
    o.push(format!("hydra.run.dir={}", run_dir.display()));
    o
}

/// Trains with the crate's `mdlm` binary and returns the validation NELBO at every evaluation,
/// `(step, nats)`.
pub fn train_mdlm(
    cache: &Path,
    spec: &CurveSpec,
    seed: u64,
    run_dir: &Path,
    threads: usize,
) -> Vec<(u64, f64)> {
    let mut args = vec!["train".to_string()];
    args.extend(overrides(spec, seed, run_dir));
    let o = super::mdlm_env(cache, &[("OMP_NUM_THREADS", threads.to_string())], &args);
    assert!(
        o.status.success(),
        "mdlm train failed:\n{}",
        super::stderr(&o)
    );
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|r| Some((r["step"].as_u64()?, r.get("val/nll")?.as_f64()?)))
        .collect()
}

/// sha256 of the prepared train and validation blocks, as `train_ref.py` records them.
pub fn blocks_sha256(cache: &Path) -> String {
    ["train", "validation"]
        .iter()
        .map(|split| {
            let p = cache.join(format!("data/shakespeare/char-L128-{split}.bin"));
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            format!("{:x}", Sha256::digest(&bytes))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The pass line for a final NELBO: 2% above the original's mean, or 3 standard errors of it,
/// whichever is larger.
pub fn limit(r: &RefCurve) -> f64 {
    r.final_mean + (0.02 * r.final_mean).max(3.0 * r.final_se)
}

/// Both curves side by side, with mdlm's over the original's at each step.
pub fn table(r: &RefCurve, ours: &[(u64, f64)]) -> String {
    let mut s = format!(
        "{:>6}  {:>22}  {:>8}  {:>7}\n",
        "step", "original (mean ± se)", "mdlm", "ratio"
    );
    for (i, step) in r.steps.iter().enumerate() {
        let Some((_, m)) = ours.iter().find(|(s, _)| s == step) else {
            continue;
        };
        s += &format!(
            "{step:>6}  {:>13.4} ± {:.4}  {m:>8.4}  {:>7.4}\n",
            r.mean[i],
            r.se[i],
            m / r.mean[i]
        );
    }
    s
}
