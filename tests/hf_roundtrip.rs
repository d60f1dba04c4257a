//! Checkpoints out and back in: an own checkpoint exported as a Hugging Face MDLM folder evaluates
//! to the same numbers through `backbone=hf_dit`, from the folder and from a hub-layout cache.

mod support;

use support::*;

fn nll(dir: &std::path::Path) -> f64 {
    let m: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    m["val/nll"].as_f64().unwrap()
}

#[test]
fn export_hf_then_evaluate_as_hf_dit() {
    let tmp = TempDir::new("hfrt");
    shakespeare_cache(tmp.path());
    let run = tmp.path().join("run");
    let mut a = args(&["train"], tiny_overrides(&run));
    a.extend([
        "trainer.max_steps=3".to_string(),
        "trainer.val_check_interval=100".to_string(),
    ]);
    assert!(mdlm(tmp.path(), &a).status.success());
    let ckpt = format!(
        "eval.checkpoint_path={}",
        run.join("checkpoints/last.safetensors").display()
    );

    let out = tmp.path().join("hf");
    let mut e = args(
        &["export-hf", "--out", out.to_str().unwrap()],
        tiny_overrides(&tmp.path().join("x")),
    );
    e.push(ckpt.clone());
    let o = mdlm(tmp.path(), &e);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "mdlm");
    assert_eq!(cfg["hidden_dim"], 32);
    assert_eq!(cfg["vocab_size"], 105);

    // Reference numbers: ppl-eval of the own checkpoint (EMA weights).
    let mut p = args(&["ppl-eval"], tiny_overrides(&tmp.path().join("own")));
    p.push(ckpt);
    assert!(mdlm(tmp.path(), &p).status.success());
    let own = nll(&tmp.path().join("own"));

    // The exported folder, by path.
    let mut h = args(
        &["ppl-eval", "backbone=hf_dit"],
        tiny_overrides(&tmp.path().join("hfdir")),
    );
    h.push(format!("eval.checkpoint_path={}", out.display()));
    let o = mdlm(tmp.path(), &h);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(nll(&tmp.path().join("hfdir")), own);

    // The same folder as a hub repo in an offline cache, by repo id.
    let cache = tmp.path().join("hub");
    let snap = cache.join("models--someone--tiny-mdlm/snapshots/0123abc");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(cache.join("models--someone--tiny-mdlm/refs")).unwrap();
    std::fs::write(
        cache.join("models--someone--tiny-mdlm/refs/main"),
        "0123abc",
    )
    .unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(out.join(f), snap.join(f)).unwrap();
    }
    let mut r = args(
        &[
            "ppl-eval",
            "backbone=hf_dit",
            "eval.checkpoint_path=someone/tiny-mdlm",
        ],
        tiny_overrides(&tmp.path().join("hfrepo")),
    );
    r.sort_by_key(|s| s.starts_with("hydra")); // order does not matter to the composer
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mdlm"))
        .args(&r)
        .env("MDLM_CACHE", tmp.path())
        .env("HF_HUB_CACHE", &cache)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(nll(&tmp.path().join("hfrepo")), own);

    // A revision: the commit the snapshot is named after resolves; an unknown one does not.
    let mut r = args(
        &[
            "ppl-eval",
            "backbone=hf_dit",
            "eval.checkpoint_path=someone/tiny-mdlm@0123abc",
        ],
        tiny_overrides(&tmp.path().join("hfrev")),
    );
    r.sort_by_key(|s| s.starts_with("hydra"));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mdlm"))
        .args(&r)
        .env("MDLM_CACHE", tmp.path())
        .env("HF_HUB_CACHE", &cache)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(nll(&tmp.path().join("hfrev")), own);
    let mut r = args(
        &[
            "ppl-eval",
            "backbone=hf_dit",
            "eval.checkpoint_path=someone/tiny-mdlm@v9",
        ],
        tiny_overrides(&tmp.path().join("hfbadrev")),
    );
    r.sort_by_key(|s| s.starts_with("hydra"));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mdlm"))
        .args(&r)
        .env("MDLM_CACHE", tmp.path())
        .env("HF_HUB_CACHE", &cache)
        .output()
        .unwrap();
    assert!(error_line(&o).contains("someone/tiny-mdlm@v9"));

    // A repo that is not in the cache: one line naming it.
    let mut m = args(
        &[
            "sample-eval",
            "backbone=hf_dit",
            "eval.checkpoint_path=someone/absent",
        ],
        tiny_overrides(&tmp.path().join("m")),
    );
    m.sort_by_key(|s| s.starts_with("hydra"));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mdlm"))
        .args(&m)
        .env("MDLM_CACHE", tmp.path())
        .env("HF_HUB_CACHE", &cache)
        .output()
        .unwrap();
    let line = error_line(&o);
    assert!(line.contains("someone/absent"), "{line}");
}
