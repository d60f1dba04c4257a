//! The zero-shot table: one ppl-eval command over several data groups (GPT-2 tokens from an
//! offline hub cache, real corpora from ../shared/data), each row equal to its own single run.

mod support;

use support::*;

#[test]
fn ppl_eval_over_several_data_groups_prints_one_table() {
    let tmp = TempDir::new("zeroshot");
    // A tiny GPT-2-vocabulary model trained for two steps on LAMBADA.
    let (hub, ckpt) = zero_shot_setup(tmp.path());
    let run = |a: &[String]| mdlm_env(tmp.path(), &[("HF_HUB_CACHE", &hub)], a);
    let ck = format!("eval.checkpoint_path={}", ckpt.display());

    let table_dir = tmp.path().join("table");
    let mut p = args(
        &[
            "ppl-eval",
            "data=wikitext2,ptb,lambada",
            "trainer.limit_val_batches=2",
        ],
        tiny_overrides(&table_dir),
    );
    p.push(ck.clone());
    let o = run(&p);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(table_dir.join("zero_shot.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(
        rows.iter().map(|r| r[0]).collect::<Vec<_>>(),
        ["wikitext2", "ptb", "lambada"]
    );
    for r in &rows {
        let ppl: f64 = r[4].parse().unwrap();
        assert!(ppl.is_finite() && ppl > 1.0, "{r:?}");
    }
    assert!(stdout(&o).contains("dataset"), "no table printed");

    // The lambada row equals a run of its own.
    let single = tmp.path().join("single");
    let mut s = args(
        &["ppl-eval", "data=lambada", "trainer.limit_val_batches=2"],
        tiny_overrides(&single),
    );
    s.push(ck);
    let o = run(&s);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = metrics_of(&single);
    let nll: f64 = rows[2][2].parse().unwrap();
    assert_eq!(nll, m["val/nll"].as_f64().unwrap());
}
