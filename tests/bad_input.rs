//! Each kind of bad input named in the brief ends in one `error:` line that names the cause, a
//! non-zero exit, and leaves existing checkpoints untouched.

mod support;

use support::*;

#[test]
fn unknown_config_key_names_it_and_suggests() {
    let tmp = TempDir::new("badkey");
    let out = mdlm(tmp.path(), &args(&["train", "loader.batchsize=16"], vec![]));
    let line = error_line(&out);
    assert!(
        line.contains("loader.batchsize") && line.contains("loader.batch_size"),
        "{line}"
    );
    let out = mdlm(tmp.path(), &args(&["train", "model=smal"], vec![]));
    let line = error_line(&out);
    assert!(line.contains("smal") && line.contains("small"), "{line}");
}

#[test]
fn default_data_is_missing_offline_and_points_at_the_preset() {
    let tmp = TempDir::new("nodata");
    let out = mdlm(
        tmp.path(),
        &args(
            &[
                "train",
                &format!("hydra.run.dir={}", tmp.path().join("r").display()),
            ],
            vec![],
        ),
    );
    let line = error_line(&out);
    assert!(
        line.contains("openwebtext") && line.contains("experiment=shakespeare"),
        "{line}"
    );
}

#[test]
fn missing_checkpoint_file_is_named() {
    let tmp = TempDir::new("nofile");
    shakespeare_cache(tmp.path());
    let mut a = args(&["sample-eval"], tiny_overrides(&tmp.path().join("r")));
    a.push("eval.checkpoint_path=/nonexistent/last.safetensors".into());
    let line = error_line(&mdlm(tmp.path(), &a));
    assert!(line.contains("/nonexistent/last.safetensors"), "{line}");
}

#[test]
fn cuda_requested_but_absent() {
    if tch::Cuda::is_available() {
        return; // Only meaningful where there is no GPU.
    }
    let tmp = TempDir::new("cuda");
    shakespeare_cache(tmp.path());
    let mut a = args(&["train"], tiny_overrides(&tmp.path().join("r")));
    a.push("trainer.accelerator=cuda".into());
    let line = error_line(&mdlm(tmp.path(), &a));
    assert!(
        line.contains("trainer.accelerator=cuda") && line.contains("CUDA"),
        "{line}"
    );
}

#[test]
fn wrong_checkpoint_nan_loss_and_checkpoints_stay_intact() {
    let tmp = TempDir::new("wrong");
    shakespeare_cache(tmp.path());
    let run = tmp.path().join("run");
    let ckpt = train_tiny(tmp.path(), &run, 2);
    let before = std::fs::read(&ckpt).unwrap();

    // A checkpoint of another shape: the error names the checkpoint and the mismatch.
    let mut e = args(&["ppl-eval"], tiny_overrides(&tmp.path().join("e")));
    e.extend([
        format!("eval.checkpoint_path={}", ckpt.display()),
        "model.hidden_size=64".into(),
    ]);
    let line = error_line(&mdlm(tmp.path(), &e));
    assert!(
        line.contains("does not fit") && line.contains("shape"),
        "{line}"
    );

    // A file that is not a checkpoint.
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint at all").unwrap();
    let mut j = args(&["ppl-eval"], tiny_overrides(&tmp.path().join("j")));
    j.push(format!("eval.checkpoint_path={}", junk.display()));
    let line = error_line(&mdlm(tmp.path(), &j));
    assert!(line.contains("junk.safetensors"), "{line}");

    // Resuming with an absurd learning rate diverges: the run stops on the NaN/inf loss and the
    // checkpoint it resumed from is byte-identical afterwards.
    let mut n = args(&["train"], tiny_overrides(&run));
    n.extend([
        "trainer.max_steps=50".to_string(),
        "optim.lr=1e30".to_string(),
        "lr_scheduler.num_warmup_steps=0".into(),
        "trainer.gradient_clip_val=null".into(),
    ]);
    let line = error_line(&mdlm(tmp.path(), &n));
    assert!(
        line.contains("training loss is") && line.contains("intact"),
        "{line}"
    );
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        before,
        "the last checkpoint changed"
    );
}

/// A `tokenizer.json` that loads but cannot encode the corpus (a WordPiece vocabulary whose
/// `unk_token` is missing fails on the first unknown word) is one error line naming the file,
/// not a panic from a worker thread.
#[test]
fn a_tokenizer_that_fails_on_the_corpus_is_one_error_line() {
    let tmp = TempDir::new("badtok");
    shakespeare_cache(tmp.path());
    let added = |id: u32, t: &str| serde_json::json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(0, "[CLS]"), added(1, "[SEP]"), added(2, "[PAD]")],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100,
                  "vocab": {"[CLS]": 0, "[SEP]": 1, "[PAD]": 2, "the": 3}}
    });
    let path = tmp.path().join("broken-tokenizer.json");
    std::fs::write(&path, tok.to_string()).unwrap();
    let mut a = args(&["train"], tiny_overrides(&tmp.path().join("run")));
    a.extend([
        format!("data.tokenizer_name_or_path={}", path.display()),
        "trainer.max_steps=1".to_string(),
    ]);
    let line = error_line(&mdlm(tmp.path(), &a));
    assert!(
        line.contains("broken-tokenizer.json") && line.contains("failed on"),
        "{line}"
    );
}

#[test]
fn without_home_or_a_cache_variable_the_data_cache_is_not_guessed() {
    let tmp = TempDir::new("nohome");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mdlm"))
        .args(["train", "experiment=shakespeare", "trainer.max_steps=1"])
        .arg(format!(
            "hydra.run.dir={}",
            tmp.path().join("run").display()
        ))
        .env("OMP_NUM_THREADS", "1")
        .env_remove("HOME")
        .env_remove("MDLM_CACHE")
        .env_remove("XDG_CACHE_HOME")
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let line = error_line(&o);
    assert!(
        line.contains("MDLM_CACHE, XDG_CACHE_HOME and HOME are all unset"),
        "{line}"
    );
    assert!(!tmp.path().join(".cache").exists());
}
