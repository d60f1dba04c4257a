//! Absorbing-state ("masked") discrete diffusion: the forward process, the parameterizations and
//! the NELBO. Takes tensors and a backbone, never loaders.

pub mod ar;
pub mod loss;
pub mod noise;
pub mod subs;

pub use loss::{Draws, LossParts};
pub use noise::Noise;

use crate::backbone::Backbone;
use tch::Tensor;

/// How the denoiser's output is read (the config's own enum, one list of them).
pub use crate::config::Parameterization;

/// The diffusion settings that shape every forward pass and loss (the reference keeps these on
/// its `Diffusion` Lightning module).
#[derive(Clone, Debug)]
pub struct Diffusion {
    pub parameterization: Parameterization,
    pub noise: Noise,
    pub mask_index: i64,
    pub vocab_size: i64,
    pub time_conditioning: bool,
    /// 0: continuous time; otherwise the number of discrete steps.
    pub t_steps: i64,
    pub subs_masking: bool,
    pub sampling_eps: f64,
    pub antithetic_sampling: bool,
    pub importance_sampling: bool,
    pub change_of_variables: bool,
}

impl Diffusion {
    /// The reference's default objective (`configs/config.yaml`): SUBS with the log-linear
    /// schedule, no time conditioning, continuous time, antithetic time draws, eps 1e-3 — for
    /// tests and benches that need a diffusion without composing a config.
    pub fn reference_subs(vocab_size: i64, mask_index: i64) -> Diffusion {
        Diffusion {
            parameterization: Parameterization::Subs,
            noise: Noise::LogLinear { eps: 1e-3 },
            mask_index,
            vocab_size,
            time_conditioning: false,
            t_steps: 0,
            subs_masking: false,
            sampling_eps: 1e-3,
            antithetic_sampling: true,
            importance_sampling: false,
            change_of_variables: false,
        }
    }

    /// The conditioning the backbone sees: flattened to `[B]`, zeroed without time conditioning.
    pub fn process_sigma(&self, sigma: &Tensor) -> Tensor {
        let sigma = sigma.reshape([-1]);
        if self.time_conditioning {
            sigma
        } else {
            sigma.zeros_like()
        }
    }

    /// `Diffusion.forward`: backbone on `xt` then the parameterization; log-probabilities (or
    /// log-scores for SEDD) `[B, L, V]`, float32.
    pub fn forward(
        &self,
        backbone: &dyn Backbone,
        xt: &Tensor,
        sigma: &Tensor,
        train: bool,
    ) -> Tensor {
        let sigma = self.process_sigma(sigma);
        let logits = backbone.forward(xt, &sigma, train);
        self.parameterize(&logits, xt, &sigma)
    }

    /// `sigma` is what the backbone saw (`[B]`).
    pub fn parameterize(&self, logits: &Tensor, xt: &Tensor, sigma: &Tensor) -> Tensor {
        match self.parameterization {
            Parameterization::Subs => subs::subs(logits, xt, self.mask_index),
            Parameterization::D3pm => subs::d3pm(logits, self.mask_index, self.subs_masking),
            Parameterization::Sedd => subs::sedd(logits, xt, sigma),
            Parameterization::Ar => ar::log_probs(logits, self.mask_index),
        }
    }
}
