//! Confidence-ordered parallel decoding, as large masked diffusion LMs decode (MaskGIT, Chang et
//! al., 2022; LLaDA's low-confidence remasking, Nie et al., 2025). Not in the reference.
//!
//! Each step draws a candidate token for every masked position and commits only the candidates
//! the model is most sure of. It trades the sampler's exactness for fewer steps: positions
//! committed together are drawn independently, and the order favours likely tokens.

use super::categorical::{self, Uniforms};
use super::filter::Filter;
use super::{ConfidenceRule, Denoiser};
use crate::diffusion::Diffusion;
use anyhow::ensure;
use tch::{Kind, Tensor};

/// A confidence-decoding run: at most `steps` denoiser calls, the last of which commits every
/// remaining position.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub steps: i64,
    pub rule: ConfidenceRule,
    /// Shapes the candidate draw only. Confidence is read from the unfiltered p(x0 | xt) (as
    /// LLaDA does), so a sharpened draw does not make every candidate look certain.
    pub filter: Filter,
}

impl Run {
    /// Fills every mask of `x [B, L]`. `pin` is applied after every update (held positions);
    /// `on_step` sees x after each step.
    pub fn run(
        &self,
        den: &dyn Denoiser,
        diff: &Diffusion,
        mut x: Tensor,
        pin: &dyn Fn(Tensor) -> Tensor,
        u: &mut dyn Uniforms,
        on_step: &mut dyn FnMut(&Tensor),
    ) -> anyhow::Result<Tensor> {
        let m = diff.mask_index;
        let (b, l) = x.size2()?;
        let device = x.device();
        let mask_col = Tensor::from(m).to_device(device);
        let sigma_1 = diff
            .noise
            .total(&Tensor::ones([b], (Kind::Float, device)))
            .to_kind(Kind::Double);
        let mc_max = sigma_1.neg().expm1().neg(); // [B]
        for i in 0..self.steps {
            let masked = x.eq(m); // [B, L]
            let n = masked.sum_dim_intlist(-1, false, Kind::Int64); // [B]
            if n.max().int64_value(&[]) == 0 {
                break;
            }
            // A row's noise level is the one its masked fraction estimates, capped at the
            // schedule's start; a time-conditioned model sees x at a plausible sigma.
            let mc = (n.to_kind(Kind::Double) / l as f64).minimum(&mc_max);
            let sigma = mc.neg().log1p().neg().to_kind(Kind::Float);
            let log_p = den.log_probs(&x, &sigma); // [B, L, V]
            let q = self
                .filter
                .apply(&log_p)
                .exp()
                .index_fill(2, &mask_col, 0.0);
            let candidate = categorical::sample(&q, u); // [B, L]
            let p = log_p
                .exp()
                .to_kind(Kind::Double)
                .index_fill(2, &mask_col, 0.0);
            let p = &p
                / p.sum_dim_intlist(-1, true, Kind::Double)
                    .clamp_min(f64::MIN_POSITIVE);
            // Unmasked positions rank below every masked one.
            let conf = p
                .gather(2, &candidate.unsqueeze(-1), false)
                .squeeze_dim(-1)
                .masked_fill(&masked.logical_not(), -1.0); // [B, L]
            let steps_left = self.steps - i;
            let commit = if steps_left == 1 {
                masked.shallow_clone()
            } else {
                match self.rule {
                    ConfidenceRule::Schedule => {
                        let k = (n.to_kind(Kind::Double) / steps_left as f64).ceil(); // [B]
                        let rank = conf.argsort(-1, true).argsort(-1, false); // [B, L]
                        rank.to_kind(Kind::Double)
                            .lt_tensor(&k.unsqueeze(1))
                            .logical_and(&masked)
                    }
                    ConfidenceRule::Threshold(c) => {
                        let best = conf.argmax(-1, true); // [B, 1]
                        let top = masked.zeros_like().scatter_value(1, &best, 1);
                        conf.ge(c).logical_or(&top).logical_and(&masked)
                    }
                }
            };
            x = pin(candidate.where_self(&commit, &x));
            on_step(&x);
        }
        ensure!(
            x.eq(m).any().int64_value(&[]) == 0,
            "confidence decoding left masked positions (the denoiser gave no mass outside the mask token)"
        );
        Ok(x)
    }
}
