//! Confidence-ordered parallel decoding, as large masked diffusion LMs decode (MaskGIT, Chang et
//! al., 2022; LLaDA's low-confidence remasking, Nie et al., 2025). Not in the reference.
//!
//! Each step draws a candidate token for every masked position and commits only the candidates
//! the model is most sure of. It trades the sampler's exactness for fewer steps: positions
//! committed together are drawn independently, and the order favours likely tokens.

use super::categorical;
use super::filter::Filter;
use super::{ConfidenceRule, Denoiser, Reverse, prior_move_chance, sigma_of_move_chance};
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
    /// Fills every mask of `x [B, L]`.
    pub fn run(
        &self,
        den: &dyn Denoiser,
        walk: &mut Reverse,
        mut x: Tensor,
    ) -> anyhow::Result<Tensor> {
        let m = walk.diff.mask_index;
        let (b, l) = x.size2()?;
        let device = x.device();
        let mask_col = Tensor::from(m).to_device(device);
        let mc_max = prior_move_chance(walk.diff, b, device); // [B]
        for i in 0..self.steps {
            let masked = x.eq(m); // [B, L]
            let n = masked.sum_dim_intlist(-1, false, Kind::Int64); // [B]
            if n.max().int64_value(&[]) == 0 {
                break;
            }
            // A row's noise level is the one its masked fraction estimates, capped at the
            // schedule's start; a time-conditioned model sees x at a plausible sigma.
            let mc = (n.to_kind(Kind::Double) / l as f64).minimum(&mc_max);
            let sigma = sigma_of_move_chance(&mc);
            let log_p = den.log_probs(&x, &sigma); // [B, L, V]
            let q = self
                .filter
                .apply(&log_p)
                .exp()
                .index_fill(2, &mask_col, 0.0);
            let candidate = categorical::sample(&q, walk.uniforms); // [B, L]
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
            let commit = self.commit(&conf, &masked, &n, self.steps - i);
            x = (walk.pin)(candidate.where_self(&commit, &x));
            (walk.on_step)(&x);
        }
        ensure!(
            x.eq(m).any().int64_value(&[]) == 0,
            "confidence decoding left masked positions (the denoiser gave no mass outside the mask token)"
        );
        Ok(x)
    }

    /// Which positions a step commits, `[B, L]` bool; the last step commits every masked one.
    fn commit(&self, conf: &Tensor, masked: &Tensor, n: &Tensor, steps_left: i64) -> Tensor {
        if steps_left == 1 {
            return masked.shallow_clone();
        }
        match self.rule {
            ConfidenceRule::Schedule => {
                let k = (n.to_kind(Kind::Double) / steps_left as f64).ceil(); // [B]
                let rank = conf.argsort(-1, true).argsort(-1, false); // [B, L]
                rank.to_kind(Kind::Double)
                    .lt_tensor(&k.unsqueeze(1))
                    .logical_and(masked)
            }
            ConfidenceRule::Threshold(c) => {
                let best = conf.argmax(-1, true); // [B, 1]
                let top = masked.zeros_like().scatter_value(1, &best, 1);
                conf.ge(c).logical_or(&top).logical_and(masked)
            }
        }
    }
}
