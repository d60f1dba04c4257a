//! Initialisation parity (`init_stats`): the reference's freshly built backbones summarised per
//! tensor over its construction seeds; ours are built from the case's config over as many seeds of
//! our own, pooled the same way, and compared at the case's tolerances. Weights that every other
//! model case overwrites are what this pins: the init scale decides the training curve.

use crate::ar_cases::ar_config;
use crate::common::Case;
use crate::dimamba_cases::config_of as dimamba_config;
use crate::model_cases::dit_config;
use anyhow::{Result, anyhow, bail};
use mdlm::backbone::{Ar, Dimamba, DimambaConfig, Dit, Precision};
use serde_json::Value;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor, nn};

/// Builds the case's backbone under `backbone` with libtorch seeded to `seed`; every variable by
/// its full name (tied weights under both names, as in a state dict).
fn build(case: &Case, seed: i64) -> Result<BTreeMap<String, Tensor>> {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root() / "backbone";
    match case.str("config.backbone")?.as_str() {
        "dit" => drop(Dit::new(root, &dit_config(case)?, Precision::F32)),
        "ar" => drop(Ar::new(root, &ar_config(case)?, Precision::F32)),
        "dimamba" => {
            // Without a `mamba` section the case is the reference's own defaults.
            let cfg = if case.json.get("mamba").is_some() {
                dimamba_config(case)?
            } else {
                let i = |k: &str| case.i64(&format!("config.model.{k}"));
                DimambaConfig {
                    dropout: case.f64("config.model.dropout")?,
                    ..DimambaConfig::reference(
                        case.i64("config.vocab_size")?,
                        i("hidden_size")?,
                        i("cond_dim")?,
                        i("n_blocks")?,
                    )
                }
            };
            drop(Dimamba::new(root, &cfg, Precision::F32));
        }
        other => bail!("backbone {other}: no init_stats runner"),
    }
    Ok(vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().to_kind(Kind::Double).flatten(0, -1)))
        .collect())
}

/// Pooled over every element of every seed.
struct Pooled {
    mean: f64,
    std: f64,
    absmax: f64,
}

fn pooled(seeds: &[Tensor]) -> Result<Pooled> {
    let all = Tensor::cat(seeds, 0);
    Ok(Pooled {
        mean: f64::try_from(all.mean(Kind::Double))?,
        std: f64::try_from(all.std(true))?,
        absmax: f64::try_from(all.abs().max())?,
    })
}

fn f(v: &Value, key: &str, name: &str) -> Result<f64> {
    v[key]
        .as_f64()
        .ok_or_else(|| anyhow!("{name}: field {key} missing"))
}

/// One tensor against its summary; the error names the statistic and both values.
fn check_tensor(name: &str, spec: &Value, seeds: &[Tensor]) -> Result<()> {
    let shape: Vec<i64> = spec["shape"]
        .as_array()
        .ok_or_else(|| anyhow!("{name}: shape missing"))?
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    let numel: i64 = shape.iter().product();
    if seeds[0].numel() as i64 != numel {
        bail!(
            "{name}: {} elements, the reference's shape {shape:?} has {numel}",
            seeds[0].numel()
        );
    }
    if spec["constant"].as_bool() == Some(true) {
        let value = f(spec, "value", name)?;
        for (s, t) in seeds.iter().enumerate() {
            let worst = f64::try_from((t - value).abs().max())?;
            if worst != 0.0 {
                bail!("{name}: seed {s} is not the constant {value} (off by up to {worst})");
            }
        }
        return Ok(());
    }
    if spec["deterministic"].as_bool() == Some(true) {
        let values: Vec<f64> = spec["values"]
            .as_array()
            .ok_or_else(|| anyhow!("{name}: deterministic without values"))?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        let expected = Tensor::from_slice(&values);
        for (s, t) in seeds.iter().enumerate() {
            // float32 rounding of the same formula.
            let tol = expected.abs() * 1e-6 + 1e-7;
            let off = (t - &expected).abs() - tol;
            let worst = f64::try_from(off.max())?;
            if worst > 0.0 {
                let idx = i64::try_from(off.argmax(0, false))?;
                bail!(
                    "{name}: seed {s} element {idx} is {}, the reference builds {}",
                    f64::try_from(t.get(idx))?,
                    values[idx as usize]
                );
            }
        }
        return Ok(());
    }
    let ours = pooled(seeds)?;
    let (std, mean, absmax) = (
        f(spec, "std", name)?,
        f(spec, "mean", name)?,
        f(spec, "absmax", name)?,
    );
    let tol = &spec["tolerances"];
    let (std_rtol, mean_atol) = (f(tol, "std_rtol", name)?, f(tol, "mean_atol", name)?);
    if (ours.std / std - 1.0).abs() > std_rtol {
        bail!(
            "{name}: std {:.6} vs the reference's {std:.6} (ratio {:.3}, allowed ±{std_rtol:.3})",
            ours.std,
            ours.std / std
        );
    }
    if (ours.mean - mean).abs() > mean_atol {
        bail!(
            "{name}: mean {:.6} vs the reference's {mean:.6} (allowed ±{mean_atol:.6})",
            ours.mean
        );
    }
    if ours.absmax > 1.1 * absmax {
        bail!(
            "{name}: |max| {:.6} beyond 1.1x the reference's {absmax:.6}",
            ours.absmax
        );
    }
    Ok(())
}

pub fn init_stats(case: &Case) -> Result<()> {
    let n_seeds = case.i64("seeds")?;
    let specs = case
        .value("parameters")?
        .as_object()
        .ok_or_else(|| anyhow!("parameters is not an object"))?;
    // Seeds of our own, far from anything the reference used (its draws are not ours to replay).
    let builds: Vec<BTreeMap<String, Tensor>> = (0..n_seeds)
        .map(|s| build(case, 1000 + s))
        .collect::<Result<_>>()?;
    let ours: Vec<&String> = builds[0].keys().collect();
    let missing: Vec<&String> = specs
        .keys()
        .filter(|k| !builds[0].contains_key(*k))
        .collect();
    let extra: Vec<&&String> = ours.iter().filter(|k| !specs.contains_key(**k)).collect();
    if !missing.is_empty() || !extra.is_empty() {
        bail!("key manifest differs: reference only {missing:?}; model only {extra:?}");
    }
    let mut failures = Vec::new();
    for (name, spec) in specs {
        let seeds: Vec<Tensor> = builds.iter().map(|b| b[name].shallow_clone()).collect();
        if let Err(e) = check_tensor(name, spec, &seeds) {
            failures.push(format!("{e:#}"));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} tensors initialised unlike the reference: {}",
            failures.len(),
            specs.len(),
            failures.join("; ")
        );
    }
    Ok(())
}
