//! Samplers of the reverse process. They see the model only through [`Denoiser`], so they can be
//! tested against an oracle and against replayed reference draws.

pub mod analytic;
pub mod ar;
pub mod categorical;
pub mod ddpm;
pub mod ddpm_cache;
pub mod semi_ar;

use crate::backbone::Backbone;
use crate::diffusion::Diffusion;
use categorical::Uniforms;
use std::cell::Cell;
use tch::{Device, Kind, Tensor};

/// p(x0 | xt) as log-probabilities `[B, L, V]`, given the noise level `sigma [B]`.
pub trait Denoiser {
    fn log_probs(&self, x: &Tensor, sigma: &Tensor) -> Tensor;
    /// Forward passes made so far (the cost a cached sampler saves).
    fn calls(&self) -> usize;
}

/// A backbone + parameterization in eval mode, without gradients.
pub struct ModelDenoiser<'a> {
    pub backbone: &'a dyn Backbone,
    pub diffusion: &'a Diffusion,
    calls: Cell<usize>,
}

impl<'a> ModelDenoiser<'a> {
    pub fn new(backbone: &'a dyn Backbone, diffusion: &'a Diffusion) -> Self {
        ModelDenoiser {
            backbone,
            diffusion,
            calls: Cell::new(0),
        }
    }
}

impl Denoiser for ModelDenoiser<'_> {
    fn log_probs(&self, x: &Tensor, sigma: &Tensor) -> Tensor {
        self.calls.set(self.calls.get() + 1);
        tch::no_grad(|| self.diffusion.forward(self.backbone, x, sigma, false))
    }

    fn calls(&self) -> usize {
        self.calls.get()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Predictor {
    Ddpm,
    DdpmCache,
    /// SEDD's analytic (tau-leaping) update; noise removal is its denoiser step, not an argmax.
    Analytic,
}

#[derive(Clone, Debug)]
pub struct SampleSpec {
    pub predictor: Predictor,
    pub steps: i64,
    /// Final time of the grid (the reference's `eps=1e-5`).
    pub eps: f64,
    pub noise_removal: bool,
    pub batch: i64,
    pub length: i64,
    /// How ddpm / ddpm_cache make their categorical draws.
    pub draws: ddpm::DrawMode,
}

pub struct SampleOut {
    pub tokens: Tensor,
    /// x before the first step and after every step (noise removal excluded).
    pub trajectory: Vec<Tensor>,
    pub forward_calls: usize,
}

/// `Diffusion._sample`: from the all-mask prior along `linspace(1, eps, steps + 1)`, then, when
/// `noise_removal` is on, one denoising step at the last time (an argmax, or for `Analytic` the
/// denoiser update).
pub fn sample(
    den: &dyn Denoiser,
    diff: &Diffusion,
    spec: &SampleSpec,
    device: Device,
    uniforms: &mut dyn Uniforms,
    keep_trajectory: bool,
) -> anyhow::Result<SampleOut> {
    if spec.predictor == Predictor::DdpmCache
        && !matches!(diff.noise, crate::diffusion::Noise::LogLinear { .. })
    {
        anyhow::bail!(
            "sampling.predictor=ddpm_cache needs noise=loglinear (it uses t as the move chance); use sampling.predictor=ddpm"
        );
    }
    let calls_before = den.calls();
    let mut x = Tensor::full(
        [spec.batch, spec.length],
        diff.mask_index,
        (Kind::Int64, device),
    );
    let timesteps = Tensor::linspace(1.0, spec.eps, spec.steps + 1, (Kind::Float, device));
    let dt = (1.0 - spec.eps) / spec.steps as f64;
    let mut trajectory = Vec::new();
    if keep_trajectory {
        trajectory.push(x.copy());
    }
    let mut cache: Option<Tensor> = None;
    let ones = Tensor::ones([spec.batch, 1], (Kind::Float, device));
    for i in 0..spec.steps {
        let t = timesteps.get(i) * &ones;
        x = match spec.predictor {
            Predictor::Ddpm => ddpm::step_with(den, diff, &x, &t, dt, spec.draws, uniforms),
            Predictor::DdpmCache => {
                let (p_x0, x_next) = ddpm_cache::step_with(
                    den,
                    diff,
                    &x,
                    &t,
                    dt,
                    cache.take(),
                    spec.draws,
                    uniforms,
                );
                // Reusable only while xt is unchanged and the network ignores the time.
                if x_next.equal(&x) && !diff.time_conditioning {
                    cache = Some(p_x0);
                }
                x_next
            }
            Predictor::Analytic => analytic::step(den, diff, &x, &t, dt, uniforms),
        };
        if keep_trajectory {
            trajectory.push(x.copy());
        }
    }
    if spec.noise_removal {
        let t = timesteps.get(spec.steps) * &ones;
        x = match spec.predictor {
            // One more categorical draw, with the mask token forbidden.
            Predictor::Analytic => analytic::denoise(den, diff, &x, &t, uniforms),
            Predictor::Ddpm | Predictor::DdpmCache => {
                let sigma = diff.noise.total(&t).reshape([-1]);
                den.log_probs(&x, &sigma).argmax(-1, false)
            }
        };
    }
    Ok(SampleOut {
        tokens: x,
        trajectory,
        forward_calls: den.calls() - calls_before,
    })
}
