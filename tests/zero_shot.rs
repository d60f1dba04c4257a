//! The zero-shot table: one ppl-eval command over several data groups (GPT-2 tokens from an
//! offline hub cache, real corpora from ../shared/data), each row equal to its own single run.

mod support;

use std::process::Command;
use support::*;

fn run(tmp: &std::path::Path, hub: &std::path::Path, a: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mdlm"))
        .args(a)
        .env("MDLM_CACHE", tmp)
        .env("HF_HUB_CACHE", hub)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap()
}

#[test]
fn ppl_eval_over_several_data_groups_prints_one_table() {
    let tmp = TempDir::new("zeroshot");
    let d = tmp.path().join("data");
    for (group, src, file) in [
        ("wikitext2", "wikitext-2/valid.txt", "valid.txt"),
        ("ptb", "ptb/ptb.valid.txt", "ptb.valid.txt"),
        (
            "lambada",
            "lambada/lambada_test.jsonl",
            "lambada_test.jsonl",
        ),
    ] {
        std::fs::create_dir_all(d.join(group).join("raw")).unwrap();
        std::fs::copy(
            shared_data().join(src),
            d.join(group).join("raw").join(file),
        )
        .unwrap();
    }
    let hub = tmp.path().join("hub");
    let snap = hub.join("models--gpt2/snapshots/abc123");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(hub.join("models--gpt2/refs")).unwrap();
    std::fs::write(hub.join("models--gpt2/refs/main"), "abc123").unwrap();
    std::fs::copy(
        shared_data().join("../assets/tokenizers/gpt2/tokenizer.json"),
        snap.join("tokenizer.json"),
    )
    .unwrap();

    // A tiny GPT-2-vocabulary model trained for two steps on LAMBADA.
    let run_dir = tmp.path().join("run");
    let mut t = args(&["train", "data=lambada"], tiny_overrides(&run_dir));
    t.extend([
        "trainer.max_steps=2".to_string(),
        "trainer.val_check_interval=100".to_string(),
    ]);
    let o = run(tmp.path(), &hub, &t);
    assert!(o.status.success(), "{}", stderr(&o));
    let ck = format!(
        "eval.checkpoint_path={}",
        run_dir.join("checkpoints/last.safetensors").display()
    );

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
    let o = run(tmp.path(), &hub, &p);
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
    let o = run(tmp.path(), &hub, &s);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(single.join("metrics.jsonl"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let nll: f64 = rows[2][2].parse().unwrap();
    assert_eq!(nll, m["val/nll"].as_f64().unwrap());
}
