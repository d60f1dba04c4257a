//! sample-eval with `eval.compute_generative_perplexity=True`, scored by a GPT-2 evaluator folder
//! whose output is exactly uniform (all weights zero), so its perplexity must be the vocabulary
//! size whatever the samples are.

mod support;

use support::*;
use tch::{Kind, Tensor};

fn uniform_gpt2(dir: &std::path::Path) {
    let (v, e, p) = (50257i64, 8i64, 64i64);
    std::fs::create_dir_all(dir).unwrap();
    let cfg = serde_json::json!({"model_type": "gpt2", "vocab_size": v, "n_embd": e, "n_layer": 1, "n_head": 2, "n_positions": p, "layer_norm_epsilon": 1e-5});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let z = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, tch::Device::Cpu));
    let mut t: Vec<(String, Tensor)> = vec![
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
    Tensor::write_safetensors(&t, dir.join("model.safetensors")).unwrap();
    std::fs::copy(
        shared_data().join("../assets/tokenizers/gpt2/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
}

#[test]
fn generative_perplexity_of_a_uniform_evaluator_is_the_vocabulary_size() {
    let tmp = TempDir::new("genppl");
    shakespeare_cache(tmp.path());
    let ckpt = train_tiny(tmp.path(), &tmp.path().join("run"), 2);
    let evaluator = tmp.path().join("evaluator");
    uniform_gpt2(&evaluator);

    let dir = tmp.path().join("s");
    let mut s = args(&["sample-eval"], tiny_overrides(&dir));
    s.extend([
        format!("eval.checkpoint_path={}", ckpt.display()),
        "eval.compute_generative_perplexity=True".to_string(),
        format!(
            "eval.gen_ppl_eval_model_name_or_path={}",
            evaluator.display()
        ),
        "sampling.steps=8".to_string(),
        "loader.eval_global_batch_size=3".to_string(),
        "eval.perplexity_batch_size=2".to_string(),
    ]);
    let o = mdlm(tmp.path(), &s);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let ppl = m["gen_ppl"].as_f64().unwrap();
    assert!((ppl / 50257.0 - 1.0).abs() < 1e-4, "gen ppl {ppl}");
    // 3 samples (one batch of loader.eval_batch_size) in scoring batches of 2: the reference
    // scores whole batches only, so the third sample is dropped.
    assert_eq!(m["samples_scored"], 2);
    assert!(m["unigram_entropy"].as_f64().unwrap() > 0.0);
}
