//! Parity runners for the training helpers: the EMA (`kind: ema`) and the learning-rate
//! schedules (`kind: lr_schedule`). Every count and parameter comes from the case's JSON.

use crate::common::{Case, scalar};
use anyhow::{Context, Result, anyhow, bail};
use mdlm::train::ema::Ema;
use mdlm::train::lr::{CosineDecayWarmup, LrSchedule};
use serde_json::Value;
use tch::{Kind, Tensor};

/// Counts `prefix0`, `prefix1`, ... among the case's tensors.
fn count_indexed(case: &Case, name: impl Fn(usize) -> String) -> usize {
    (0..).take_while(|&i| case.has(&name(i))).count()
}

pub fn ema(case: &Case) -> Result<()> {
    let decay = case.f64("decay")?;
    let n_params = count_indexed(case, |i| format!("init.{i}"));
    let n_updates = count_indexed(case, |k| format!("update{k}.param.0"));
    if n_params == 0 || n_updates == 0 {
        bail!("{}: no init.i or update{{k}}.param.i tensors", case.name);
    }
    let named = |prefix: &str| -> Result<Vec<(String, Tensor)>> {
        (0..n_params)
            .map(|i| Ok((format!("p.{i}"), case.t(&format!("{prefix}{i}"))?)))
            .collect()
    };
    let mut ema = Ema::new(&named("init.")?, decay);
    let decays = case.value("effective_decays")?.as_array();
    for k in 0..n_updates {
        ema.update(&named(&format!("update{k}.param."))?)?;
        if let Some(d) = decays.and_then(|d| d.get(k)).and_then(Value::as_f64) {
            // The fixture's list is informational and off from (1+n)/(10+n) in the last bits
            // (0.18181818181818185 for 2/11); the shadows below are the contract.
            let got = ema.effective_decay(ema.num_updates());
            if (got - d).abs() > 1e-12 * d.abs() {
                bail!(
                    "{}: effective decay of update {k} is {got}, expected {d}",
                    case.name
                );
            }
        }
        for (i, (_, s)) in ema.shadow().iter().enumerate() {
            case.check(&format!("update{k}.shadow.{i}"), s)?;
        }
    }
    if let Ok(n) = case.i64("num_updates_after")
        && ema.num_updates() != n as u64
    {
        bail!(
            "{}: num_updates {} after the run, expected {n}",
            case.name,
            ema.num_updates()
        );
    }
    Ok(())
}

fn num(v: &Value, key: &str) -> Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .ok_or_else(|| anyhow!("lr_scheduler.{key} missing or not a number"))
}

fn schedule_from_json(case: &Case) -> Result<LrSchedule> {
    let base_lr = case.f64("base_lr")?;
    let sched = case.value("lr_scheduler")?;
    let target = sched
        .get("_target_")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("lr_scheduler._target_ missing"))?;
    Ok(match target {
        "transformers.get_constant_schedule_with_warmup" => {
            let n = num(sched, "num_warmup_steps")?;
            if n < 0.0 || n.fract() != 0.0 {
                bail!("lr_scheduler.num_warmup_steps = {n} is not a step count");
            }
            LrSchedule::ConstantWarmup {
                base_lr,
                num_warmup_steps: n as u64,
            }
        }
        "utils.CosineDecayWarmupLRScheduler" => {
            if sched.get("t_in_epochs").and_then(Value::as_bool) == Some(true) {
                bail!("lr_scheduler.t_in_epochs = true (per-epoch stepping) is not supported");
            }
            let mut c = CosineDecayWarmup::new(
                base_lr,
                num(sched, "t_initial")?,
                num(sched, "lr_min").unwrap_or(0.0),
                num(sched, "warmup_t").unwrap_or(0.0),
                num(sched, "warmup_lr_init").unwrap_or(0.0),
                sched
                    .get("warmup_prefix")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            );
            // timm's defaults unless the case sets them.
            c.cycle_mul = num(sched, "cycle_mul").unwrap_or(c.cycle_mul);
            c.cycle_decay = num(sched, "cycle_decay").unwrap_or(c.cycle_decay);
            c.cycle_limit = num(sched, "cycle_limit").map_or(c.cycle_limit, |x| x as u64);
            c.k_decay = num(sched, "k_decay").unwrap_or(c.k_decay);
            LrSchedule::CosineDecayWarmup(c)
        }
        other => bail!("lr_scheduler._target_ {other} is not implemented"),
    })
}

pub fn lr_schedule(case: &Case) -> Result<()> {
    let schedule = schedule_from_json(case).with_context(|| case.name.clone())?;
    let steps: Vec<u64> = case
        .value("steps")?
        .as_array()
        .ok_or_else(|| anyhow!("{}: steps is not a list", case.name))?
        .iter()
        .map(|s| {
            s.as_u64()
                .ok_or_else(|| anyhow!("{}: bad step {s}", case.name))
        })
        .collect::<Result<_>>()?;
    let expected: Vec<f64> = case
        .value("lrs")?
        .as_array()
        .ok_or_else(|| anyhow!("{}: lrs is not a list", case.name))?
        .iter()
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| anyhow!("{}: bad lr {v}", case.name))
        })
        .collect::<Result<_>>()?;
    if steps.len() != expected.len() {
        bail!(
            "{}: {} steps but {} lrs",
            case.name,
            steps.len(),
            expected.len()
        );
    }
    if case.has("steps") {
        let stored: Vec<i64> = steps.iter().map(|&s| s as i64).collect();
        case.check("steps", &Tensor::from_slice(&stored))?;
    }
    let got: Vec<f64> = steps.iter().map(|&s| schedule.lr_at(s)).collect();
    let (atol, rtol) = case.tolerance("lr");
    for ((s, g), e) in steps.iter().zip(&got).zip(&expected) {
        case.check_with(
            &format!("lrs[step {s}]"),
            &scalar(*g),
            &scalar(*e),
            atol,
            rtol,
        )?;
    }
    case.check("lr", &Tensor::from_slice(&got).to_kind(Kind::Float))?;
    Ok(())
}
