//! `mdlm sample-eval` beyond the reference's options: `sampling.num_samples`, the readable text
//! file, conditional generation with `sampling.prefix` / `sampling.suffix` under every diffusion
//! sampler, the first-hitting sampler's call count, and nucleus filtering.

mod support;

use mdlm::data::{CharTokenizer, Tokenizer};
use serde_json::Value;
use support::{
    TempDir, args, error_line, mdlm, shakespeare_cache, stderr, tiny_overrides, train_tiny,
};

fn sample(root: &std::path::Path, ckpt: &std::path::Path, tag: &str, extra: &[&str]) -> Vec<Value> {
    let dir = root.join(tag);
    let mut a = args(&["sample-eval"], tiny_overrides(&dir));
    a.push(format!("eval.checkpoint_path={}", ckpt.display()));
    a.extend(extra.iter().map(|s| s.to_string()));
    let out = mdlm(root, &a);
    assert!(out.status.success(), "{tag}: {}", stderr(&out));
    std::fs::read_to_string(dir.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn tokens(v: &Value) -> Vec<u32> {
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn sampling_options_end_to_end() {
    let tmp = TempDir::new("sampling-cli");
    shakespeare_cache(tmp.path());
    let ckpt = train_tiny(tmp.path(), &tmp.path().join("train"), 3);
    let t = CharTokenizer::extended();

    // num_samples = 5 with an eval batch of 3: two batches drawn, exactly five kept, each in the
    // JSONL with its sampler and cost, and in the text file.
    let rows = sample(
        tmp.path(),
        &ckpt,
        "n5",
        &[
            "sampling.num_samples=5",
            "loader.eval_global_batch_size=3",
            "sampling.steps=8",
        ],
    );
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[4]["batch"], 1);
    assert_eq!(rows[0]["sampler"], "ddpm_cache");
    assert_eq!(rows[0]["steps"], 8);
    // At most one call per step plus the noise-removal call.
    assert!(rows[0]["batch_denoiser_calls"].as_u64().unwrap() <= 9);
    let text = std::fs::read_to_string(tmp.path().join("n5/samples.txt")).unwrap();
    assert_eq!(text.matches("=== sample ").count(), 5);
    assert!(text.contains(rows[3]["text"].as_str().unwrap()));

    // Prefix and suffix are held under every diffusion sampler.
    let head: Vec<u32> = std::iter::once(t.bos_id())
        .chain(t.encode("To be"))
        .collect();
    let tail: Vec<u32> = t.encode("end.").into_iter().chain([t.eos_id()]).collect();
    for predictor in ["ddpm", "ddpm_cache", "first_hitting", "confidence"] {
        let rows = sample(
            tmp.path(),
            &ckpt,
            &format!("held-{predictor}"),
            &[
                &format!("sampling.predictor={predictor}"),
                "sampling.prefix=To be",
                "sampling.suffix=end.",
                "sampling.steps=8",
            ],
        );
        for r in &rows {
            let ids = tokens(r);
            assert_eq!(ids.len(), 32);
            assert_eq!(&ids[..head.len()], &head[..], "{predictor}: prefix");
            assert_eq!(&ids[32 - tail.len()..], &tail[..], "{predictor}: suffix");
            assert!(
                !ids.contains(&t.mask_id().unwrap_or(u32::MAX)),
                "{predictor}: a mask left"
            );
        }
        // First hitting calls the denoiser once per generated token.
        if predictor == "first_hitting" {
            let free = (32 - head.len() - tail.len()) as u64;
            assert_eq!(rows[0]["batch_denoiser_calls"].as_u64().unwrap(), free);
        }
    }

    // A vanishing nucleus leaves only the top token, so confidence decoding is deterministic:
    // different seeds give the same samples; with the full nucleus they differ.
    let greedy = |seed: &str, p: &str| -> Vec<Vec<u32>> {
        sample(
            tmp.path(),
            &ckpt,
            &format!("greedy-{seed}-{p}"),
            &[
                "sampling.predictor=confidence",
                &format!("sampling.top_p={p}"),
                &format!("seed={seed}"),
                "sampling.steps=8",
            ],
        )
        .iter()
        .map(tokens)
        .collect()
    };
    assert_eq!(greedy("1", "1e-9"), greedy("2", "1e-9"));
    assert_ne!(greedy("1", "1.0"), greedy("2", "1.0"));

    // Bad knobs fail with one line.
    let mut a = args(&["sample-eval"], tiny_overrides(&tmp.path().join("bad")));
    a.push(format!("eval.checkpoint_path={}", ckpt.display()));
    a.push("sampling.top_p=0".into());
    let line = error_line(&mdlm(tmp.path(), &a));
    assert!(line.contains("sampling.top_p"), "{line}");
}
