//! Perplexity in CI: a fixed small training budget on the built-in preset, then the zero-shot
//! table on the local corpora (character tokens), compared with the baseline committed in
//! `tests/ppl_baseline.json`. A regression beyond the tolerance fails with the table printed.
//!
//! Everything is seeded (training draws, validation draws), so on one machine the numbers repeat
//! exactly; the tolerance absorbs other thread counts and CPUs. Refresh the baseline after an
//! intended change with `MDLM_WRITE_PPL_BASELINE=1 cargo test --test ppl_regression`.

mod support;

use support::*;

const TOLERANCE: f64 = 0.03; // relative, on the NLL

#[test]
fn zero_shot_nll_matches_the_committed_baseline() {
    let tmp = TempDir::new("pplreg");
    shakespeare_cache(tmp.path());
    local_corpora(tmp.path());
    let budget = [
        "experiment=shakespeare",
        "model.length=64",
        "loader.global_batch_size=16",
        "loader.eval_global_batch_size=32",
        "trainer.accelerator=cpu",
        "seed=1",
    ];
    let run = tmp.path().join("run");
    let mut t = args(&["train"], vec![format!("hydra.run.dir={}", run.display())]);
    t.extend(budget.iter().map(|s| s.to_string()));
    t.extend(
        [
            "trainer.max_steps=150",
            "trainer.val_check_interval=1000",
            "callbacks.checkpoint_every_n_steps.every_n_train_steps=1000",
        ]
        .map(String::from),
    );
    let o = mdlm(tmp.path(), &t);
    assert!(o.status.success(), "{}", stderr(&o));

    let table = tmp.path().join("table");
    let mut p = args(
        &["ppl-eval", "data=shakespeare,wikitext2,ptb,lambada"],
        vec![format!("hydra.run.dir={}", table.display())],
    );
    p.extend(budget.iter().map(|s| s.to_string()));
    p.extend([
        "data.tokenizer_name_or_path=char".to_string(),
        "trainer.limit_val_batches=16".to_string(),
        format!(
            "eval.checkpoint_path={}",
            run.join("checkpoints/last.safetensors").display()
        ),
    ]);
    let o = mdlm(tmp.path(), &p);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(table.join("zero_shot.json")).unwrap())
            .unwrap();
    let got: std::collections::BTreeMap<String, f64> = rows
        .iter()
        .map(|r| {
            (
                r["data"].as_str().unwrap().to_string(),
                r["nll"].as_f64().unwrap(),
            )
        })
        .collect();

    let baseline_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ppl_baseline.json");
    if std::env::var_os("MDLM_WRITE_PPL_BASELINE").is_some() {
        std::fs::write(
            &baseline_path,
            serde_json::to_string_pretty(&got).unwrap() + "\n",
        )
        .unwrap();
        return;
    }
    let baseline: std::collections::BTreeMap<String, f64> =
        serde_json::from_str(&std::fs::read_to_string(&baseline_path).unwrap()).unwrap();
    let mut report = String::from("dataset       nll      baseline  change\n");
    let mut bad = false;
    for (k, base) in &baseline {
        let now = got.get(k).copied().unwrap_or(f64::NAN);
        let change = (now - base) / base;
        bad |= change.is_nan() || change > TOLERANCE;
        report.push_str(&format!(
            "{k:<12} {now:>8.4} {base:>9.4}  {:+.2}%\n",
            change * 100.0
        ));
    }
    println!("{report}");
    assert!(
        !bad,
        "validation NLL regressed beyond {:.0}%:\n{report}",
        TOLERANCE * 100.0
    );
}
