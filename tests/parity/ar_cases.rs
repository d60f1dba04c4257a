//! Parity of the autoregressive baseline: its loss and gradients (`ar_loss`) and its sampler
//! (`sample_ar`), the latter both as the reference runs it and with the key/value cache.

use crate::common::{Case, check_gradients, scalar};
use anyhow::{Result, anyhow, bail};
use mdlm::backbone::load::{load_strict, manifest};
use mdlm::backbone::{Ar, ArConfig, Precision};
use mdlm::diffusion::ar;
use mdlm::sample::ar::{
    ArSampleSpec, ArSampler, ReplayGumbel, gumbel_from_uniform, sample_ar as run_sampler,
};
use std::collections::BTreeMap;
use tch::{Device, Tensor, nn};

struct Model {
    vs: nn::VarStore,
    ar: Ar,
    mask_index: i64,
}

/// The AR sizes of the case's `config` (`backbone=ar`, `parameterization=ar`).
pub(crate) fn ar_config(case: &Case) -> Result<ArConfig> {
    let c = &case.json["config"];
    if c["backbone"] != "ar" || c["parameterization"] != "ar" {
        bail!(
            "expected backbone=ar, parameterization=ar; the case has {} / {}",
            c["backbone"],
            c["parameterization"]
        );
    }
    let m = &c["model"];
    let i = |k: &str| {
        m[k].as_i64()
            .ok_or_else(|| anyhow!("config.model.{k} missing"))
    };
    let cfg = ArConfig {
        vocab_size: case.i64("config.vocab_size")?,
        hidden_size: i("hidden_size")?,
        n_blocks: i("n_blocks")?,
        n_heads: i("n_heads")?,
        dropout: m["dropout"].as_f64().unwrap_or(0.0),
        mlp_ratio: i("mlp_ratio")?,
        rotary_base: m["rotary_base"].as_f64().unwrap_or(10000.0),
    };
    Ok(cfg)
}

/// Every size and id from the case's `config` (as `model_cases::model_of` does for the DiT).
fn model_of(case: &Case) -> Result<Model> {
    let cfg = ar_config(case)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let ar = Ar::new(vs.root() / "backbone", &cfg, Precision::F32);
    let weights: BTreeMap<String, Tensor> = case.backbone_weights().into_iter().collect();
    // The key manifest, both directions, before loading (load_strict checks it too, but this
    // names every difference at once).
    let ours = manifest(&vs);
    let theirs: Vec<(String, Vec<i64>)> =
        weights.iter().map(|(k, t)| (k.clone(), t.size())).collect();
    if ours != theirs {
        let missing: Vec<_> = theirs.iter().filter(|e| !ours.contains(e)).collect();
        let extra: Vec<_> = ours.iter().filter(|e| !theirs.contains(e)).collect();
        bail!("key manifest differs: fixture only {missing:?}; model only {extra:?}");
    }
    load_strict(&vs, &weights, "backbone.")?;
    Ok(Model {
        vs,
        ar,
        mask_index: case.i64("config.mask_index")?,
    })
}

pub fn ar_loss(case: &Case) -> Result<()> {
    let m = model_of(case)?;
    let x0 = case.t("x0")?;
    let mask = case.t("attention_mask")?;
    let parts = ar::loss(&m.ar, &x0, &mask, m.mask_index, true);
    case.check("input_tokens", &parts.input_tokens)?;
    case.check("output_tokens", &parts.output_tokens)?;
    case.check("token_mask", &parts.token_mask)?;
    case.check("logprobs", &parts.logprobs)?;
    case.check("loss_per_token", &parts.loss_per_token)?;
    case.check("nlls", &parts.nlls)?;
    case.check("loss", &parts.loss)?;
    let (atol, rtol) = case.tolerance("loss");
    case.check_with(
        "loss (json)",
        &parts.loss,
        &scalar(case.f64("loss")?),
        atol,
        rtol,
    )?;
    parts.loss.backward();

    // Gradient norm over every trainable backbone parameter, per parameter and in total.
    let vars = m.vs.variables();
    check_gradients(case, &vars)
}

pub fn sample_ar(case: &Case) -> Result<()> {
    let m = model_of(case)?;
    let gumbel = case.t("gumbel_noise")?;
    // The transform the reference applies to its uniforms (the samplers consume the stored
    // noise itself).
    case.check("gumbel_noise", &gumbel_from_uniform(&case.t("u_gumbel")?))?;
    let spec = ArSampleSpec {
        batch: case.i64("batch")?,
        length: case.i64("config.model.length")?,
        bos: case.i64("bos_token_id")?,
        mask_index: m.mask_index,
    };
    let calls = case.i64("n_model_forward_calls")? as usize;
    for sampler in [ArSampler::Recompute, ArSampler::Cached] {
        let mut noise = ReplayGumbel {
            noise: gumbel.shallow_clone(),
        };
        let out = run_sampler(&m.ar, &spec, sampler, Device::Cpu, &mut noise, true);
        let label = format!("{sampler:?}");
        case.check("tokens", &out.tokens)
            .map_err(|e| e.context(label.clone()))?;
        case.check("debug.next_logprobs", out.next_logprobs.as_ref().unwrap())
            .map_err(|e| e.context(label.clone()))?;
        if sampler == ArSampler::Recompute && out.forward_calls != calls {
            bail!(
                "{label}: {} forward calls, the reference made {calls}",
                out.forward_calls
            );
        }
    }
    Ok(())
}
