//! Resume: N steps straight vs N/2, stop, resume, N/2 — identical losses, parameters, EMA and
//! optimizer state on CPU (the loop reseeds from (seed, step), and the checkpoint carries the
//! data position).

mod support;

use mdlm::checkpoint;
use mdlm::cmd::{setup, train::plan};
use mdlm::data::Loader;
use mdlm::train::trainer;
use support::*;

fn losses(metrics: &std::path::Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("train/loss").is_some())
        .map(|r| {
            (
                r["step"].as_u64().unwrap(),
                r["train/loss"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Trains up to `stop_after` (None: to max_steps) in `run`, resuming from its last checkpoint.
fn run_until(cache: &std::path::Path, run: &std::path::Path, stop_after: Option<u64>) {
    // SAFETY of env: this test binary has one test, so no other thread reads the environment.
    unsafe { std::env::set_var("MDLM_CACHE", cache) };
    let mut o = tiny_overrides(run);
    // Accumulation and dropout on, so the test covers both.
    o.extend(
        [
            "trainer.max_steps=8",
            "trainer.val_check_interval=4",
            "loader.batch_size=4",
            "model.dropout=0.1",
        ]
        .map(String::from),
    );
    let cfg = mdlm::config::compose(&o).unwrap();
    let r = setup::start(cfg, None).unwrap();
    let data = setup::prepare_data(&r.cfg).unwrap();
    let (v, m) = setup::vocab(data.tokenizer.as_ref());
    let diffusion = setup::diffusion(&r.cfg, v, m).unwrap();
    let model = setup::build_model(&r.cfg, v, r.device).unwrap();
    let ema_model = setup::build_model(&r.cfg, v, r.device).unwrap();
    let mut tl = Loader::train(
        data.train.clone(),
        r.cfg.loader.batch_size.unwrap(),
        r.cfg.seed,
    )
    .unwrap();
    let mut vl = Loader::eval(data.valid.clone(), r.cfg.loader.eval_batch_size.unwrap()).unwrap();
    let mut p = plan(
        &r.cfg,
        &r.run_dir,
        Some(tl.num_batches() as u64),
        vl.num_batches() as u64,
    )
    .unwrap();
    assert_eq!(p.accumulate, 2, "global 8 / batch 4");
    p.progress = false;
    trainer::train(
        &p, &model, &ema_model, &diffusion, &mut tl, &mut vl, stop_after, None,
    )
    .unwrap();
}

#[test]
fn interrupted_and_resumed_run_equals_straight_run() {
    let tmp = TempDir::new("resume");
    shakespeare_cache(tmp.path());
    let straight = tmp.path().join("straight");
    let resumed = tmp.path().join("resumed");
    run_until(tmp.path(), &straight, None);
    run_until(tmp.path(), &resumed, Some(4));
    let half = checkpoint::load(&resumed.join("checkpoints/last.safetensors")).unwrap();
    assert_eq!(half.state["global_step"], 4);
    run_until(tmp.path(), &resumed, None);

    let a = losses(&straight.join("metrics.jsonl"));
    let b = losses(&resumed.join("metrics.jsonl"));
    assert_eq!(a.len(), 8);
    assert_eq!(a, b, "per-step losses differ after resuming");

    let ca = checkpoint::load(&straight.join("checkpoints/last.safetensors")).unwrap();
    let cb = checkpoint::load(&resumed.join("checkpoints/last.safetensors")).unwrap();
    assert_eq!(ca.state, cb.state);
    assert_eq!(
        ca.tensors.keys().collect::<Vec<_>>(),
        cb.tensors.keys().collect::<Vec<_>>()
    );
    let mut kinds = [0usize; 3];
    for (k, ta) in &ca.tensors {
        let tb = &cb.tensors[k];
        assert!(ta.equal(tb), "tensor {k} differs after resuming");
        kinds[if k.starts_with("ema.") {
            1
        } else if k.starts_with("optim.") {
            2
        } else {
            0
        }] += 1;
    }
    assert!(
        kinds.iter().all(|&n| n > 0),
        "model, EMA and optimizer state all compared: {kinds:?}"
    );
    // Validation numbers agree too (step 4 and 8).
    let vals = |p: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("val/nll"))
            .map(String::from)
            .collect()
    };
    assert_eq!(vals(&straight), vals(&resumed));
}
