//! Models from the Hub end to end: `backbone=hf_dit eval.checkpoint_path=owner/name`, the
//! tokenizer and the gen-PPL evaluator are downloaded into an empty Hugging Face cache from a
//! loopback server that answers as the Hub does (tests/support/hub.rs), found there again without
//! a request, never fetched offline; broken transfers resume; every failure is one line.

mod support;

use mdlm::backbone::{Dit, Precision};
use mdlm::checkpoint::hf::{self, HfMdlmConfig, export_hf};
use mdlm::hub::{Hub, HubClient};
use std::path::{Path, PathBuf};
use std::process::Output;
use support::hub::{HubServer, Repo, dead_endpoint, folder_files, proxied};
use support::*;
use tch::{Device, Tensor, nn};

const SHA: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
const TOKENIZER_SHA: &str = "607a30d783dfa663caf39e06633721c8d4cfcd7e";
const EVAL_SHA: &str = "15ea7e1e3b1b4cdd8c27e1f1a25c3b5fd1e0a6d9";

/// An MDLM over GPT-2's vocabulary (50257 + mask), exported as `mdlm export-hf` writes it, with
/// the extra fields the Hub's `config.json` carries; returns the folder's files.
fn tiny_mdlm(dir: &Path, length: i64) -> Vec<(String, Vec<u8>)> {
    let cfg = HfMdlmConfig {
        vocab_size: 50258,
        model_length: length,
        hidden_dim: 16,
        cond_dim: 8,
        n_blocks: 1,
        n_heads: 2,
        dropout: 0.1,
        time_conditioning: false,
    };
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let _dit = Dit::new(vs.root() / "backbone", &cfg.dit_config(), Precision::F32);
    let tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    export_hf(dir, &cfg, &tensors).unwrap();
    let path = dir.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    c["auto_map"] = serde_json::json!({
        "AutoConfig": "configuration_mdlm.MDLMConfig",
        "AutoModelForMaskedLM": "modeling_mdlm.MDLM"
    });
    c["_name_or_path"] = "kuleshov-group/mdlm-owt".into();
    c["return_dict"] = false.into();
    c["transformers_version"] = "4.38.2".into();
    std::fs::write(&path, serde_json::to_string_pretty(&c).unwrap()).unwrap();
    folder_files(dir)
}

fn gpt2_tokenizer() -> Vec<(String, Vec<u8>)> {
    let json =
        std::fs::read(shared_data().join("../assets/tokenizers/gpt2/tokenizer.json")).unwrap();
    vec![("tokenizer.json".to_string(), json)]
}

fn evaluator(dir: &Path) -> Vec<(String, Vec<u8>)> {
    uniform_gpt2(dir);
    folder_files(dir)
}

/// `sample-eval backbone=hf_dit eval.checkpoint_path=<repo> data=openwebtext-split`, small, in
/// `<root>/<out>`, with the Hub environment `env` over a clean one (no token, offline unset).
fn sample_eval(
    root: &Path,
    out: &str,
    repo: &str,
    extra: &[&str],
    env: &[(&str, String)],
) -> Output {
    let mut a: Vec<String> = [
        "sample-eval",
        "backbone=hf_dit",
        "data=openwebtext-split",
        "model.length=32",
        "sampling.steps=4",
        "sampling.num_sample_batches=1",
        "loader.eval_global_batch_size=2",
        "trainer.accelerator=cpu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(format!("eval.checkpoint_path={repo}"));
    a.push(format!("hydra.run.dir={}", root.join(out).display()));
    a.extend(extra.iter().map(|s| s.to_string()));
    let mut vars: Vec<(&str, String)> = vec![
        ("HF_HUB_CACHE", root.join("hub").display().to_string()),
        ("HF_HOME", root.join("hf-home").display().to_string()),
        ("HF_TOKEN", String::new()),
        ("HF_HUB_OFFLINE", "0".to_string()),
    ];
    vars.extend(env.iter().cloned());
    mdlm_env(root, &vars, &a)
}

fn snapshot(hub: &Path, repo: &str, sha: &str) -> PathBuf {
    hub.join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots")
        .join(sha)
}

/// Files in every `blobs/` under `hub` whose names end with `suffix`.
fn blobs_ending(hub: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for repo in std::fs::read_dir(hub).unwrap() {
        let blobs = repo.unwrap().path().join("blobs");
        if let Ok(entries) = std::fs::read_dir(&blobs) {
            for e in entries {
                let p = e.unwrap().path();
                if p.to_string_lossy().ends_with(suffix) {
                    out.push(p);
                }
            }
        }
    }
    out
}

#[test]
fn sample_eval_fetches_checkpoint_tokenizer_and_evaluator_into_an_empty_cache() {
    if proxied() {
        return;
    }
    let tmp = TempDir::new("hub-e2e");
    let root = tmp.path();
    let served = [
        (
            "kuleshov-group/mdlm-owt",
            SHA,
            tiny_mdlm(&root.join("mdlm"), 32),
        ),
        ("gpt2", TOKENIZER_SHA, gpt2_tokenizer()),
        ("someone/gpt2-eval", EVAL_SHA, evaluator(&root.join("eval"))),
    ];
    let server = HubServer::start(
        served
            .iter()
            .map(|(id, sha, files)| Repo::model(id, sha, files.clone()).lfs())
            .collect(),
    );
    let online = [("HF_ENDPOINT", server.endpoint.clone())];
    let gen_ppl = [
        "eval.compute_generative_perplexity=True",
        "eval.gen_ppl_eval_model_name_or_path=someone/gpt2-eval",
        "eval.perplexity_batch_size=2",
    ];
    let o = sample_eval(root, "s1", "kuleshov-group/mdlm-owt", &gen_ppl, &online);
    assert!(o.status.success(), "{}", stderr(&o));

    // Every served file is in the cache, byte for byte, under the commit the Hub named, and the
    // branch's ref points there.
    let hub = root.join("hub");
    for (id, sha, files) in &served {
        let snap = snapshot(&hub, id, sha);
        for (name, bytes) in files {
            assert_eq!(
                &std::fs::read(snap.join(name)).unwrap(),
                bytes,
                "{id}/{name}"
            );
        }
        let folder = hub.join(format!("models--{}", id.replace('/', "--")));
        assert_eq!(
            std::fs::read_to_string(folder.join("refs/main")).unwrap(),
            *sha
        );
    }
    assert!(blobs_ending(&hub, ".part").is_empty());
    let err = stderr(&o);
    assert!(err.contains("downloaded model.safetensors ("), "{err}");
    let m = metrics_of(&root.join("s1"));
    let ppl = m["gen_ppl"].as_f64().unwrap();
    assert!((ppl / 50257.0 - 1.0).abs() < 1e-4, "gen ppl {ppl}");
    let samples = std::fs::read_to_string(root.join("s1/samples.jsonl")).unwrap();
    assert_eq!(samples.lines().count(), 2);

    // Again: everything comes from the cache, without a single request.
    let before = server.requests().len();
    let o = sample_eval(root, "s2", "kuleshov-group/mdlm-owt", &gen_ppl, &online);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(server.requests().len(), before, "{:#?}", server.requests());
    // Offline, with the endpoint dead besides: the cache is enough.
    for var in ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"] {
        let env = [("HF_ENDPOINT", dead_endpoint()), (var, "1".to_string())];
        let o = sample_eval(root, var, "kuleshov-group/mdlm-owt", &gen_ppl, &env);
        assert!(o.status.success(), "{var}: {}", stderr(&o));
    }
    assert_eq!(server.requests().len(), before);
}

#[test]
fn an_interrupted_download_is_never_taken_for_complete_and_the_next_run_resumes_it() {
    if proxied() {
        return;
    }
    let tmp = TempDir::new("hub-cut");
    let files = tiny_mdlm(&tmp.path().join("mdlm"), 16);
    let weights = files
        .iter()
        .find(|(n, _)| n == "model.safetensors")
        .unwrap()
        .1
        .clone();
    let server = HubServer::start(vec![Repo::model("someone/tiny", SHA, files).lfs()]);
    let cache = tmp.path().join("hub");
    let hub = Hub::online(&cache, HubClient::at(&server.endpoint));

    server.cut_transfers("model.safetensors", 1);
    let e = format!("{:#}", hf::load_with(&hub, "someone/tiny").err().unwrap());
    assert_eq!(e.lines().count(), 1, "{e}");
    for part in [
        "model.safetensors of 'someone/tiny@main'",
        "broke off",
        "resumes",
    ] {
        assert!(e.contains(part), "{part:?} not in: {e}");
    }
    let snap = snapshot(&cache, "someone/tiny", SHA);
    assert!(snap.join("config.json").is_file());
    assert!(std::fs::symlink_metadata(snap.join("model.safetensors")).is_err());
    let parts = blobs_ending(&cache, ".part");
    assert_eq!(parts.len(), 1, "{parts:?}");
    let half = weights.len() / 2;
    assert_eq!(std::fs::metadata(&parts[0]).unwrap().len() as usize, half);
    // What is cached is not a checkpoint yet: offline it is missing, not half-read.
    let e = format!(
        "{:#}",
        hf::load_with(&Hub::offline(&cache), "someone/tiny")
            .err()
            .unwrap()
    );
    assert!(
        e.contains("model.safetensors of 'someone/tiny@main'")
            && e.contains("not in the Hugging Face cache"),
        "{e}"
    );

    // The next run asks for the rest only.
    let m = hf::load_with(&hub, "someone/tiny").unwrap();
    let resumed = format!("/cdn/0/model.safetensors bytes={half}-");
    assert!(
        server.requests().iter().any(|r| r == &resumed),
        "{:#?}",
        server.requests()
    );
    assert_eq!(
        std::fs::read(snap.join("model.safetensors")).unwrap(),
        weights
    );
    assert!(blobs_ending(&cache, ".part").is_empty());
    let exported = Tensor::read_safetensors(tmp.path().join("mdlm/model.safetensors")).unwrap();
    assert_eq!(m.tensors.len(), exported.len());
    for (name, t) in &exported {
        assert!(m.tensors[name].equal(t), "{name}");
    }

    // With retries (the default outside tests), one run gets over a broken transfer.
    let cache2 = tmp.path().join("hub2");
    let mut client = HubClient::at(&server.endpoint);
    client.retries = 2;
    server.cut_transfers("model.safetensors", 1);
    hf::load_with(&Hub::online(&cache2, client), "someone/tiny").unwrap();
    assert_eq!(
        std::fs::read(snapshot(&cache2, "someone/tiny", SHA).join("model.safetensors")).unwrap(),
        weights
    );

    // A server that ignores the resume's Range sends the whole file again after the part: the
    // result is refused and deleted, and the run after that starts clean.
    let cache3 = tmp.path().join("hub3");
    let hub3 = Hub::online(&cache3, HubClient::at(&server.endpoint));
    server.cut_transfers("model.safetensors", 1);
    assert!(hf::load_with(&hub3, "someone/tiny").is_err());
    server.ignore_range(true);
    let e = format!("{:#}", hf::load_with(&hub3, "someone/tiny").err().unwrap());
    server.ignore_range(false);
    assert!(e.contains("came out") && e.contains("deleted"), "{e}");
    let snap3 = snapshot(&cache3, "someone/tiny", SHA);
    assert!(std::fs::symlink_metadata(snap3.join("model.safetensors")).is_err());
    hf::load_with(&hub3, "someone/tiny").unwrap();
    assert_eq!(
        std::fs::read(snap3.join("model.safetensors")).unwrap(),
        weights
    );
}

#[test]
fn hub_failures_are_one_line_naming_the_repo_the_revision_and_the_fix() {
    if proxied() {
        return;
    }
    let tmp = TempDir::new("hub-errors");
    let root = tmp.path();
    let model = tiny_mdlm(&root.join("mdlm"), 32);
    let config_only: Vec<_> = model
        .iter()
        .filter(|(n, _)| n == "config.json")
        .cloned()
        .collect();
    let mut not_mdlm = config_only.clone();
    not_mdlm[0].1 = br#"{"model_type": "llama", "vocab_size": 50258}"#.to_vec();
    not_mdlm.push(("model.safetensors".to_string(), vec![0; 64]));
    let server = HubServer::start(vec![
        Repo::model("gpt2", TOKENIZER_SHA, gpt2_tokenizer()),
        Repo::model("someone/mdlm", SHA, model.clone()).lfs(),
        Repo::model("someone/config-only", SHA, config_only),
        Repo::model("someone/llama", SHA, not_mdlm).lfs(),
        Repo::model("someone/gated", SHA, model)
            .lfs()
            .gated("hf_good"),
    ]);
    let online = [("HF_ENDPOINT", server.endpoint.clone())];
    let line =
        |repo: &str, env: &[(&str, String)]| error_line(&sample_eval(root, "err", repo, &[], env));
    let has = |l: &str, parts: &[&str]| {
        for p in parts {
            assert!(l.contains(p), "{p:?} not in: {l}");
        }
    };
    has(
        &line("nobody/absent", &online),
        &[
            "'nobody/absent' was not found",
            "HF_TOKEN",
            &server.endpoint,
        ],
    );
    has(
        &line("someone/mdlm@v9", &online),
        &["revision 'v9' of 'someone/mdlm'", "someone/mdlm@<revision>"],
    );
    has(
        &line("someone/config-only", &online),
        &[
            "'someone/config-only@main'",
            "has no model.safetensors",
            "it holds: .gitattributes, config.json",
        ],
    );
    // A config that is not an MDLM's is refused before the weights are fetched.
    has(
        &line("someone/llama", &online),
        &["model_type is \"llama\"", "expected \"mdlm\""],
    );
    assert!(
        !server
            .requests()
            .iter()
            .any(|r| r.contains("llama/resolve/main/model.safetensors"))
    );
    // Gated: no token (401), a wrong one (403); HF_TOKEN, or the token file, opens it.
    has(
        &line("someone/gated", &online),
        &[
            "'someone/gated' is gated (401",
            "no token is set",
            "HF_TOKEN",
        ],
    );
    let bad = [online[0].clone(), ("HF_TOKEN", "hf_bad".to_string())];
    has(&line("someone/gated", &bad), &["(403", "cannot read it"]);
    std::fs::create_dir_all(root.join("hf-home")).unwrap();
    std::fs::write(root.join("hf-home/token"), "hf_good\n").unwrap();
    let o = sample_eval(root, "gated", "someone/gated", &[], &online);
    assert!(o.status.success(), "{}", stderr(&o));
    // The evaluator is fetched before sampling: a wrong name costs no samples.
    let o = sample_eval(
        root,
        "no-eval",
        "someone/gated",
        &[
            "eval.compute_generative_perplexity=True",
            "eval.gen_ppl_eval_model_name_or_path=nobody/evaluator",
        ],
        &online,
    );
    has(
        &error_line(&o),
        &[
            "eval.gen_ppl_eval_model_name_or_path=nobody/evaluator",
            "'nobody/evaluator' was not found",
        ],
    );
    assert!(!root.join("no-eval/samples.jsonl").exists());
    // Nothing listens at the endpoint.
    let dead = [("HF_ENDPOINT", dead_endpoint())];
    has(
        &line("someone/other", &dead),
        &[
            "cannot reach the Hugging Face Hub",
            "'someone/other@main'",
            "HF_HUB_OFFLINE=1",
        ],
    );
    // Offline and not cached: says so, and makes no request.
    let before = server.requests().len();
    let offline = [online[0].clone(), ("HF_HUB_OFFLINE", "1".to_string())];
    has(
        &line("someone/never-fetched", &offline),
        &[
            "'someone/never-fetched@main'",
            "not in the Hugging Face cache",
            "HF_HUB_OFFLINE is set",
        ],
    );
    assert_eq!(server.requests().len(), before);
}

#[test]
fn a_commit_revision_is_cached_without_a_ref_as_huggingface_hub_does() {
    if proxied() {
        return;
    }
    let tmp = TempDir::new("hub-commit");
    let files = tiny_mdlm(&tmp.path().join("mdlm"), 16);
    let server = HubServer::start(vec![Repo::model("someone/tiny", SHA, files.clone()).lfs()]);
    let cache = tmp.path().join("hub");
    let hub = Hub::online(&cache, HubClient::at(&server.endpoint));
    let pinned = format!("someone/tiny@{SHA}");
    let dir = hf::resolve_with(&hub, &pinned).unwrap();
    assert_eq!(dir, snapshot(&cache, "someone/tiny", SHA));
    let refs = cache.join("models--someone--tiny/refs");
    let names: Vec<_> = std::fs::read_dir(&refs)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(names.is_empty(), "refs/ holds {names:?}");
    // Found again by its snapshot's name, offline; `main` was never resolved, so it is not.
    assert_eq!(hf::resolve_in(&cache, &pinned).unwrap(), dir);
    assert!(hf::resolve_in(&cache, "someone/tiny").is_err());
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.contains(&format!("/resolve/{SHA}/config.json")))
    );
}

#[test]
fn without_home_or_a_cache_variable_the_cache_is_not_guessed() {
    let tmp = TempDir::new("hub-nohome");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mdlm"))
        .args(["sample-eval", "backbone=hf_dit", "data=openwebtext-split"])
        .arg("eval.checkpoint_path=kuleshov-group/mdlm-owt")
        .arg(format!(
            "hydra.run.dir={}",
            tmp.path().join("out").display()
        ))
        .env("MDLM_CACHE", tmp.path())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HOME")
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_CACHE")
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let line = error_line(&o);
    assert!(
        line.contains("HF_HUB_CACHE, HF_HOME and HOME are all unset"),
        "{line}"
    );
    // Nothing was created relative to the working directory.
    assert!(!tmp.path().join(".cache").exists());
}
