//! What only shows over many steps, checked on the first ones: the loop trains as the reference's
//! `configure_optimizers` + Lightning Trainer do (its `configs/config.yaml` defaults: AdamW with
//! betas (0.9, 0.999), eps 1e-8, no weight decay; gradients clipped to norm 1.0; EMA 0.9999 with
//! the `(1 + n) / (10 + n)` warm-up; the learning rate stepped per optimizer step, so the first
//! step of a warm-up runs at rate 0; validation over the whole split).

mod support;

use mdlm::checkpoint;
use mdlm::cmd::train::plan;
use mdlm::train::lr::LrSchedule;
use support::*;
use tch::{Kind, Tensor};

#[test]
fn default_config_plans_what_the_reference_configures() {
    let mut cfg = mdlm::config::compose(&["trainer.accelerator=cpu".to_string()]).unwrap();
    cfg.resolve_devices(1);
    let p = plan(&cfg, std::path::Path::new("unused"), Some(1000), 55).unwrap();
    assert_eq!(
        (
            p.adamw.beta1,
            p.adamw.beta2,
            p.adamw.eps,
            p.adamw.weight_decay
        ),
        (0.9, 0.999, 1e-8, 0.0)
    );
    assert_eq!(p.adamw.lr, 3e-4);
    assert_eq!(p.grad_clip, Some(1.0));
    assert_eq!(p.ema_decay, 0.9999);
    // limit_val_batches: 1.0 is the whole validation split.
    assert_eq!(p.val_batches, 55);
    match p.schedule {
        LrSchedule::ConstantWarmup {
            base_lr,
            num_warmup_steps,
        } => {
            assert_eq!((base_lr, num_warmup_steps), (3e-4, 2500));
            assert_eq!(p.schedule.lr_at(0), 0.0);
            assert_eq!(p.schedule.lr_at(2500), 3e-4);
        }
        other => panic!("the reference's default schedule is constant_warmup, got {other:?}"),
    }
}

type Named = Vec<(String, Tensor)>;

/// One optimizer step of a tiny run; returns (parameters, EMA shadows) by parameter name and the
/// learning rate the metrics file logged for the step.
fn one_step(tmp: &std::path::Path, name: &str, warmup: u64) -> (Named, Named, f64) {
    let run = tmp.join(name);
    let mut a = args(&["train"], tiny_overrides(&run));
    a.extend([
        "trainer.max_steps=1".to_string(),
        "trainer.val_check_interval=1000".to_string(),
        "optim.lr=1e-2".to_string(),
        format!("lr_scheduler.num_warmup_steps={warmup}"),
        "seed=5".to_string(),
    ]);
    let o = mdlm(tmp, &a);
    assert!(o.status.success(), "{}", stderr(&o));
    let ck = checkpoint::load(&run.join("checkpoints/last.safetensors")).unwrap();
    let params: Vec<(String, Tensor)> = ck
        .tensors
        .iter()
        .filter(|(k, _)| k.starts_with("backbone.") && !k.ends_with("inv_freq"))
        .map(|(k, t)| (k.clone(), t.to_kind(Kind::Double)))
        .collect();
    let shadows = params
        .iter()
        .map(|(k, _)| {
            (
                k.clone(),
                ck.tensors[&format!("ema.{k}")].to_kind(Kind::Double),
            )
        })
        .collect();
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(first["step"], 1);
    (params, shadows, first["lr"].as_f64().unwrap())
}

#[test]
fn first_step_runs_at_the_warmup_rate_and_feeds_the_ema_warmup() {
    let tmp = TempDir::new("semantics");
    shakespeare_cache(tmp.path());
    // With a warm-up the first optimizer step runs at lr 0 (LambdaLR's value before its first
    // scheduler.step()): the weights after it are the initial ones.
    let (init, init_ema, lr0) = one_step(tmp.path(), "warm", 10);
    assert_eq!(lr0, 0.0);
    for ((k, p), (_, s)) in init.iter().zip(&init_ema) {
        assert!(
            p.equal(s),
            "{k}: the EMA moved although the weights could not"
        );
    }
    // Without one it runs at the full rate. AdamW's first step moves every weight with a
    // gradient by lr * g / (|g| + eps), i.e. by lr or nothing (no weight decay shrinks the rest).
    let (p1, ema1, lr1) = one_step(tmp.path(), "cold", 0);
    assert_eq!(lr1, 1e-2);
    let (mut moved, mut total) = (0i64, 0i64);
    for (((k, p0), (_, p)), (_, s)) in init.iter().zip(&p1).zip(&ema1) {
        let step = (p - p0).abs();
        let worst = f64::try_from(step.max()).unwrap();
        assert!(
            worst <= 1e-2 * (1.0 + 1e-4),
            "{k}: moved by {worst}, more than lr"
        );
        let still = step.lt(1e-9);
        let near_lr = (&step - 1e-2).abs().lt(1e-4);
        let other = still.logical_or(&near_lr).logical_not().sum(Kind::Int64);
        assert!(
            i64::try_from(other).unwrap() * 100 <= p.numel() as i64,
            "{k}: a first AdamW step moves a weight by lr or not at all"
        );
        moved += i64::try_from(near_lr.sum(Kind::Int64)).unwrap();
        total += p.numel() as i64;
        // The EMA's first update uses decay min(0.9999, 2/11): shadow = p0 + 9/11 (p - p0).
        let want = p0 + (p - p0) * (9.0 / 11.0);
        let err = f64::try_from((s - &want).abs().max()).unwrap();
        assert!(err < 1e-7, "{k}: EMA after one update off by {err}");
    }
    // The zero-initialised output layer passes no gradient back at step 1, so only it moves.
    assert!(
        moved > 0 && moved < total,
        "{moved} of {total} weights moved"
    );
}
