//! Parity of the analytic (SEDD) sampler, its denoiser step, analytic sampling runs and
//! semi-autoregressive generation. Other sampler cases go to `model_cases`.

use crate::common::{Case, skip};
use crate::model_cases::{self, model_of};
use anyhow::{Result, bail};
use mdlm::sample::categorical::ReplayUniforms;
use mdlm::sample::semi_ar::{self, SemiArSpec};
use mdlm::sample::{ModelDenoiser, Predictor, StepAt, analytic};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// Inputs of a step case; everything else the JSON lists (bar the weights) is an output to check.
const STEP_INPUTS: [&str; 3] = ["x", "t", "u"];

pub fn sampler_step(case: &Case) -> Result<()> {
    let analytic_step = match case.name.as_str() {
        "step_analytic" | "step_analytic_sedd" => true,
        "step_denoiser" => false,
        _ => return model_cases::sampler_step(case),
    };
    let m = model_of(case)?;
    let den = ModelDenoiser::new(&m.dit, &m.diffusion);
    let x = case.t("x")?;
    let t = case.t("t")?;
    let mut u = ReplayUniforms::new(vec![case.t("u")?]);
    let got: BTreeMap<&str, Tensor> = if analytic_step {
        let s = analytic::step(
            StepAt {
                den: &den,
                diff: &m.diffusion,
                x: &x,
                t: &t,
                dt: case.f64("dt")?,
            },
            &mut u,
        );
        let (transition, probs) = s.dense(&x, m.diffusion.mask_index);
        BTreeMap::from([
            ("curr_sigma", s.curr_sigma),
            ("next_sigma", s.next_sigma),
            ("dsigma", s.dsigma),
            ("model_output", s.model_output),
            ("score", s.score),
            ("stag_score", s.stag_score),
            ("transition", transition),
            ("probs", probs),
            ("x_next", s.x_next),
        ])
    } else {
        let s = analytic::denoise(&den, &m.diffusion, &x, &t, &mut u);
        let (transition, probs) = s.dense(&x, m.diffusion.mask_index);
        BTreeMap::from([
            ("sigma", s.curr_sigma),
            ("model_output", s.model_output),
            ("score", s.score),
            ("stag_score", s.stag_score),
            ("transition", transition),
            ("probs", probs),
            ("x_next", s.x_next),
        ])
    };
    if u.remaining() != 0 {
        bail!("the stored uniform draw was not consumed");
    }
    check_listed(case, &got, &STEP_INPUTS)
}

/// Checks every tensor the case's JSON lists, except the weights and `inputs`; a listed tensor the
/// port does not produce fails (a `debug.*` one is only checked when produced).
fn check_listed(case: &Case, got: &BTreeMap<&str, Tensor>, inputs: &[&str]) -> Result<()> {
    let listed = case
        .value("tensors")?
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("{}: tensors is not an object", case.name))?;
    let mut checked = 0;
    for name in listed.keys() {
        if name.starts_with("backbone.") || inputs.contains(&name.as_str()) {
            continue;
        }
        match got.get(name.as_str()) {
            Some(t) => {
                case.check(name, t)?;
                checked += 1;
            }
            None if name.starts_with("debug.") => {}
            None => bail!("{}: listed tensor {name} is not computed here", case.name),
        }
    }
    if checked == 0 {
        bail!("{}: no output tensor checked", case.name);
    }
    Ok(())
}

pub fn sampling_run(case: &Case) -> Result<()> {
    if case.str("config.sampling.predictor")? != "analytic" {
        return model_cases::sampling_run(case);
    }
    let m = model_of(case)?;
    let n_draws = case.t("u_steps")?.size()[0] as usize;
    let (steps, eps) = (case.i64("num_steps")?, case.f64("eps")?);
    case.check(
        "timesteps",
        &Tensor::linspace(1.0, eps, steps + 1, (Kind::Float, Device::Cpu)),
    )?;
    let (out, unused) = model_cases::replay_sampling(case, &m, Predictor::Analytic)?;
    check_costs(case, n_draws - unused, out.forward_calls)
}

pub fn semi_ar_run(case: &Case) -> Result<()> {
    let m = model_of(case)?;
    if case.str("config.sampling.predictor")? != "ddpm_cache" {
        return skip("semi-AR runs other than ddpm_cache steps are not in the reference");
    }
    let u_steps = case.t("u_steps")?;
    let n_draws = u_steps.size()[0];
    let mut u = ReplayUniforms::new((0..n_draws).map(|i| u_steps.get(i)).collect());
    let starts = case.t("x_stride_start")?;
    let size = starts.size(); // [num_strides + 1, B, L]
    let spec = SemiArSpec {
        batch: size[1],
        length: size[2],
        stride_length: case.i64("stride_length")?,
        num_strides: case.i64("num_strides")?,
        dt: case.f64("dt")?,
    };
    if size[2] != case.i64("config.model.length")? {
        bail!("x_stride_start length {} != config.model.length", size[2]);
    }
    let den = ModelDenoiser::new(&m.dit, &m.diffusion);
    let out = semi_ar::sample_semi_ar(&den, &m.diffusion, &spec, Device::Cpu, &mut u)?;
    case.check("x_stride_start", &Tensor::stack(&out.stride_starts, 0))?;
    case.check("x_stride_end", &Tensor::stack(&out.stride_ends, 0))?;
    case.check("tokens_final", &out.tokens)?;
    if let Ok(expected) = case.i64("sampling_steps")
        && out.sampling_steps as i64 != expected
    {
        bail!(
            "sampling_steps {} (steps that changed x), the reference counted {expected}",
            out.sampling_steps
        );
    }
    if let Ok(v) = case.value("sequence_lengths") {
        let expected: Vec<i64> = serde_json::from_value(v.clone())?;
        let eos = case.i64("config.tokenizer.eos_token_id")?;
        let got = semi_ar::sequence_lengths(&out.tokens, eos);
        case.check_with(
            "sequence_lengths",
            &got,
            &Tensor::from_slice(&expected),
            0.0,
            0.0,
        )?;
    }
    check_costs(case, n_draws as usize - u.remaining(), out.forward_calls)
}

/// Every stored draw consumed (and the JSON's count agrees), no more forward passes than the
/// reference made.
fn check_costs(case: &Case, draws_used: usize, forward_calls: usize) -> Result<()> {
    let stored = case.t("u_steps")?.size()[0] as usize;
    if draws_used != stored {
        bail!("{draws_used} uniform draws consumed, {stored} stored");
    }
    if let Ok(n) = case.i64("n_uniform_draws")
        && n as usize != draws_used
    {
        bail!("{draws_used} uniform draws consumed, the reference made {n}");
    }
    let calls = case.i64("n_model_forward_calls")? as usize;
    if forward_calls > calls {
        bail!("{forward_calls} forward calls, the reference made {calls}");
    }
    Ok(())
}
