//! Samplers of the reverse process. They see the model only through [`Denoiser`], so they can be
//! tested against an oracle and against replayed reference draws.

pub mod analytic;
pub mod ar;
pub mod categorical;
pub mod confidence;
pub mod ddpm;
pub mod ddpm_cache;
pub mod filter;
pub mod first_hitting;
mod held;
pub mod semi_ar;

use crate::backbone::Backbone;
use crate::config;
use crate::diffusion::{Diffusion, Noise};
use categorical::Uniforms;
use filter::{Filter, Filtered};
pub use held::Held;
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

/// One step of the reverse process: the state `x` at time `t`, moving to `t - dt` under the
/// denoiser `den` and the diffusion `diff`. What every predictor's step starts from.
#[derive(Clone, Copy)]
pub struct StepAt<'a> {
    pub den: &'a dyn Denoiser,
    pub diff: &'a Diffusion,
    pub x: &'a Tensor,
    pub t: &'a Tensor,
    pub dt: f64,
}

/// The reverse-process sampler: the config's own enum (one list of samplers, documented there).
pub use crate::config::Predictor;

/// How many masked positions a [`Predictor::Confidence`] step unmasks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ConfidenceRule {
    /// Unmask the `ceil(masked_left / steps_left)` most confident masked positions of each row,
    /// so the last step unmasks all that remain.
    Schedule,
    /// Unmask every masked position whose confidence (the probability of its drawn candidate) is
    /// at least the value, and at least the most confident one per row; the last step unmasks
    /// all that remain.
    Threshold(f64),
}

#[derive(Clone, Debug)]
pub struct SampleSpec {
    pub predictor: Predictor,
    /// Denoiser steps (ignored by `FirstHitting`, which takes one per masked position).
    pub steps: i64,
    /// Final time of the grid (the reference's `eps=1e-5`).
    pub eps: f64,
    pub noise_removal: bool,
    pub batch: i64,
    pub length: i64,
    /// How ddpm / ddpm_cache make their categorical draws.
    pub draws: ddpm::DrawMode,
    /// Divides the denoiser's logits before every draw; 1.0 leaves them unchanged.
    pub temperature: f64,
    /// Nucleus filtering of p(x0 | xt) per position; 1.0 is off.
    pub top_p: f64,
    /// Only read by `Predictor::Confidence`.
    pub confidence: ConfidenceRule,
    /// Conditional generation: positions that start at, and keep, given tokens.
    pub held: Option<Held>,
    /// `DdpmCache` only: reuse the denoiser's output per row instead of per batch. The reference
    /// recomputes the whole batch as soon as any row changed, which at batch 16 and 1000 steps is
    /// nearly every step; per row, only the rows that changed are recomputed. Same draws up to
    /// floating-point differences between batch sizes (the denoiser treats rows independently).
    pub cache_rows: bool,
}

impl SampleSpec {
    /// Unconditional sampling with the reference's defaults: `eps = 1e-5`, noise removal on,
    /// reference draws, no filtering.
    pub fn plain(predictor: Predictor, steps: i64, batch: i64, length: i64) -> SampleSpec {
        SampleSpec {
            predictor,
            steps,
            eps: 1e-5,
            noise_removal: true,
            batch,
            length,
            draws: ddpm::DrawMode::Reference,
            temperature: 1.0,
            top_p: 1.0,
            confidence: ConfidenceRule::Schedule,
            held: None,
            cache_rows: false,
        }
    }

    /// The spec `sampling.*` asks for, rows of `batch` x `length`.
    pub fn from_config(s: &config::Sampling, batch: i64, length: i64, held: Option<Held>) -> Self {
        SampleSpec {
            predictor: s.predictor,
            steps: s.steps as i64,
            eps: 1e-5,
            noise_removal: s.noise_removal,
            batch,
            length,
            // The sparse draw goes with our float64 default; `float64_gumbel=false` replays the
            // reference's draws exactly.
            draws: if s.float64_gumbel {
                ddpm::DrawMode::Sparse
            } else {
                ddpm::DrawMode::Reference
            },
            temperature: s.temperature,
            top_p: s.top_p,
            confidence: match s.confidence_threshold {
                Some(t) => ConfidenceRule::Threshold(t),
                None => ConfidenceRule::Schedule,
            },
            held,
            // `float64_gumbel=false` replays the reference exactly, batch-wide cache included.
            cache_rows: s.cache_rows && s.float64_gumbel,
        }
    }

    pub fn filter(&self) -> Filter {
        Filter {
            temperature: self.temperature,
            top_p: self.top_p,
        }
    }

    /// Whether `diff` can be sampled with these settings ([`sample`] checks it first).
    pub fn validate(&self, diff: &Diffusion) -> anyhow::Result<()> {
        if self.predictor == Predictor::DdpmCache && !matches!(diff.noise, Noise::LogLinear { .. })
        {
            anyhow::bail!(
                "sampling.predictor=ddpm_cache needs noise=loglinear (it uses t as the move chance); use sampling.predictor=ddpm"
            );
        }
        self.filter().validate()?;
        if self.predictor == Predictor::Analytic && !self.filter().is_identity() {
            anyhow::bail!(
                "temperature={} / top_p={} need a predictor that reads p(x0|xt) (ddpm, ddpm_cache, first_hitting, confidence); analytic reads a score",
                self.temperature,
                self.top_p
            );
        }
        if self.predictor != Predictor::FirstHitting && self.steps < 1 {
            anyhow::bail!("steps={} must be at least 1", self.steps);
        }
        if let ConfidenceRule::Threshold(c) = self.confidence
            && !c.is_finite()
        {
            anyhow::bail!("the confidence threshold {c} must be a finite number");
        }
        if let Some(h) = &self.held {
            h.validate(self.batch, self.length, diff)?;
        }
        Ok(())
    }
}

pub struct SampleOut {
    pub tokens: Tensor,
    /// x before the first step and after every step (noise removal excluded).
    pub trajectory: Vec<Tensor>,
    pub forward_calls: usize,
}

/// How many times [`sample`] calls its observer: once per step of the predictor's
/// schedule (per generated token for first hitting), so a progress bar can be sized up front.
pub fn observed_steps(spec: &SampleSpec) -> u64 {
    match spec.predictor {
        Predictor::FirstHitting => spec.length as u64,
        _ => spec.steps.max(0) as u64,
    }
}

/// `Diffusion._sample`: from the all-mask prior (held positions filled in) along
/// `linspace(1, eps, steps + 1)`, then, when `noise_removal` is on, one denoising step at the last
/// time (an argmax, or for `Analytic` the denoiser update). `FirstHitting` and `Confidence` run
/// their own schedules (see [`Predictor`]).
/// `on_step` runs after every step (a progress bar's tick; `&mut || {}` for none).
pub fn sample(
    den: &dyn Denoiser,
    diff: &Diffusion,
    spec: &SampleSpec,
    device: Device,
    uniforms: &mut dyn Uniforms,
    keep_trajectory: bool,
    on_step: &mut dyn FnMut(),
) -> anyhow::Result<SampleOut> {
    spec.validate(diff)?;
    let held = spec.held.as_ref().map(|h| h.to_device(device));
    // Every update goes through this, so a held position cannot change whatever the
    // parameterization or the update does.
    let pin = |x: Tensor| match &held {
        Some(h) => h.apply(&x),
        None => x,
    };
    let calls_before = den.calls();
    let filtered = Filtered {
        inner: den,
        filter: spec.filter(),
    };
    let prior = Tensor::full(
        [spec.batch, spec.length],
        diff.mask_index,
        (Kind::Int64, device),
    );
    let x = pin(prior);
    let mut trajectory = Vec::new();
    if keep_trajectory {
        trajectory.push(x.copy());
    }
    let mut observe = |x: &Tensor| {
        on_step();
        if keep_trajectory {
            trajectory.push(x.copy());
        }
    };
    let mut walk = Reverse {
        diff,
        pin: &pin,
        uniforms,
        on_step: &mut observe,
    };
    let tokens = match spec.predictor {
        Predictor::FirstHitting => first_hitting::run(&filtered, &mut walk, x)?,
        // Confidence reads the unfiltered p(x0 | xt) and filters only its draw.
        Predictor::Confidence => confidence::Run {
            steps: spec.steps,
            rule: spec.confidence,
            filter: spec.filter(),
        }
        .run(den, &mut walk, x)?,
        Predictor::Ddpm | Predictor::DdpmCache | Predictor::Analytic => {
            run_grid(&filtered, spec, &mut walk, x)
        }
    };
    Ok(SampleOut {
        tokens,
        trajectory,
        forward_calls: den.calls() - calls_before,
    })
}

/// What a sampler loop is handed besides the denoiser and x.
pub struct Reverse<'a> {
    pub diff: &'a Diffusion,
    /// Applied after every update (held positions).
    pub pin: &'a dyn Fn(Tensor) -> Tensor,
    pub uniforms: &'a mut dyn Uniforms,
    /// Sees x after every step.
    pub on_step: &'a mut dyn FnMut(&Tensor),
}

/// Ddpm, ddpm_cache and analytic: steps along `linspace(1, eps, steps + 1)`, then, with
/// `noise_removal`, one denoising step at the last time.
fn run_grid(den: &dyn Denoiser, spec: &SampleSpec, walk: &mut Reverse, mut x: Tensor) -> Tensor {
    let (diff, device) = (walk.diff, x.device());
    let timesteps = Tensor::linspace(1.0, spec.eps, spec.steps + 1, (Kind::Float, device));
    let dt = (1.0 - spec.eps) / spec.steps as f64;
    let ones = Tensor::ones([spec.batch, 1], (Kind::Float, device));
    let mut cache = ddpm_cache::Cache::new(diff, spec.draws, spec.cache_rows);
    for i in 0..spec.steps {
        let t = timesteps.get(i) * &ones;
        let at = StepAt {
            den,
            diff,
            x: &x,
            t: &t,
            dt,
        };
        x = match spec.predictor {
            Predictor::Ddpm => (walk.pin)(ddpm::step(at, spec.draws, walk.uniforms)),
            Predictor::DdpmCache => cache.step(at, walk.uniforms, walk.pin),
            Predictor::Analytic => (walk.pin)(analytic::step(at, walk.uniforms).x_next),
            Predictor::FirstHitting | Predictor::Confidence => unreachable!("not a grid predictor"),
        };
        (walk.on_step)(&x);
    }
    if !spec.noise_removal {
        return x;
    }
    let t = timesteps.get(spec.steps) * &ones;
    (walk.pin)(match spec.predictor {
        // One more categorical draw, with the mask token forbidden.
        Predictor::Analytic => analytic::denoise(den, diff, &x, &t, walk.uniforms).x_next,
        _ => {
            let sigma = diff.noise.total(&t).reshape([-1]);
            den.log_probs(&x, &sigma).argmax(-1, false)
        }
    })
}

/// The move chance at t = 1, where the all-mask prior lives, `[B]` float64: in float64 so that
/// a large sigma(1) does not round it to 1 (and the next sigma to infinity).
fn prior_move_chance(diff: &Diffusion, batch: i64, device: Device) -> Tensor {
    let sigma_1 = diff
        .noise
        .total(&Tensor::ones([batch], (Kind::Float, device)))
        .to_kind(Kind::Double);
    sigma_1.neg().expm1().neg()
}

/// The noise level `-log(1 - mc)` of a float64 move chance, as the denoiser takes it (float32).
fn sigma_of_move_chance(mc: &Tensor) -> Tensor {
    mc.neg().log1p().neg().to_kind(Kind::Float)
}
