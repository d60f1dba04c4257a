//! Denoising networks: token ids (+ a noise level) → raw logits. Knows nothing of diffusion.

pub mod ar;
pub mod dimamba;
pub mod dit;
pub mod dropout;
pub mod layers;
pub mod load;
pub mod rotary;
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
    /// What `trainer.precision` computes in on `device`: bf16 autocast only exists on CUDA in
    /// the reference; on CPU it computes in float32, and so do we.
    pub fn resolve(
        requested: crate::config::Precision,
        device: tch::Device,
    ) -> anyhow::Result<Precision> {
        use crate::config::Precision as P;
        Ok(match (requested, device.is_cuda()) {
            (P::Bf16Mixed | P::Bf16True, true) => Precision::Bf16,
            (P::Bf16Mixed | P::Bf16True | P::Fp32, _) => Precision::F32,
            (other, _) => anyhow::bail!(
                "trainer.precision={} is not supported (use bf16 or 32)",
                other.as_str()
            ),
        })
    }

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

/// What the backbones' unit tests share.
#[cfg(test)]
pub(crate) mod test_util {
    use tch::{Kind, Tensor, nn};

    /// Every variable set to distinct non-zero values (zero-initialised adaLN and output layers
    /// included, so gates are open), then the variables whose names contain one of `silenced`
    /// zeroed, to switch a branch off.
    pub fn fill(vs: &nn::VarStore, silenced: &[&str]) {
        tch::no_grad(|| {
            let mut vars: Vec<_> = vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            for (i, (name, v)) in vars.iter().enumerate() {
                let n = v.numel() as i64;
                let vals = (Tensor::arange(n, (Kind::Float, v.device())) * 0.37 + i as f64).sin()
                    * 0.3
                    + 0.05;
                let vals = if silenced.iter().any(|s| name.contains(s)) {
                    vals.zeros_like()
                } else {
                    vals
                };
                v.shallow_clone().copy_(&vals.view_as(v));
            }
        });
    }

    /// The reference drops each residual branch's output elementwise before its gate
    /// (`bias_dropout_add_scale`), never inside attention, the MLP or the mixer.
    /// `x` a block's input, `eval` / `train` its outputs with one residual branch active. Each
    /// element of `train - x` is then either 0 (dropped) or `(eval - x) / (1 - p)`, and the
    /// dropped fraction is about `p`; dropout anywhere inside the branch would scale elements by
    /// other factors.
    pub fn assert_branch_dropout(x: &Tensor, eval: &Tensor, train: &Tensor, p: f64, what: &str) {
        let kept = (eval - x) / (1.0 - p);
        let got = train - x;
        let scale = f64::try_from(x.abs().max())
            .unwrap()
            .max(f64::try_from(kept.abs().max()).unwrap())
            .max(1.0);
        let tol = 1e-5 * scale;
        let live = kept.abs().gt(100.0 * tol);
        let n_live = i64::try_from(live.sum(Kind::Int64)).unwrap();
        assert!(
            n_live as f64 > 0.9 * kept.numel() as f64,
            "{what}: the branch is nearly silent ({n_live} of {} elements), so nothing is tested",
            kept.numel()
        );
        let dropped = got.abs().le(tol).logical_and(&live);
        let carried = (&got - &kept).abs().le(tol).logical_and(&live);
        let neither = live
            .logical_and(&dropped.logical_or(&carried).logical_not())
            .sum(Kind::Int64);
        let bad = i64::try_from(neither).unwrap();
        assert_eq!(
            bad, 0,
            "{what}: {bad} of {n_live} elements are neither dropped nor scaled by 1/(1-p) (tolerance {tol:e}; |x| up to {scale}): dropout is not on the branch output"
        );
        let frac = i64::try_from(dropped.sum(Kind::Int64)).unwrap() as f64 / n_live as f64;
        let sd = (p * (1.0 - p) / n_live as f64).sqrt();
        assert!(
            (frac - p).abs() < 5.0 * sd,
            "{what}: dropped fraction {frac:.3}, rate p = {p}"
        );
    }
}
