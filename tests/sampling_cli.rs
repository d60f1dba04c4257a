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
        .chain(t.encode("To be").unwrap())
        .collect();
    let tail: Vec<u32> = t
        .encode("end.")
        .unwrap()
        .into_iter()
        .chain([t.eos_id()])
        .collect();
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

/// Per-token mean frequency over sequences and its standard error (sequences are the
/// independent units; tokens within one are correlated).
fn marginals(rows: &[Value], vocab: usize) -> (Vec<f64>, Vec<f64>) {
    let per_seq: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            let ids = tokens(r);
            let mut f = vec![0.0; vocab];
            // Position 0 is BOS in nearly every sample; the rest carry the model's marginals.
            for &t in &ids[1..] {
                f[t as usize] += 1.0 / (ids.len() - 1) as f64;
            }
            f
        })
        .collect();
    let n = per_seq.len() as f64;
    let mean: Vec<f64> = (0..vocab)
        .map(|v| per_seq.iter().map(|f| f[v]).sum::<f64>() / n)
        .collect();
    let se: Vec<f64> = (0..vocab)
        .map(|v| {
            let var = per_seq
                .iter()
                .map(|f| (f[v] - mean[v]).powi(2))
                .sum::<f64>()
                / (n - 1.0);
            (var / n).sqrt()
        })
        .collect();
    (mean, se)
}

/// The largest two-sample z over tokens with some mass.
fn max_z(a: &(Vec<f64>, Vec<f64>), b: &(Vec<f64>, Vec<f64>)) -> f64 {
    (0..a.0.len())
        .filter(|&v| a.0[v] + b.0[v] > 0.002)
        .map(|v| (a.0[v] - b.0[v]).abs() / (a.1[v].powi(2) + b.1[v].powi(2)).sqrt().max(1e-4))
        .fold(0.0, f64::max)
}

/// On a tiny trained model, first hitting (exact) and ddpm with many steps give the same token
/// marginals within sampling error (as do two first-hitting runs); greedy confidence decoding,
/// which does not sample the model, is far off by the same measure.
#[test]
fn first_hitting_and_many_step_ddpm_agree_on_a_trained_model() {
    let tmp = TempDir::new("sampling-marginals");
    shakespeare_cache(tmp.path());
    let ckpt = train_tiny(tmp.path(), &tmp.path().join("train"), 150);
    let vocab = CharTokenizer::extended().vocab_size() + 1;
    let run = |tag: &str, extra: &[&str]| {
        let mut a = vec![
            "sampling.num_samples=384",
            "loader.eval_global_batch_size=128",
        ];
        a.extend_from_slice(extra);
        marginals(&sample(tmp.path(), &ckpt, tag, &a), vocab)
    };
    let fh = run("fh", &["sampling.predictor=first_hitting", "seed=11"]);
    let ddpm = run(
        "ddpm",
        &["sampling.predictor=ddpm", "sampling.steps=1000", "seed=12"],
    );
    let fh2 = run("fh2", &["sampling.predictor=first_hitting", "seed=13"]);
    let greedy = run(
        "greedy",
        &[
            "sampling.predictor=confidence",
            "sampling.steps=4",
            "sampling.top_p=1e-9",
        ],
    );
    let (z_same, z_fh) = (max_z(&fh, &ddpm), max_z(&fh, &fh2));
    let z_greedy = max_z(&fh, &greedy);
    eprintln!(
        "max z: first_hitting vs ddpm(1000) {z_same:.2}, vs first_hitting {z_fh:.2}, vs greedy confidence {z_greedy:.2}"
    );
    // About 100 tokens compared: 4.5 standard errors leaves a false alarm rate near 1e-3.
    assert!(z_same < 4.5, "first hitting vs ddpm(1000): max z {z_same}");
    assert!(z_fh < 4.5, "first hitting vs itself: max z {z_fh}");
    assert!(
        z_greedy > 8.0,
        "greedy decoding should differ: max z {z_greedy}"
    );
}
