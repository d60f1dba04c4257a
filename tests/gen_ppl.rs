//! sample-eval with `eval.compute_generative_perplexity=True`, scored by a GPT-2 evaluator folder
//! whose output is exactly uniform (all weights zero), so its perplexity must be the vocabulary
//! size whatever the samples are.

mod support;

use support::*;

#[test]
fn generative_perplexity_of_a_uniform_evaluator_is_the_vocabulary_size() {
    let tmp = TempDir::new("genppl");
    shakespeare_cache(tmp.path());
    let ckpt = train_tiny(tmp.path(), &tmp.path().join("run"), 2);
    let gen_ppl = uniform_gen_ppl(&tmp.path().join("evaluator"));

    let dir = tmp.path().join("s");
    let mut s = args(&["sample-eval"], tiny_overrides(&dir));
    s.extend([
        format!("eval.checkpoint_path={}", ckpt.display()),
        "sampling.steps=8".to_string(),
        "loader.eval_global_batch_size=3".to_string(),
        "eval.perplexity_batch_size=2".to_string(),
    ]);
    s.extend(gen_ppl);
    let o = mdlm(tmp.path(), &s);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = metrics_of(&dir);
    let ppl = m["gen_ppl"].as_f64().unwrap();
    assert!((ppl / 50257.0 - 1.0).abs() < 1e-4, "gen ppl {ppl}");
    // 3 samples (one batch of loader.eval_batch_size) in scoring batches of 2: the reference
    // scores whole batches only, so the third sample is dropped.
    assert_eq!(m["samples_scored"], 2);
    assert!(m["unigram_entropy"].as_f64().unwrap() > 0.0);
}
