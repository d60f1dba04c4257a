//! Semi-autoregressive generation beyond the model's length (MDLM §4.3; reference:
//! `Diffusion.sample_subs_guidance`). Each stride denoises a fresh all-mask window whose first
//! `length - stride_length` positions hold the previous window's tail, emits the window's first
//! `stride_length` tokens and carries the rest forward.

use super::categorical::Uniforms;
use super::ddpm::DrawMode;
use super::ddpm_cache::Cache;
use super::{Denoiser, Held, StepAt};
use crate::diffusion::{Diffusion, Noise};
use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug)]
pub struct SemiArSpec {
    pub batch: i64,
    /// The model's window (`model.length`).
    pub length: i64,
    /// Tokens emitted per stride; the other `length - stride_length` are carried over.
    pub stride_length: i64,
    /// The reference runs `num_strides + 1` windows.
    pub num_strides: i64,
    /// Step of the time grid; each window runs `int(1 / dt) + 1` ddpm_cache steps.
    pub dt: f64,
}

pub struct SemiArOut {
    /// `[B, (num_strides + 1) stride_length + length - stride_length]`.
    pub tokens: Tensor,
    /// Denoiser passes made (the cache skips those of steps after which nothing changed).
    pub forward_calls: usize,
    /// The reference's `sampling_steps`: steps that changed x (every step with time conditioning).
    pub sampling_steps: usize,
    /// x at the start of each window (prior with the carried tail written in), `[B, L]` each.
    pub stride_starts: Vec<Tensor>,
    /// x after each window's last ddpm_cache step, before the argmax, `[B, L]` each.
    pub stride_ends: Vec<Tensor>,
}

pub fn sample_semi_ar(
    den: &dyn Denoiser,
    diff: &Diffusion,
    spec: &SemiArSpec,
    device: Device,
    uniforms: &mut dyn Uniforms,
) -> Result<SemiArOut> {
    sample_semi_ar_prompted(den, diff, spec, None, device, uniforms)
}

/// [`sample_semi_ar`] continuing a prompt: `prefix [B, P]` (P <= length) is held in the first
/// window's first P positions and so begins the output. Later windows see it only through the
/// carried tail, as any earlier text.
pub fn sample_semi_ar_prompted(
    den: &dyn Denoiser,
    diff: &Diffusion,
    spec: &SemiArSpec,
    prefix: Option<&Tensor>,
    device: Device,
    uniforms: &mut dyn Uniforms,
) -> Result<SemiArOut> {
    spec.validate(diff)?;
    let held = prefix.map(|p| prompt(p, spec, diff, device)).transpose()?;
    let (b, l, stride) = (spec.batch, spec.length, spec.stride_length);
    let calls_before = den.calls();
    let mut pieces: Vec<Tensor> = Vec::new();
    let mut target: Option<Tensor> = None;
    let (mut starts, mut ends) = (Vec::new(), Vec::new());
    let mut sampling_steps = 0;
    for window in 0..=spec.num_strides {
        // Only the first window holds the prompt; later ones carry it (or its successors) in
        // their tail.
        let pin = |x: Tensor| match (&held, window) {
            (Some(h), 0) => h.apply(&x),
            _ => x,
        };
        let prior = Tensor::full([b, l], diff.mask_index, (Kind::Int64, device));
        let x = pin(match &target {
            // x[:, :-stride] = target
            Some(tail) => Tensor::cat(
                &[tail.shallow_clone(), prior.narrow(1, l - stride, stride)],
                1,
            ),
            None => prior,
        });
        starts.push(x.copy());
        let (x, changed) = denoise_window(den, diff, spec, x, &pin, uniforms);
        sampling_steps += changed;
        ends.push(x.copy());
        let zero = Tensor::zeros([b], (Kind::Float, device));
        let x0 = pin(den.log_probs(&x, &zero).argmax(-1, false)); // [B, L]
        pieces.push(x0.narrow(1, 0, stride));
        target = Some(x0.narrow(1, stride, l - stride));
    }
    pieces.extend(target);
    Ok(SemiArOut {
        tokens: Tensor::cat(&pieces, 1),
        forward_calls: den.calls() - calls_before,
        sampling_steps,
        stride_starts: starts,
        stride_ends: ends,
    })
}

impl SemiArSpec {
    fn validate(&self, diff: &Diffusion) -> Result<()> {
        if !matches!(diff.noise, Noise::LogLinear { .. }) {
            bail!(
                "semi-autoregressive sampling uses ddpm_cache steps, which need noise=loglinear (they take t as the move chance)"
            );
        }
        if self.stride_length < 1 || self.stride_length > self.length {
            bail!(
                "stride_length={} must lie in 1..={} (model.length)",
                self.stride_length,
                self.length
            );
        }
        if self.num_strides < 0 {
            bail!("num_strides={} must not be negative", self.num_strides);
        }
        if !(self.dt > 0.0 && self.dt <= 1.0) {
            bail!("dt={} must lie in (0, 1]", self.dt);
        }
        Ok(())
    }
}

/// The prompt `p [B, P]` held in the first P positions of a window.
fn prompt(p: &Tensor, spec: &SemiArSpec, diff: &Diffusion, device: Device) -> Result<Held> {
    let (b, l) = (spec.batch, spec.length);
    let (pb, pl) = p.size2()?;
    if pb != b || pl > l {
        bail!("a prompt of shape [{pb}, {pl}] does not fit batch {b} and length {l}");
    }
    let h = Held::prefix(&p.to_device(device), l);
    let prompt = h.tokens.narrow(1, 0, pl);
    if prompt.eq(diff.mask_index).any().int64_value(&[]) != 0 {
        bail!("the prompt holds the mask token {}", diff.mask_index);
    }
    Ok(h)
}

/// One window's `int(1 / dt) + 1` ddpm_cache steps from t = 1 down to t = 0. Returns x and how
/// many steps changed it (every step with time conditioning), the reference's count.
fn denoise_window(
    den: &dyn Denoiser,
    diff: &Diffusion,
    spec: &SemiArSpec,
    mut x: Tensor,
    pin: &dyn Fn(Tensor) -> Tensor,
    uniforms: &mut dyn Uniforms,
) -> (Tensor, usize) {
    // Python's `int(1 / dt)`: truncation of the double quotient.
    let num_steps = (1.0 / spec.dt) as i64;
    let ones = Tensor::ones([spec.batch], (Kind::Float, x.device()));
    // Same reuse rule as the reference: p_x0 is valid while x is unchanged and the network
    // ignores the time.
    let mut cache = Cache::new(diff, DrawMode::Reference, false);
    let mut changed = 0;
    for i in 0..=num_steps {
        // t is [B]; the last step has t = 0, so the mask column weight t - dt is negative and
        // every remaining mask is filled.
        let t = &ones * (1.0 - i as f64 * spec.dt);
        let at = StepAt {
            den,
            diff,
            x: &x,
            t: &t,
            dt: spec.dt,
        };
        x = cache.step(at, uniforms, pin);
        if !cache.is_kept() {
            changed += 1;
        }
    }
    (x, changed)
}

/// The reference's `sequence_lengths`: per row, how many tokens after the first come before the
/// first `eos` (all of them when there is none).
pub fn sequence_lengths(tokens: &Tensor, eos: i64) -> Tensor {
    let n = tokens.size()[1];
    tokens
        .narrow(1, 1, n - 1)
        .eq(eos)
        .cumsum(-1, Kind::Int64)
        .eq(0)
        .sum_dim_intlist(-1, false, Kind::Int64)
}
