//! The reference's own Lightning checkpoint (`../shared/parity/lightning_ckpt/model.ckpt`, a tiny
//! DiT over 49 tokens + mask) used from the command line, with a word-level tokenizer of the same
//! size: sample-eval on its EMA and raw weights; its truncated copy is refused in one line.

mod support;

use support::*;

fn tokenizer_json(dir: &std::path::Path) -> std::path::PathBuf {
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["[PAD]", "[BOS]", "[EOS]"].iter().enumerate() {
        vocab.insert(w.to_string(), i.into());
    }
    for i in 3..49 {
        vocab.insert(format!("w{i}"), i.into());
    }
    let tok = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[PAD]"}
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, tok.to_string()).unwrap();
    path
}

#[test]
fn sample_eval_from_a_reference_lightning_checkpoint() {
    let tmp = TempDir::new("lightning");
    let tok = tokenizer_json(tmp.path());
    let ckpt = shared_data().join("../parity/lightning_ckpt/model.ckpt");
    let base = |run: &str, ckpt: &std::path::Path| -> Vec<String> {
        [
            "sample-eval".to_string(),
            format!("data.tokenizer_name_or_path={}", tok.display()),
            "model.hidden_size=32".into(),
            "model.cond_dim=16".into(),
            "model.n_blocks=2".into(),
            "model.n_heads=4".into(),
            "model.length=16".into(),
            "sampling.steps=4".into(),
            "sampling.num_sample_batches=1".into(),
            "loader.eval_global_batch_size=2".into(),
            "trainer.accelerator=cpu".into(),
            format!("eval.checkpoint_path={}", ckpt.display()),
            format!("hydra.run.dir={}", tmp.path().join(run).display()),
        ]
        .to_vec()
    };
    for (run, extra) in [("ema", None), ("raw", Some("eval.disable_ema=true"))] {
        let mut a = base(run, &ckpt);
        a.extend(extra.map(String::from));
        let o = mdlm(tmp.path(), &a);
        assert!(o.status.success(), "{run}: {}", stderr(&o));
        assert!(
            stdout(&o).contains("Lightning checkpoint"),
            "{}",
            stdout(&o)
        );
        let rows: Vec<serde_json::Value> =
            std::fs::read_to_string(tmp.path().join(run).join("samples.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        assert_eq!(rows.len(), 2);
        for r in &rows {
            let toks = r["tokens"].as_array().unwrap();
            assert_eq!(toks.len(), 16);
            // The appended mask (49) never survives; every token is a word of the vocabulary.
            assert!(toks.iter().all(|t| t.as_i64().unwrap() < 49), "{toks:?}");
        }
    }
    let truncated = shared_data().join("../parity/lightning_ckpt/model_truncated.ckpt");
    let line = error_line(&mdlm(tmp.path(), &base("bad", &truncated)));
    assert!(line.contains("model_truncated.ckpt"), "{line}");
}
