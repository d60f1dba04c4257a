//! The binary as a user types it: train → ppl-eval → sample-eval on a tiny config.

mod support;

use support::*;

#[test]
fn train_then_ppl_eval_then_sample_eval() {
    let tmp = TempDir::new("cli");
    shakespeare_cache(tmp.path());
    let run = tmp.path().join("run");
    let mut train_args = args(&["train"], tiny_overrides(&run));
    train_args.extend(
        [
            "trainer.max_steps=6",
            "trainer.val_check_interval=3",
            "callbacks.checkpoint_every_n_steps.every_n_train_steps=3",
        ]
        .map(String::from),
    );
    let out = mdlm(tmp.path(), &train_args);
    assert!(out.status.success(), "train failed:\n{}", stderr(&out));
    let ckpt = run.join("checkpoints/last.safetensors");
    assert!(ckpt.exists());
    assert!(run.join("checkpoints/step-0000003.safetensors").exists());
    assert!(run.join("checkpoints/step-0000006.safetensors").exists());
    assert!(run.join("config.yaml").exists());

    // Metrics: 6 training lines, validations after steps 3 and 6.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows.iter()
            .filter(|r| r.get("train/loss").is_some())
            .count(),
        6
    );
    let vals: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.get("val/nll").and_then(|v| v.as_f64()))
        .collect();
    assert_eq!(vals.len(), 2);
    assert!(vals.iter().all(|v| v.is_finite() && *v > 0.0));

    // ppl-eval on the same EMA weights, batches and seeded draws reproduces the last validation.
    let eval_dir = tmp.path().join("eval");
    let mut ppl_args = args(&["ppl-eval"], tiny_overrides(&eval_dir));
    ppl_args.push(format!("eval.checkpoint_path={}", ckpt.display()));
    let out = mdlm(tmp.path(), &ppl_args);
    assert!(out.status.success(), "ppl-eval failed:\n{}", stderr(&out));
    let m = metrics_of(&eval_dir);
    let nll = m["val/nll"].as_f64().unwrap();
    assert!(
        (nll - vals[1]).abs() < 1e-9,
        "ppl-eval nll {nll} vs training's last validation {}",
        vals[1]
    );
    assert!((m["val/ppl"].as_f64().unwrap() - nll.exp()).abs() < 1e-9);
    assert!(stdout(&out).contains("ppl"));

    // sample-eval: num_sample_batches x eval_batch_size rows of model.length tokens, none masked.
    let sample_dir = tmp.path().join("samples");
    let mut s_args = args(&["sample-eval"], tiny_overrides(&sample_dir));
    s_args.extend([
        format!("eval.checkpoint_path={}", ckpt.display()),
        "sampling.steps=16".into(),
        "sampling.num_sample_batches=2".into(),
        "loader.eval_global_batch_size=3".into(),
    ]);
    let out = mdlm(tmp.path(), &s_args);
    assert!(
        out.status.success(),
        "sample-eval failed:\n{}",
        stderr(&out)
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(sample_dir.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    let readable = std::fs::read_to_string(sample_dir.join("samples.txt")).unwrap();
    for l in &lines {
        let toks = l["tokens"].as_array().unwrap();
        assert_eq!(toks.len(), 32);
        // noise_removal leaves no mask token (id 4 in the char vocabulary).
        assert!(toks.iter().all(|t| t.as_i64().unwrap() != 4));
        assert!(readable.contains(l["text"].as_str().unwrap()));
    }
    // stdout shows the first sampling.num_sample_log samples (2 by default).
    assert!(stdout(&out).contains(lines[1]["text"].as_str().unwrap()));
    assert!(stdout(&out).contains("denoiser calls"));
}

#[test]
fn cfg_flag_prints_composed_config_with_overrides() {
    let tmp = TempDir::new("cfg");
    let out = mdlm(
        tmp.path(),
        &args(
            &[
                "train",
                "--cfg",
                "model=small",
                "data=openwebtext-split",
                "loader.batch_size=16",
            ],
            vec![],
        ),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let yaml = stdout(&out);
    assert!(yaml.contains("hidden_size: 768"), "{yaml}");
    assert!(yaml.contains("batch_size: 16"), "{yaml}");
    assert!(yaml.contains("mode: train"), "{yaml}");
}
