//! Parity of the model path: noise schedules, the DiT, parameterizations, losses and gradients,
//! sampler steps and whole sampling runs.

use crate::common::{Case, check_gradients, skip};
use anyhow::{Result, bail};
use mdlm::backbone::{Dit, DitConfig, Precision, load::load_strict};
use mdlm::diffusion::{Diffusion, Draws, Noise, Parameterization, loss::crop};
use mdlm::sample::categorical::ReplayUniforms;
use mdlm::sample::ddpm::DrawMode;
use mdlm::sample::{self, Denoiser, ModelDenoiser, Predictor, SampleOut, SampleSpec, StepAt};
use serde_json::Value;
use std::collections::BTreeMap;
use tch::{Device, Tensor, nn};

/// The noise object a case's reference used, from the YAML type and the object's own values.
fn noise_of(config_noise: &Value, module: &Value) -> Result<Noise> {
    let f = |v: &Value, k: &str| {
        v[k].as_f64()
            .ok_or_else(|| anyhow::anyhow!("noise field {k} missing"))
    };
    Ok(match config_noise["type"].as_str().unwrap_or("") {
        "loglinear" => Noise::LogLinear {
            eps: module["eps"].as_f64().unwrap_or(1e-3),
        },
        "geometric" => Noise::Geometric {
            sigma_min: f(config_noise, "sigma_min")?,
            sigma_max: f(config_noise, "sigma_max")?,
        },
        "cosine" => Noise::Cosine {
            eps: module["eps"].as_f64().unwrap_or(1e-3),
        },
        "cosinesqr" => Noise::CosineSqr {
            eps: module["eps"].as_f64().unwrap_or(1e-3),
        },
        "linear" => Noise::Linear {
            sigma_min: f(config_noise, "sigma_min")?,
            sigma_max: f(config_noise, "sigma_max")?,
        },
        other => bail!("unknown noise type {other}"),
    })
}

pub fn noise_schedule(case: &Case) -> Result<()> {
    let noise = noise_of(&case.json["noise"]["config_noise"], &case.json["noise"])?;
    let t = case.t("t")?;
    case.check("total_noise", &noise.total(&t))?;
    case.check("rate_noise", &noise.rate(&t))?;
    if case.has("importance_sampling_t") {
        case.check(
            "importance_sampling_t",
            &noise.importance_sampling_transformation(&t)?,
        )?;
    }
    Ok(())
}

pub(crate) struct Model {
    _vs: nn::VarStore,
    pub(crate) dit: Dit,
    pub(crate) diffusion: Diffusion,
}

/// The DiT sizes of the case's `config` (`config.backbone` must be `dit`).
pub(crate) fn dit_config(case: &Case) -> Result<DitConfig> {
    let c = &case.json["config"];
    if c["backbone"] != "dit" {
        return skip(format!("backbone {} not implemented yet", c["backbone"]));
    }
    let m = &c["model"];
    let i = |k: &str| {
        m[k].as_i64()
            .ok_or_else(|| anyhow::anyhow!("config.model.{k} missing"))
    };
    let cfg = DitConfig {
        vocab_size: c["vocab_size"].as_i64().unwrap(),
        hidden_size: i("hidden_size")?,
        cond_dim: i("cond_dim")?,
        n_blocks: i("n_blocks")?,
        n_heads: i("n_heads")?,
        dropout: m["dropout"].as_f64().unwrap_or(0.0),
        mlp_ratio: i("mlp_ratio")?,
        frequency_embedding_size: i("frequency_embedding_size")?,
        rotary_base: m["rotary_base"].as_f64().unwrap_or(10000.0),
    };
    Ok(cfg)
}

pub(crate) fn model_of(case: &Case) -> Result<Model> {
    let c = &case.json["config"];
    let cfg = dit_config(case)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let dit = Dit::new(vs.root() / "backbone", &cfg, Precision::F32);
    let weights: BTreeMap<String, Tensor> = case.backbone_weights().into_iter().collect();
    load_strict(&vs, &weights, "backbone.")?;
    let parameterization = match c["parameterization"].as_str().unwrap() {
        "subs" => Parameterization::Subs,
        "d3pm" => Parameterization::D3pm,
        "sedd" => Parameterization::Sedd,
        other => return skip(format!("parameterization {other} not implemented yet")),
    };
    let tr = &c["training"];
    let diffusion = Diffusion {
        parameterization,
        noise: noise_of(&c["noise"], &c["noise_module"])?,
        mask_index: c["mask_index"].as_i64().unwrap(),
        vocab_size: cfg.vocab_size,
        time_conditioning: c["time_conditioning"].as_bool().unwrap(),
        t_steps: c["T"].as_i64().unwrap(),
        subs_masking: c["subs_masking"].as_bool().unwrap_or(false),
        sampling_eps: tr["sampling_eps"].as_f64().unwrap(),
        antithetic_sampling: tr["antithetic_sampling"].as_bool().unwrap(),
        importance_sampling: tr["importance_sampling"].as_bool().unwrap(),
        change_of_variables: tr["change_of_variables"].as_bool().unwrap(),
    };
    Ok(Model {
        _vs: vs,
        dit,
        diffusion,
    })
}

pub fn dit_forward(case: &Case) -> Result<()> {
    use mdlm::backbone::Backbone;
    let m = model_of(case)?;
    let (x, sigma) = (case.t("x")?, case.t("sigma")?);
    let logits = tch::no_grad(|| m.dit.forward(&x, &sigma, false));
    case.check("logits", &logits)
}

pub fn parameterization(case: &Case) -> Result<()> {
    let m = model_of(case)?;
    let xt = case.t("xt")?;
    let sigma = case.t("sigma")?;
    case.check("sigma_backbone", &m.diffusion.process_sigma(&sigma))?;
    let out = tch::no_grad(|| m.diffusion.forward(&m.dit, &xt, &sigma, false));
    case.check("model_output", &out)
}

pub fn loss(case: &Case) -> Result<()> {
    let m = model_of(case)?;
    let mut x0 = case.t("x0")?;
    let mut mask = case.t("attention_mask")?;
    if case.has("crop_start") {
        let start = i64::try_from(case.t("crop_start")?)?;
        let len = case.i64("config.model.length")?;
        let bos = case.i64("config.tokenizer.bos_token_id")?;
        (x0, mask) = crop(&x0, &mask, start, len, bos);
        case.check("input_tokens", &x0)?;
    }
    let draws = Draws {
        u_t: case.t("u_t")?,
        u_mask: case.t("u_mask")?,
        stratified: false,
    };
    let parts = m.diffusion.loss(&m.dit, &x0, &mask, &draws, true)?;
    case.check("t", &parts.t)?;
    case.check("move_chance", &parts.move_chance)?;
    case.check("unet_conditioning", &parts.conditioning)?;
    if let (Some(s), true) = (&parts.sigma, case.has("sigma")) {
        case.check("sigma", s)?;
    }
    if let (Some(s), true) = (&parts.dsigma, case.has("dsigma")) {
        case.check("dsigma", s)?;
    }
    case.check("xt", &parts.xt)?;
    case.check("model_output", &parts.model_output)?;
    case.check("loss_per_token", &parts.loss_per_token)?;
    case.check("nlls", &parts.nlls)?;
    case.check("token_mask", &parts.token_mask)?;
    case.check("loss", &parts.loss)?;
    parts.loss.backward();
    check_gradients(case, &m._vs.variables())
}

/// Wraps a denoiser so a test can check what it returned on its first call.
pub fn sampler_step(case: &Case) -> Result<()> {
    let m = model_of(case)?;
    let den = ModelDenoiser::new(&m.dit, &m.diffusion);
    let x = case.t("x")?;
    let t = case.t("t")?;
    let mut u = ReplayUniforms::new(if case.has("u") {
        vec![case.t("u")?]
    } else {
        vec![]
    });
    match case.name.as_str() {
        "step_ddpm" => {
            let sigma_t = m.diffusion.noise.total(&t);
            case.check("sigma_t", &sigma_t)?;
            case.check("sigma_s", &m.diffusion.noise.total(&(&t - case.f64("dt")?)))?;
            case.check("log_p_x0", &den.log_probs(&x, &sigma_t.reshape([-1])))?;
            let x_next = sample::ddpm::step(
                StepAt {
                    den: &den,
                    diff: &m.diffusion,
                    x: &x,
                    t: &t,
                    dt: case.f64("dt")?,
                },
                DrawMode::Reference,
                &mut u,
            );
            case.check("x_next", &x_next)
        }
        "step_ddpm_cache" => {
            case.check("sigma_t", &m.diffusion.noise.total(&t))?;
            let (p_x0, x_next) = sample::ddpm_cache::step(
                StepAt {
                    den: &den,
                    diff: &m.diffusion,
                    x: &x,
                    t: &t,
                    dt: case.f64("dt")?,
                },
                None,
                DrawMode::Reference,
                &mut u,
            );
            case.check("p_x0", &p_x0)?;
            case.check("x_next", &x_next)
        }
        "step_noise_removal" => {
            let sigma = m.diffusion.noise.total(&t).reshape([-1]);
            let out = den.log_probs(&x, &sigma);
            case.check("model_output", &out)?;
            case.check("x_next", &out.argmax(-1, false))
        }
        other => skip(format!("sampler step {other} not implemented yet")),
    }
}

pub fn sampling_run(case: &Case) -> Result<()> {
    let m = model_of(case)?;
    let predictor = match case.str("config.sampling.predictor")?.as_str() {
        "ddpm" => Predictor::Ddpm,
        "ddpm_cache" => Predictor::DdpmCache,
        other => return skip(format!("predictor {other} not implemented yet")),
    };
    let (out, unused) = replay_sampling(case, &m, predictor)?;
    if unused != 0 {
        bail!("{unused} stored uniform draws were not consumed");
    }
    let calls = case.i64("n_model_forward_calls")? as usize;
    if out.forward_calls > calls {
        bail!(
            "{} forward calls, the reference made {calls}",
            out.forward_calls
        );
    }
    Ok(())
}

/// Runs the case's sampler on its stored uniform draws (unfiltered, unconditional, with the
/// case's grid) and checks the trajectory and the final tokens; returns the output and how many
/// stored draws were left unused.
pub(crate) fn replay_sampling(
    case: &Case,
    m: &Model,
    predictor: Predictor,
) -> Result<(SampleOut, usize)> {
    let u_steps = case.t("u_steps")?;
    let size = case.t("x_steps")?.size();
    let mut u = ReplayUniforms::new((0..u_steps.size()[0]).map(|i| u_steps.get(i)).collect());
    let spec = SampleSpec {
        eps: case.f64("eps")?,
        noise_removal: case.bool("config.sampling.noise_removal")?,
        ..SampleSpec::plain(predictor, case.i64("num_steps")?, size[1], size[2])
    };
    let den = ModelDenoiser::new(&m.dit, &m.diffusion);
    let out = sample::sample(
        &den,
        &m.diffusion,
        &spec,
        Device::Cpu,
        &mut u,
        true,
        &mut || {},
    )?;
    case.check("x_steps", &Tensor::stack(&out.trajectory, 0))?;
    case.check("x_final", &out.tokens)?;
    Ok((out, u.remaining()))
}
