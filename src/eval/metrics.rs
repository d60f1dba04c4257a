//! Perplexity bookkeeping (reference: `NLL`, `BPD`, `Perplexity` torchmetrics over
//! `losses.nlls` weighted by the token mask). Sums are float64 so long validations do not drift.

use tch::{Kind, Tensor};

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NllMeter {
    pub nll_sum: f64,
    pub tokens: f64,
}

impl NllMeter {
    /// `nlls [B, L]` already multiplied by the mask; `mask [B, L]`.
    pub fn update(&mut self, nlls: &Tensor, mask: &Tensor) {
        let s = Tensor::stack(
            &[
                nlls.to_kind(Kind::Double).sum(Kind::Double),
                mask.to_kind(Kind::Double).sum(Kind::Double),
            ],
            0,
        )
        .to_device(tch::Device::Cpu);
        let v: Vec<f64> = Vec::<f64>::try_from(s).expect("two sums");
        self.nll_sum += v[0];
        self.tokens += v[1];
    }

    pub fn nll(&self) -> f64 {
        self.nll_sum / self.tokens
    }

    pub fn bpd(&self) -> f64 {
        self.nll() / std::f64::consts::LN_2
    }

    pub fn ppl(&self) -> f64 {
        self.nll().exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_weighted_mean_over_batches() {
        let mut m = NllMeter::default();
        // Batch 1: 3 tokens with total 6; batch 2: 1 token with 2 → mean 2.0 (not the mean of means).
        m.update(
            &Tensor::from_slice(&[1.0f32, 2.0, 3.0, 0.0]).view([1, 4]),
            &Tensor::from_slice(&[1.0f32, 1.0, 1.0, 0.0]).view([1, 4]),
        );
        m.update(
            &Tensor::from_slice(&[2.0f32, 0.0]).view([1, 2]),
            &Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]),
        );
        assert!((m.nll() - 2.0).abs() < 1e-12);
        assert!((m.ppl() - 2f64.exp()).abs() < 1e-12);
        assert!((m.bpd() - 2.0 / 2f64.ln()).abs() < 1e-12);
    }
}
