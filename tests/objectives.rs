//! The reference's baseline commands, end to end on the built-in corpus at tiny size: each trains,
//! writes a checkpoint, gets a ppl-eval figure and produces samples.

mod support;

use support::*;

fn run_objective(tag: &str, objective: &[&str], sampling: &[&str]) {
    let tmp = TempDir::new(tag);
    shakespeare_cache(tmp.path());
    let with = |cmd: &str, dir: &str, extra: &[String]| -> Vec<String> {
        let mut a: Vec<String> = vec![cmd.to_string()];
        a.extend(objective.iter().map(|s| s.to_string()));
        a.extend(tiny_overrides(&tmp.path().join(dir)));
        a.extend(extra.iter().cloned());
        a
    };
    let out = mdlm(
        tmp.path(),
        &with(
            "train",
            "run",
            &[
                "trainer.max_steps=4".into(),
                "trainer.val_check_interval=4".into(),
            ],
        ),
    );
    assert!(
        out.status.success(),
        "{tag}: train failed:\n{}",
        stderr(&out)
    );
    let ckpt = tmp.path().join("run/checkpoints/last.safetensors");
    assert!(ckpt.exists(), "{tag}: no checkpoint");
    let ck = format!("eval.checkpoint_path={}", ckpt.display());

    let out = mdlm(
        tmp.path(),
        &with("ppl-eval", "eval", std::slice::from_ref(&ck)),
    );
    assert!(
        out.status.success(),
        "{tag}: ppl-eval failed:\n{}",
        stderr(&out)
    );
    let m: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(tmp.path().join("eval/metrics.jsonl"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let ppl = m["val/ppl"].as_f64().unwrap();
    // Better than nothing, worse than perfect: 1 < ppl, and finite.
    assert!(ppl.is_finite() && ppl > 1.0, "{tag}: ppl {ppl}");

    let mut extra = vec![
        ck,
        "sampling.num_sample_batches=1".to_string(),
        "loader.eval_global_batch_size=2".to_string(),
    ];
    extra.extend(sampling.iter().map(|s| s.to_string()));
    let out = mdlm(tmp.path(), &with("sample-eval", "samples", &extra));
    assert!(
        out.status.success(),
        "{tag}: sample-eval failed:\n{}",
        stderr(&out)
    );
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(tmp.path().join("samples/samples.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(rows.len(), 2, "{tag}");
    for r in &rows {
        let toks = r["tokens"].as_array().unwrap();
        assert!(toks.len() >= 32, "{tag}: {} tokens", toks.len());
        // The mask token (id 4 in the char vocabulary) never survives sampling.
        assert!(
            toks.iter().all(|t| t.as_i64().unwrap() != 4),
            "{tag}: mask token in a sample"
        );
    }
}

#[test]
fn ar_baseline() {
    run_objective(
        "obj-ar",
        &["parameterization=ar", "backbone=ar", "model=tiny-ar"],
        &[],
    );
}

#[test]
fn sedd_with_the_analytic_sampler() {
    run_objective(
        "obj-sedd",
        &["parameterization=sedd", "time_conditioning=True"],
        &["sampling.predictor=analytic", "sampling.steps=8"],
    );
}

#[test]
fn d3pm_discrete_time() {
    run_objective(
        "obj-d3pm",
        &["parameterization=d3pm", "T=1000"],
        &["sampling.predictor=ddpm", "sampling.steps=8"],
    );
}

#[test]
fn subs_discrete_time() {
    run_objective(
        "obj-subs-t",
        &["parameterization=subs", "T=1000"],
        &["sampling.steps=8"],
    );
}

#[test]
fn subs_semi_autoregressive_sampling() {
    run_objective(
        "obj-semi-ar",
        &[],
        &[
            "sampling.semi_ar=true",
            "sampling.stride_length=8",
            "sampling.num_strides=2",
            "sampling.steps=4",
        ],
    );
}
