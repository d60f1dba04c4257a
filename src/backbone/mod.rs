//! Denoising networks: token ids (+ a noise level) → raw logits. Knows nothing of diffusion.

pub mod ar;
pub mod dimamba;
pub mod dit;
pub mod layers;
pub mod load;
pub mod scan;

pub use ar::{Ar, ArCache, ArConfig};
pub use dimamba::{BiStrategy, Dimamba, DimambaConfig};
pub use dit::{Dit, DitConfig};
pub use scan::ScanMode;

use tch::{Kind, Tensor};

/// What a backbone computes matrix products in. Norms and the final logits stay float32 either
/// way, as in the reference (its LayerNorm disables autocast; logits leave bf16 before the
/// parameterization).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    /// The reference's `trainer.precision: bf16` (CUDA autocast): linear layers, attention and
    /// GELU in bfloat16.
    Bf16,
}

impl Precision {
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

/// A network that maps `(ids [B, L], sigma [B])` to raw logits `[B, L, V]` (float32).
pub trait Backbone {
    fn forward(&self, ids: &Tensor, sigma: &Tensor, train: bool) -> Tensor;
}
