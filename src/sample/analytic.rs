//! SEDD's analytic ("Tweedie tau-leaping") predictor and its final denoiser step, as MDLM's
//! reference computes them (Lou et al., 2024; reference: `Diffusion._analytic_update`,
//! `Diffusion._denoiser_update`, `get_score`, `_staggered_score`, `_transp_transition`).
//!
//! Unlike the DDPM steps, every position is redrawn (an unmasked token keeps itself only because
//! its score puts all mass there), and the model output is read as a ratio of marginals (a
//! "score") rather than as p(x0 | xt).

use super::categorical::{self, Uniforms};
use super::{Denoiser, StepAt};
use crate::diffusion::{Diffusion, Parameterization, subs::NEG_INFINITY};
use tch::{Kind, Tensor};

/// Everything an analytic update computes, for inspection (parity tests); samplers keep `x_next`.
pub struct AnalyticStep {
    /// sigma(t), `[B, 1]` like `t`.
    pub curr_sigma: Tensor,
    /// sigma(t - dt), `[B, 1]`; zero for the denoiser step.
    pub next_sigma: Tensor,
    /// `curr_sigma - next_sigma`, `[B, 1]`.
    pub dsigma: Tensor,
    /// What the denoiser returned, `[B, L, V]`.
    pub model_output: Tensor,
    pub score: Tensor,
    pub stag_score: Tensor,
    pub transition: Tensor,
    /// Unnormalised categorical weights handed to the draw, `[B, L, V]`.
    pub probs: Tensor,
    pub x_next: Tensor,
}

/// One step from `t` (`[B, 1]`) to `t - dt`.
pub fn step(at: StepAt, u: &mut dyn Uniforms) -> AnalyticStep {
    let StepAt {
        den,
        diff,
        x,
        t,
        dt,
    } = at;
    let curr_sigma = diff.noise.total(t);
    let next_sigma = diff.noise.total(&(t - dt));
    update(den, diff, x, curr_sigma, next_sigma, false, u)
}

/// The last step of an analytic run (reference: `_denoiser_update`): as a step all the way from
/// sigma(t) to 0, with the mask token forbidden. Consumes one categorical draw.
pub fn denoise(
    den: &dyn Denoiser,
    diff: &Diffusion,
    x: &Tensor,
    t: &Tensor,
    u: &mut dyn Uniforms,
) -> AnalyticStep {
    let sigma = diff.noise.total(t);
    let zero = sigma.zeros_like();
    update(den, diff, x, sigma, zero, true, u)
}

/// From `curr_sigma` to `next_sigma`; `final_step` zeroes the mask column so that no position
/// stays masked.
fn update(
    den: &dyn Denoiser,
    diff: &Diffusion,
    x: &Tensor,
    curr_sigma: Tensor,
    next_sigma: Tensor,
    final_step: bool,
    u: &mut dyn Uniforms,
) -> AnalyticStep {
    // Exactly `curr_sigma` when `next_sigma` is zero, so the denoiser step's numbers are those
    // of the reference's, which uses sigma itself.
    let dsigma = &curr_sigma - &next_sigma;
    let (model_output, score) = score(den, diff, x, &curr_sigma);
    let stag_score = staggered(&score, &dsigma, diff.mask_index);
    let transition = transition(x, &dsigma, diff.vocab_size, diff.mask_index);
    let mut probs = &stag_score * &transition;
    if final_step {
        probs = set_column(&probs, diff.mask_index, 0.0);
    }
    let x_next = categorical::sample(&probs, u);
    AnalyticStep {
        curr_sigma,
        next_sigma,
        dsigma,
        model_output,
        score,
        stag_score,
        transition,
        probs,
        x_next,
    }
}

/// `get_score`: (model output, score), both `[B, L, V]`. `sigma` is `[B, 1]` or `[B]`; the
/// denoiser gets it flattened (and zeroes it itself without time conditioning), while the SUBS
/// conversion below always uses the true sigma.
///
/// SUBS gives log p(x0 | xt); the score is the ratio p_t(y) / p_t(x). For a masked x that is
/// p(y) k with k = e^-sigma / (1 - e^-sigma) = 1 / expm1(sigma), and 1 for y = m. For an
/// unmasked x only y = x (ratio 1) and y = m (ratio 1/k) are reachable. SEDD (and D3PM, as the
/// reference does) output a log-score already.
pub fn score(den: &dyn Denoiser, diff: &Diffusion, x: &Tensor, sigma: &Tensor) -> (Tensor, Tensor) {
    let sigma = sigma.reshape([-1]); // [B]
    let out = den.log_probs(x, &sigma);
    let log_score = match diff.parameterization {
        Parameterization::Subs => {
            let m = diff.mask_index;
            let (b, l, _) = out.size3().expect("[B, L, V]");
            let log_k = sigma.expm1().log().neg().to_kind(out.kind()); // [B]
            let masked_rows = set_column(&(&out + log_k.view([-1, 1, 1])), m, 0.0);
            let idx = x.unsqueeze(-1); // [B, L, 1]
            let unmasked_rows = out.full_like(NEG_INFINITY).scatter_value(2, &idx, 0.0);
            let neg_log_k = log_k.neg().view([-1, 1, 1]).expand([b, l, 1], false);
            let unmasked_rows = unmasked_rows.index_copy(2, &column(m, &out), &neg_log_k);
            masked_rows.where_self(&x.eq(m).unsqueeze(-1), &unmasked_rows)
        }
        // The AR baseline never reaches a diffusion sampler (sample-eval dispatches it first).
        Parameterization::Sedd | Parameterization::D3pm | Parameterization::Ar => {
            out.shallow_clone()
        }
    };
    let score = log_score.exp();
    (out, score)
}

/// `_staggered_score(s, d)`: `s e^d`, and the mask entry gains `(1 - e^d) sum_v s_v` (the sum of
/// the unscaled score). `d` is `[B, 1]` or `[B]`.
pub fn staggered(score: &Tensor, d: &Tensor, mask_index: i64) -> Tensor {
    let e = d.reshape([-1, 1]).exp(); // [B, 1]
    let extra = (e.neg() + 1.0) * score.sum_dim_intlist(-1, false, score.kind()); // [B, L]
    let scaled = score * e.unsqueeze(-1);
    let col = scaled.narrow(2, mask_index, 1) + extra.unsqueeze(-1); // [B, L, 1]
    scaled.index_copy(2, &column(mask_index, score), &col)
}

/// `_transp_transition(x, s)`: `e^-s` on the entry of the current token, plus `1 - e^-s` on every
/// entry of rows where x is the mask. `s` is `[B, 1]` or `[B]`.
pub fn transition(x: &Tensor, s: &Tensor, vocab_size: i64, mask_index: i64) -> Tensor {
    let (b, l) = x.size2().expect("[B, L]");
    let keep = s.reshape([-1, 1]).neg().exp(); // [B, 1]
    let onehot = Tensor::zeros([b, l, vocab_size], (Kind::Float, x.device())).scatter_value(
        2,
        &x.unsqueeze(-1),
        1.0,
    );
    let edge = onehot * keep.unsqueeze(-1).to_kind(Kind::Float);
    let leave = (keep.neg() + 1.0).to_kind(Kind::Float); // [B, 1]
    let add = leave.expand([b, l], false) * x.eq(mask_index).to_kind(Kind::Float); // [B, L]
    edge + add.unsqueeze(-1)
}

fn column(index: i64, like: &Tensor) -> Tensor {
    Tensor::from_slice(&[index]).to_device(like.device())
}

fn set_column(t: &Tensor, index: i64, value: f64) -> Tensor {
    t.index_fill(2, &column(index, t), value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::Noise;
    use crate::sample::categorical::TorchUniforms;
    use std::cell::Cell;

    /// SUBS-shaped oracle: uniform over the non-mask tokens at masked positions.
    struct Uniform {
        v: i64,
        m: i64,
        calls: Cell<usize>,
    }

    impl Denoiser for Uniform {
        fn log_probs(&self, x: &Tensor, sigma: &Tensor) -> Tensor {
            self.calls.set(self.calls.get() + 1);
            let (b, l) = x.size2().unwrap();
            let logits = Tensor::zeros([b, l, self.v], (Kind::Float, x.device()));
            let d = diffusion(self.v, self.m);
            d.parameterize(&logits, x, &d.process_sigma(sigma))
        }
        fn calls(&self) -> usize {
            self.calls.get()
        }
    }

    fn diffusion(v: i64, m: i64) -> Diffusion {
        Diffusion {
            parameterization: Parameterization::Subs,
            noise: Noise::LogLinear { eps: 1e-3 },
            mask_index: m,
            vocab_size: v,
            time_conditioning: false,
            t_steps: 0,
            subs_masking: false,
            sampling_eps: 1e-3,
            antithetic_sampling: true,
            importance_sampling: false,
            change_of_variables: false,
        }
    }

    #[test]
    fn unmasked_tokens_stay_and_denoiser_fills_every_mask() {
        tch::manual_seed(0);
        let (v, m) = (11, 4); // mask in the middle of the vocabulary
        let den = Uniform {
            v,
            m,
            calls: Cell::new(0),
        };
        let diff = diffusion(v, m);
        let x = Tensor::from_slice(&[m, 0, m, 10, 3, m]).view([2, 3]);
        let t = Tensor::full([2, 1], 0.6, (Kind::Float, tch::Device::Cpu));
        let mut u = TorchUniforms { kind: Kind::Double };
        for _ in 0..20 {
            let at = StepAt {
                den: &den,
                diff: &diff,
                x: &x,
                t: &t,
                dt: 0.1,
            };
            let next = step(at, &mut u).x_next;
            let kept = x.ne(m);
            assert!(next.masked_select(&kept).equal(&x.masked_select(&kept)));
            let done = denoise(&den, &diff, &x, &t, &mut u).x_next;
            assert_eq!(i64::try_from(done.eq(m).sum(Kind::Int64)).unwrap(), 0);
            assert!(done.masked_select(&kept).equal(&x.masked_select(&kept)));
        }
    }
}
