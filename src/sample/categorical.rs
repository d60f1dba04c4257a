//! The one categorical draw every sampler uses (reference: `_sample_categorical`):
//! `argmax_v p_v / (1e-10 - log(u_v + 1e-10))`, i.e. Gumbel-max on unnormalised probabilities.

use tch::{Device, Kind, Tensor};

/// Where the uniforms of the categorical draws come from.
pub trait Uniforms {
    /// A uniform tensor of `shape` on `device`; each call is one draw of the reference.
    fn next(&mut self, shape: &[i64], device: Device) -> Tensor;
}

/// Fresh draws from libtorch's generator. `Kind::Double` is our default: float32 uniforms have
/// a granularity of 2^-24, which caps the Gumbel tail near 17 and measurably lowers sample
/// diversity (Zheng et al., 2024); `Kind::Float` reproduces the reference.
pub struct TorchUniforms {
    pub kind: Kind,
}

impl Uniforms for TorchUniforms {
    fn next(&mut self, shape: &[i64], device: Device) -> Tensor {
        Tensor::rand(shape, (self.kind, device))
    }
}

/// Replays stored draws in order (parity tests, reproducing a reference run).
pub struct ReplayUniforms {
    draws: std::collections::VecDeque<Tensor>,
}

impl ReplayUniforms {
    pub fn new(draws: Vec<Tensor>) -> ReplayUniforms {
        ReplayUniforms {
            draws: draws.into(),
        }
    }

    pub fn remaining(&self) -> usize {
        self.draws.len()
    }
}

impl Uniforms for ReplayUniforms {
    fn next(&mut self, shape: &[i64], device: Device) -> Tensor {
        let u = self.draws.pop_front().expect("replayed uniforms exhausted");
        assert_eq!(u.size(), shape, "replayed uniform has the wrong shape");
        u.to_device(device)
    }
}

/// `probs [.., V]` (unnormalised) → sampled indices `[..]`. The arithmetic runs in the uniforms'
/// precision, so float64 uniforms give a float64 draw.
pub fn sample(probs: &Tensor, uniforms: &mut dyn Uniforms) -> Tensor {
    let u = uniforms.next(&probs.size(), probs.device());
    let probs = probs.to_kind(u.kind());
    let gumbel_norm = (u + 1e-10).log().neg() + 1e-10;
    (probs / gumbel_norm).argmax(-1, false)
}
