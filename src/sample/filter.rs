//! Temperature and nucleus (top-p, Holtzman et al., 2020) filtering of p(x0 | xt), applied to the
//! denoiser's output before any draw. Not in the reference.
//!
//! Entries the parameterization rules out (the SUBS mask column, every column but the token at an
//! unmasked position) arrive as the reference's `-1e6` stand-in; they stay at exactly that value,
//! because dividing `-1e6` by a large temperature would otherwise give them real mass.

use super::Denoiser;
use crate::diffusion::subs::NEG_INFINITY;
use tch::{Kind, Tensor};

/// Below this a log-probability counts as "impossible" and is pinned at [`NEG_INFINITY`]. Halfway
/// to the stand-in: no real log-probability gets near it, and `exp` of it is 0 in any float kind.
const IMPOSSIBLE: f64 = NEG_INFINITY / 2.0;

/// How p(x0 | xt) is reshaped before sampling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Filter {
    /// Logits are divided by it; 1.0 leaves them, towards 0 approaches the argmax.
    pub temperature: f64,
    /// Keep the smallest set of most probable tokens whose mass reaches `top_p` (always the top
    /// token); 1.0 turns the filter off.
    pub top_p: f64,
}

impl Filter {
    pub const NONE: Filter = Filter {
        temperature: 1.0,
        top_p: 1.0,
    };

    pub fn is_identity(&self) -> bool {
        self.temperature == 1.0 && self.top_p >= 1.0
    }

    /// Checks the ranges before any tensor exists; the message names the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            anyhow::bail!(
                "sampling temperature={} must be a finite number > 0 (1.0 leaves p(x0|xt) unchanged)",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            anyhow::bail!(
                "sampling top_p={} must lie in (0, 1] (1.0 turns nucleus filtering off)",
                self.top_p
            );
        }
        Ok(())
    }

    /// Log-probabilities `[.., V]` → filtered, renormalised log-probabilities of the same shape
    /// and kind. Exactly the input (same storage) when the filter is the identity.
    pub fn apply(&self, log_probs: &Tensor) -> Tensor {
        if self.is_identity() {
            return log_probs.shallow_clone();
        }
        let kind = log_probs.kind();
        let impossible = log_probs.le(IMPOSSIBLE);
        let mut lp = (log_probs / self.temperature)
            .masked_fill(&impossible, NEG_INFINITY)
            .log_softmax(-1, kind);
        if self.top_p < 1.0 {
            let (sorted, order) = lp.sort(-1, true);
            // The running mass in float64: float32 sums over a 50k vocabulary drift by more than
            // the differences that decide where the nucleus ends. Only this [B, L, V] is float64.
            let p = sorted.to_kind(Kind::Double).exp();
            // Mass strictly before each token in the sorted order: a token is kept while the
            // tokens above it have not yet reached p, which makes the set minimal and never empty.
            let before = p.cumsum(-1, Kind::Double) - &p;
            let drop_sorted = before.ge(self.top_p);
            let drop = drop_sorted.scatter(-1, &order, &drop_sorted);
            lp = lp.masked_fill(&drop, NEG_INFINITY).log_softmax(-1, kind);
        }
        lp.masked_fill(&impossible, NEG_INFINITY)
    }
}

/// A [`Denoiser`] whose output goes through a [`Filter`]; forward passes are the inner one's.
pub struct Filtered<'a> {
    pub inner: &'a dyn Denoiser,
    pub filter: Filter,
}

impl Denoiser for Filtered<'_> {
    fn log_probs(&self, x: &Tensor, sigma: &Tensor) -> Tensor {
        self.filter.apply(&self.inner.log_probs(x, sigma))
    }

    fn calls(&self) -> usize {
        self.inner.calls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of distinct probabilities with a SUBS-style mask column at -1e6 (index 2).
    fn rows() -> Tensor {
        let p: [[f64; 6]; 3] = [
            [0.05, 0.40, 0.0, 0.25, 0.20, 0.10],
            [0.91, 0.03, 0.0, 0.02, 0.01, 0.03],
            [0.18, 0.22, 0.0, 0.19, 0.21, 0.20],
        ];
        let flat: Vec<f64> = p.iter().flatten().copied().collect();
        let t = Tensor::from_slice(&flat).view([1, 3, 6]);
        t.log().clamp_min(NEG_INFINITY).to_kind(Kind::Float)
    }

    #[test]
    fn identity_is_exact() {
        let lp = rows();
        let out = Filter::NONE.apply(&lp);
        assert!(out.equal(&lp));
    }

    /// The kept set, read back from the output, must reach p, and dropping its least probable
    /// member must fall short of p: checked against a plain sort of the input in f64.
    #[test]
    fn nucleus_keeps_a_minimal_set_reaching_p() {
        let lp = rows();
        let probs: Vec<Vec<f64>> =
            Vec::<Vec<f64>>::try_from(lp.exp().view([3, 6]).to_kind(Kind::Double)).unwrap();
        for top_p in [0.05, 0.5, 0.6, 0.9, 0.95, 0.999] {
            let f = Filter {
                temperature: 1.0,
                top_p,
            };
            let out = f.apply(&lp).exp().view([3, 6]).to_kind(Kind::Double);
            let out: Vec<Vec<f64>> = Vec::<Vec<f64>>::try_from(out).unwrap();
            for (row, q) in probs.iter().zip(&out) {
                let kept: Vec<usize> = (0..6).filter(|&v| q[v] > 0.0).collect();
                assert!(!kept.is_empty());
                assert_eq!(q[2], 0.0, "the mask column gained mass");
                let mass: f64 = kept.iter().map(|&v| row[v]).sum();
                assert!(mass >= top_p - 1e-6, "p={top_p}: kept mass {mass}");
                let least = kept.iter().map(|&v| row[v]).fold(f64::INFINITY, f64::min);
                assert!(
                    mass - least < top_p,
                    "p={top_p}: the set {kept:?} is not minimal"
                );
                // Kept tokens are the most probable ones, renormalised in proportion.
                for (v, pv) in row.iter().enumerate() {
                    if !kept.contains(&v) {
                        assert!(*pv <= least, "p={top_p}: dropped {v} above a kept token");
                    }
                }
                for &v in &kept {
                    assert!((q[v] - row[v] / mass).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn low_temperature_approaches_argmax_and_high_flattens() {
        let lp = rows();
        let argmax = lp.argmax(-1, false);
        let cold = Filter {
            temperature: 1e-3,
            top_p: 1.0,
        }
        .apply(&lp)
        .exp();
        let top = cold.gather(-1, &argmax.unsqueeze(-1), false);
        assert!(top.min().double_value(&[]) > 1.0 - 1e-6);
        // Closed form at T = 2: p^(1/2) renormalised, with the mask column still 0.
        let warm = Filter {
            temperature: 2.0,
            top_p: 1.0,
        }
        .apply(&lp)
        .exp()
        .to_kind(Kind::Double);
        let root = lp.exp().to_kind(Kind::Double).sqrt();
        let expected = &root / root.sum_dim_intlist(-1, true, Kind::Double);
        let diff = (&warm - &expected).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "T=2 off by {diff}");
        assert_eq!(warm.select(2, 2).abs().max().double_value(&[]), 0.0);
        // Even a huge temperature leaves ruled-out entries at zero.
        let hot = Filter {
            temperature: 1e9,
            top_p: 1.0,
        }
        .apply(&lp)
        .exp();
        assert_eq!(hot.select(2, 2).abs().max().double_value(&[]), 0.0);
    }
}
