//! SEDD's analytic ("Tweedie tau-leaping") predictor and its final denoiser step, as MDLM's
//! reference computes them (Lou et al., 2024; reference: `Diffusion._analytic_update`,
//! `Diffusion._denoiser_update`, `get_score`, `_staggered_score`, `_transp_transition`).
//!
//! The model output is read as a ratio of marginals (a "score") rather than as p(x0 | xt). The
//! reference multiplies the staggered score by a dense `[B, L, V]` transition matrix and draws
//! every position from the product. That matrix has two kinds of rows: an unmasked token's row
//! is zero except at the token itself (it can only stay), and a masked row is `1 - e^-dsigma`
//! everywhere with `1` at the mask. So only masked rows are drawn from a product here, and the
//! unmasked ones keep their token: the same draws, without building, scattering into and
//! multiplying by the matrix. [`AnalyticStep::dense`] rebuilds the reference's matrix and
//! product for inspection.

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
    /// Unnormalised categorical weights of a masked row, computed for every row, `[B, L, V]`; the
    /// draw is kept at masked positions only.
    pub masked_probs: Tensor,
    pub x_next: Tensor,
}

impl AnalyticStep {
    /// The reference's dense transition matrix and product (`_transp_transition(x, dsigma)` and
    /// the weights it draws from), rebuilt from the row structure: masked rows are
    /// `masked_probs`, an unmasked row carries its token's staggered score times `e^-dsigma` and
    /// zero elsewhere. For inspection (parity tests); samplers never build it.
    pub fn dense(&self, x: &Tensor, mask_index: i64) -> (Tensor, Tensor) {
        let vocab = self.stag_score.size()[2];
        let transition = transition(x, &self.dsigma, vocab, mask_index);
        let idx = x.unsqueeze(-1);
        let keep = self
            .dsigma
            .reshape([-1, 1, 1])
            .neg()
            .exp()
            .to_kind(Kind::Float);
        let own = self.stag_score.gather(2, &idx, false) * keep; // [B, L, 1]
        let unmasked_rows = self.stag_score.zeros_like().scatter(2, &idx, &own);
        let probs = self
            .masked_probs
            .where_self(&x.eq(mask_index).unsqueeze(-1), &unmasked_rows);
        (transition, probs)
    }
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
    let m = diff.mask_index;
    let stag_score = staggered(&score, &dsigma, m);
    let masked_probs = masked_row_probs(&stag_score, &dsigma, m, final_step);
    // Every row is drawn, as the reference draws them, so the uniforms are consumed alike; an
    // unmasked row's only non-zero weight is its own token, which the draw would return.
    let drawn = categorical::sample(&masked_probs, u);
    let x_next = drawn.where_self(&x.eq(m), x);
    AnalyticStep {
        curr_sigma,
        next_sigma,
        dsigma,
        model_output,
        score,
        stag_score,
        masked_probs,
        x_next,
    }
}

/// A masked row of the reference's product: the staggered score times `1 - e^-d`, and at the
/// mask its score times `e^-d + (1 - e^-d)` (summed in float32 as the reference's matrix sums it,
/// so the weights are bit-identical); zero there on the final step.
fn masked_row_probs(stag_score: &Tensor, d: &Tensor, mask_index: i64, final_step: bool) -> Tensor {
    let keep = d.reshape([-1, 1]).neg().exp(); // [B, 1]
    let leave = (keep.neg() + 1.0).to_kind(Kind::Float);
    let probs = stag_score * leave.unsqueeze(-1);
    let col = column(mask_index, stag_score);
    if final_step {
        return probs.index_fill(2, &col, 0.0);
    }
    let stay = keep.to_kind(Kind::Float) + &leave; // [B, 1]
    let at_mask = stag_score.narrow(2, mask_index, 1) * stay.unsqueeze(-1); // [B, L, 1]
    probs.index_copy(2, &col, &at_mask)
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

/// `_transp_transition(x, s)` (see [`AnalyticStep::dense`]): `e^-s` on the entry of the current token, plus `1 - e^-s` on every
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
        Diffusion::reference_subs(v, m)
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

    /// The structured draw is the reference's dense draw: the weights `dense` rebuilds are the
    /// reference's product (staggered score times `_transp_transition`, mask column zeroed on the
    /// final step), and the same uniforms give the same tokens at every position, masked or not.
    #[test]
    fn structured_draw_equals_the_dense_product_draw() {
        use crate::sample::categorical::ReplayUniforms;
        tch::manual_seed(1);
        let (v, m) = (9, 8);
        let den = Uniform {
            v,
            m,
            calls: Cell::new(0),
        };
        let diff = diffusion(v, m);
        let x = Tensor::from_slice(&[m, 0, m, 7, 3, m, m, 2]).view([2, 4]);
        let t = Tensor::from_slice(&[0.7f32, 0.3]).view([2, 1]);
        for final_step in [false, true] {
            for _ in 0..10 {
                let u = Tensor::rand([2, 4, v], (Kind::Double, tch::Device::Cpu));
                let mut replay = ReplayUniforms::new(vec![u.copy()]);
                let s = if final_step {
                    denoise(&den, &diff, &x, &t, &mut replay)
                } else {
                    let at = StepAt {
                        den: &den,
                        diff: &diff,
                        x: &x,
                        t: &t,
                        dt: 0.2,
                    };
                    step(at, &mut replay)
                };
                let (_, dense) = s.dense(&x, m);
                let mut reference = &s.stag_score * transition(&x, &s.dsigma, v, m);
                if final_step {
                    reference = set_column(&reference, m, 0.0);
                }
                assert!(dense.equal(&reference));
                let dense_draw = categorical::sample(&reference, &mut ReplayUniforms::new(vec![u]));
                assert!(s.x_next.equal(&dense_draw));
            }
        }
    }
}
