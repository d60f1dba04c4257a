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
pub mod semi_ar;

use crate::backbone::Backbone;
use crate::diffusion::Diffusion;
use categorical::Uniforms;
use filter::{Filter, Filtered};
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

/// The reverse-process sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Predictor {
    /// Ancestral steps on the `linspace(1, eps, steps + 1)` grid (reference: `_ddpm_update`).
    Ddpm,
    /// Ddpm that reuses p(x0 | xt) while x is unchanged (log-linear noise, no time conditioning).
    DdpmCache,
    /// SEDD's analytic (tau-leaping) update; noise removal is its denoiser step, not an argmax.
    Analytic,
    /// Exact absorbing-diffusion sampling one unmasking at a time (Zheng et al., 2024): one
    /// denoiser call per generated token; `steps`, `eps` and `noise_removal` do not apply.
    FirstHitting,
    /// Confidence-ordered parallel decoding (MaskGIT; LLaDA's low-confidence remasking): `steps`
    /// denoiser calls, each unmasking the most confident masked positions per
    /// [`ConfidenceRule`]. Not a sampler of the model's distribution; `noise_removal` does not
    /// apply.
    Confidence,
}

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

/// Positions fixed during sampling: a prompt (prefix), a suffix, or any positions to infill
/// around. No sampler changes a held position.
#[derive(Debug)]
pub struct Held {
    /// `[B, L]` int64; read only where `held` is true.
    pub tokens: Tensor,
    /// `[B, L]` bool: positions fixed to `tokens`.
    pub held: Tensor,
}

impl Clone for Held {
    fn clone(&self) -> Held {
        Held {
            tokens: self.tokens.shallow_clone(),
            held: self.held.shallow_clone(),
        }
    }
}

impl Held {
    /// The first `prefix.size()[1]` positions of every row held to `prefix [B, P]`, in rows of
    /// `length`.
    pub fn prefix(prefix: &Tensor, length: i64) -> Held {
        let (b, p) = prefix.size2().expect("prefix is [B, P]");
        assert!(
            p <= length,
            "a prefix of {p} tokens does not fit length {length}"
        );
        let opts = (Kind::Int64, prefix.device());
        let tokens = Tensor::cat(
            &[
                prefix.to_kind(Kind::Int64),
                Tensor::zeros([b, length - p], opts),
            ],
            1,
        );
        let held = Tensor::arange(length, opts)
            .lt(p)
            .unsqueeze(0)
            .expand([b, length], false);
        Held {
            tokens,
            held: held.contiguous(),
        }
    }

    /// `x` with every held position set to its token.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        self.tokens.where_self(&self.held, x)
    }

    fn to_device(&self, device: Device) -> Held {
        Held {
            tokens: self.tokens.to_device(device).to_kind(Kind::Int64),
            held: self.held.to_device(device).to_kind(Kind::Bool),
        }
    }

    fn validate(&self, batch: i64, length: i64, diff: &Diffusion) -> anyhow::Result<()> {
        for (name, t) in [("tokens", &self.tokens), ("held", &self.held)] {
            if t.size() != [batch, length] {
                anyhow::bail!(
                    "held.{name} has shape {:?}; sampling needs [batch, length] = [{batch}, {length}]",
                    t.size()
                );
            }
        }
        let held = self.held.to_kind(Kind::Bool);
        let tokens = self.tokens.masked_select(&held);
        if tokens.numel() > 0 {
            let (lo, hi) = (tokens.min().int64_value(&[]), tokens.max().int64_value(&[]));
            if lo < 0 || hi >= diff.vocab_size {
                anyhow::bail!(
                    "held tokens span {lo}..={hi}, outside the vocabulary 0..{}",
                    diff.vocab_size
                );
            }
            if tokens.eq(diff.mask_index).any().int64_value(&[]) != 0 {
                anyhow::bail!(
                    "a held position holds the mask token {}; leave it unheld to generate it",
                    diff.mask_index
                );
            }
        }
        Ok(())
    }
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

    pub fn filter(&self) -> Filter {
        Filter {
            temperature: self.temperature,
            top_p: self.top_p,
        }
    }

    fn validate(&self, diff: &Diffusion) -> anyhow::Result<()> {
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

/// `Diffusion._sample`: from the all-mask prior (held positions filled in) along
/// `linspace(1, eps, steps + 1)`, then, when `noise_removal` is on, one denoising step at the last
/// time (an argmax, or for `Analytic` the denoiser update). `FirstHitting` and `Confidence` run
/// their own schedules (see [`Predictor`]).
pub fn sample(
    den: &dyn Denoiser,
    diff: &Diffusion,
    spec: &SampleSpec,
    device: Device,
    uniforms: &mut dyn Uniforms,
    keep_trajectory: bool,
) -> anyhow::Result<SampleOut> {
    sample_observed(
        den,
        diff,
        spec,
        device,
        uniforms,
        keep_trajectory,
        &mut || {},
    )
}

/// How many times [`sample_observed`] calls its observer: once per step of the predictor's
/// schedule (per generated token for first hitting), so a progress bar can be sized up front.
pub fn observed_steps(spec: &SampleSpec) -> u64 {
    match spec.predictor {
        Predictor::FirstHitting => spec.length as u64,
        _ => spec.steps.max(0) as u64,
    }
}

/// [`sample`], calling `on_step` after every step (a progress bar's tick).
pub fn sample_observed(
    den: &dyn Denoiser,
    diff: &Diffusion,
    spec: &SampleSpec,
    device: Device,
    uniforms: &mut dyn Uniforms,
    keep_trajectory: bool,
    on_step: &mut dyn FnMut(),
) -> anyhow::Result<SampleOut> {
    if spec.predictor == Predictor::DdpmCache
        && !matches!(diff.noise, crate::diffusion::Noise::LogLinear { .. })
    {
        anyhow::bail!(
            "sampling.predictor=ddpm_cache needs noise=loglinear (it uses t as the move chance); use sampling.predictor=ddpm"
        );
    }
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
    let mut x = pin(prior);
    let mut trajectory = Vec::new();
    if keep_trajectory {
        trajectory.push(x.copy());
    }
    if matches!(
        spec.predictor,
        Predictor::FirstHitting | Predictor::Confidence
    ) {
        let mut observe = |x: &Tensor| {
            on_step();
            if keep_trajectory {
                trajectory.push(x.copy());
            }
        };
        x = if spec.predictor == Predictor::FirstHitting {
            first_hitting::run(&filtered, diff, x, &pin, uniforms, &mut observe)?
        } else {
            let run = confidence::Run {
                steps: spec.steps,
                rule: spec.confidence,
                filter: spec.filter(),
            };
            run.run(den, diff, x, &pin, uniforms, &mut observe)?
        };
        return Ok(SampleOut {
            tokens: x,
            trajectory,
            forward_calls: den.calls() - calls_before,
        });
    }
    let den: &dyn Denoiser = &filtered;
    let timesteps = Tensor::linspace(1.0, spec.eps, spec.steps + 1, (Kind::Float, device));
    let dt = (1.0 - spec.eps) / spec.steps as f64;
    let mut cache: Option<Tensor> = None;
    // With `cache_rows`: which rows changed in the last step, `[B]` bool.
    let mut stale: Option<Tensor> = None;
    let ones = Tensor::ones([spec.batch, 1], (Kind::Float, device));
    for i in 0..spec.steps {
        let t = timesteps.get(i) * &ones;
        x = pin(match spec.predictor {
            Predictor::Ddpm => ddpm::step_with(den, diff, &x, &t, dt, spec.draws, uniforms),
            Predictor::DdpmCache if spec.cache_rows && !diff.time_conditioning => {
                // Rows whose x changed since the cached output get a fresh pass; the rest reuse it.
                let p_x0 = match (cache.take(), stale.take()) {
                    (Some(p), Some(rows)) => {
                        let idx = rows.nonzero().squeeze_dim(1);
                        if idx.size()[0] == 0 {
                            p
                        } else {
                            let sigma = diff.noise.total(&t).reshape([-1]).index_select(0, &idx);
                            let fresh = den.log_probs(&x.index_select(0, &idx), &sigma).exp();
                            p.index_copy(0, &idx, &fresh.to_kind(p.kind()))
                        }
                    }
                    _ => den.log_probs(&x, &diff.noise.total(&t).reshape([-1])).exp(),
                };
                let (p_x0, x_next) =
                    ddpm_cache::step_with(den, diff, &x, &t, dt, Some(p_x0), spec.draws, uniforms);
                let x_next = pin(x_next);
                stale = Some(x_next.ne_tensor(&x).any_dim(1, false));
                cache = Some(p_x0);
                x_next
            }
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
                let x_next = pin(x_next);
                // Reusable only while xt is unchanged and the network ignores the time.
                if x_next.equal(&x) && !diff.time_conditioning {
                    cache = Some(p_x0);
                }
                x_next
            }
            Predictor::Analytic => analytic::step(den, diff, &x, &t, dt, uniforms),
            Predictor::FirstHitting | Predictor::Confidence => unreachable!("dispatched above"),
        });
        on_step();
        if keep_trajectory {
            trajectory.push(x.copy());
        }
    }
    if spec.noise_removal {
        let t = timesteps.get(spec.steps) * &ones;
        x = pin(match spec.predictor {
            // One more categorical draw, with the mask token forbidden.
            Predictor::Analytic => analytic::denoise(den, diff, &x, &t, uniforms),
            Predictor::Ddpm | Predictor::DdpmCache => {
                let sigma = diff.noise.total(&t).reshape([-1]);
                den.log_probs(&x, &sigma).argmax(-1, false)
            }
            Predictor::FirstHitting | Predictor::Confidence => unreachable!("dispatched above"),
        });
    }
    Ok(SampleOut {
        tokens: x,
        trajectory,
        forward_calls: den.calls() - calls_before,
    })
}
