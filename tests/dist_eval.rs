//! Data-parallel evaluation over loopback (Gloo): `ppl-eval` on several processes scores the same
//! global eval batches as one process, to the same number (the zero-shot table too), and
//! `sample-eval` on several processes draws distinct batches that rank 0 gathers in order.

mod support;

use std::path::Path;
use support::*;

fn nll_tokens(dir: &Path) -> (f64, f64) {
    let m = metrics_of(dir);
    (
        m["val/nll"].as_f64().unwrap(),
        m["tokens"].as_f64().unwrap(),
    )
}

fn assert_close(a: f64, b: f64, what: &str) {
    let rel = (a - b).abs() / a.abs();
    eprintln!("{what}: one process {a} vs several {b} (rel {rel:.2e})");
    assert!(rel < 1e-5, "{what}: {a} vs {b}");
}

#[test]
fn ppl_eval_on_several_processes_equals_one() {
    let tmp = TempDir::new("dist-ppl");
    shakespeare_cache(tmp.path());
    let ckpt = train_tiny(tmp.path(), &tmp.path().join("run"), 3);
    let ck = format!("eval.checkpoint_path={}", ckpt.display());
    // The whole split in global batches of 6 (3281 blocks: the last batch holds 5 rows, of
    // which the third process holds one), on 1, 2 and 3 processes.
    let eval = |dir: &str, devices: usize| {
        let d = tmp.path().join(dir);
        let mut a = args(&["ppl-eval"], tiny_overrides(&d));
        a.extend([
            ck.clone(),
            "loader.eval_global_batch_size=6".into(),
            "trainer.limit_val_batches=1.0".into(),
            format!("trainer.devices={devices}"),
        ]);
        let o = mdlm(tmp.path(), &a);
        assert!(o.status.success(), "{devices} processes:\n{}", stderr(&o));
        if devices > 1 {
            assert!(stderr(&o).contains(&format!("starting {devices} ranks")));
            assert!(
                stdout(&o).contains(&format!("{devices} processes")),
                "{}",
                stdout(&o)
            );
        }
        d
    };
    let (nll1, tokens1) = nll_tokens(&eval("one", 1));
    assert_eq!(tokens1, 3281.0 * 32.0, "every token of the split is scored");
    for devices in [2, 3] {
        let (nll, tokens) = nll_tokens(&eval(&format!("n{devices}"), devices));
        assert_eq!(tokens, tokens1, "{devices} processes");
        assert_close(nll1, nll, &format!("validation NLL, {devices} processes"));
    }

    // Without hydra.run.dir the ranks resolve the default `outputs/<data>/${now:...}` with the
    // launcher's clock: one run directory, whatever second each rank starts in.
    let cwd = tmp.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let mut a: Vec<String> = args(&["ppl-eval"], tiny_overrides(&cwd))
        .into_iter()
        .filter(|o| !o.starts_with("hydra.run.dir="))
        .collect();
    a.extend([ck.clone(), "trainer.devices=2".into()]);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mdlm"))
        .args(&a)
        .current_dir(&cwd)
        .env("MDLM_CACHE", tmp.path())
        .env("OMP_NUM_THREADS", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("MDLM_NOW")
        .output()
        .unwrap();
    assert!(o.status.success(), "default run dir:\n{}", stderr(&o));
    let days: Vec<_> = std::fs::read_dir(cwd.join("outputs/shakespeare"))
        .unwrap()
        .collect();
    assert_eq!(days.len(), 1);
    let runs: Vec<_> = std::fs::read_dir(days[0].as_ref().unwrap().path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].join("metrics.jsonl").exists());
}

#[test]
fn the_zero_shot_table_on_two_processes_equals_one() {
    let tmp = TempDir::new("dist-zeroshot");
    let (hub, ckpt) = zero_shot_setup(tmp.path());
    let run = |a: &[String]| mdlm_env(tmp.path(), &[("HF_HUB_CACHE", &hub)], a);
    let table = |dir: &str, devices: usize| -> Vec<Vec<String>> {
        let d = tmp.path().join(dir);
        let mut a = args(
            &[
                "ppl-eval",
                "data=wikitext2,ptb,lambada",
                "trainer.limit_val_batches=3",
            ],
            tiny_overrides(&d),
        );
        a.extend([
            format!("eval.checkpoint_path={}", ckpt.display()),
            format!("trainer.devices={devices}"),
        ]);
        let o = run(&a);
        assert!(o.status.success(), "{devices} processes:\n{}", stderr(&o));
        let csv = std::fs::read_to_string(d.join("zero_shot.csv")).unwrap();
        csv.lines()
            .skip(1)
            .map(|l| l.split(',').map(String::from).collect())
            .collect()
    };
    let (one, two) = (table("one", 1), table("two", 2));
    assert_eq!(one.len(), 3);
    assert_eq!(one.len(), two.len());
    for (a, b) in one.iter().zip(&two) {
        assert_eq!(a[0], b[0], "dataset");
        assert_eq!(a[1], b[1], "{}: tokens", a[0]);
        assert_close(
            a[2].parse().unwrap(),
            b[2].parse().unwrap(),
            &format!("{} NLL", a[0]),
        );
    }
}

/// The `tokens` of `<dir>/samples.jsonl`, in file order, with each row's batch.
fn samples(dir: &Path) -> Vec<(u64, Vec<i64>)> {
    std::fs::read_to_string(dir.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| {
            let toks = r["tokens"].as_array().unwrap();
            (
                r["batch"].as_u64().unwrap(),
                toks.iter().map(|t| t.as_i64().unwrap()).collect(),
            )
        })
        .collect()
}

#[test]
fn sample_eval_on_two_processes_gathers_distinct_samples() {
    let tmp = TempDir::new("dist-sample");
    shakespeare_cache(tmp.path());
    let ckpt = train_tiny(tmp.path(), &tmp.path().join("run"), 3);
    // A GPT-2 whose output is uniform: generative perplexity 50257 whatever the samples.
    let gen_ppl = uniform_gen_ppl(&tmp.path().join("evaluator"));
    // Batches of 4 per process: 2 batches for 6 samples, one drawn by each process.
    let sample = |dir: &str, extra: &[&str]| {
        let d = tmp.path().join(dir);
        let mut a = args(&["sample-eval"], tiny_overrides(&d));
        a.extend([
            format!("eval.checkpoint_path={}", ckpt.display()),
            "sampling.num_samples=6".into(),
            "sampling.steps=16".into(),
            "eval.perplexity_batch_size=3".into(),
        ]);
        a.extend(gen_ppl.iter().cloned());
        a.extend(extra.iter().map(|s| s.to_string()));
        let o = mdlm(tmp.path(), &a);
        assert!(o.status.success(), "{dir}:\n{}", stderr(&o));
        samples(&d)
    };
    let two = ["trainer.devices=2", "loader.eval_global_batch_size=8"];
    let first = sample("two", &two);
    assert_eq!(first.len(), 6);
    assert_eq!(
        first.iter().map(|s| s.0).collect::<Vec<_>>(),
        [0, 0, 0, 0, 1, 1],
        "rank 0's batch, then rank 1's"
    );
    for (i, a) in first.iter().enumerate() {
        assert_eq!(a.1.len(), 32);
        for b in &first[i + 1..] {
            assert_ne!(a.1, b.1, "two samples are equal: the ranks shared noise");
        }
    }
    // Generative perplexity over all 6 (rank 0's 4 alone would be one scoring batch of 3).
    let m = metrics_of(&tmp.path().join("two"));
    assert_eq!(m["samples_scored"], 6);
    assert!((m["gen_ppl"].as_f64().unwrap() / 50257.0 - 1.0).abs() < 1e-4);
    // Reproducible: the same seed gives the same 6 samples in the same order ...
    assert_eq!(sample("again", &two), first);
    // ... as does one process drawing the same batches of 4 ...
    assert_eq!(
        sample("one", &["loader.eval_global_batch_size=4"]),
        first,
        "one process drew other samples than two with the same batches"
    );
    let entropy = |dir: &str| metrics_of(&tmp.path().join(dir))["unigram_entropy"].as_f64();
    assert_eq!(entropy("one"), entropy("two"));
    // ... and another seed other samples.
    let mut other = two.to_vec();
    other.push("seed=7");
    assert_ne!(sample("seed7", &other), first);
}
