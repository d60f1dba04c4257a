//! Ancestral (DDPM-style) update of the reverse process (reference: `Diffusion._ddpm_update`).

use super::Denoiser;
use super::categorical::{self, Uniforms};
use crate::diffusion::Diffusion;
use tch::Tensor;

/// One step from time `t` (`[B, 1]`) to `t - dt`; only masked positions may change.
pub fn step(
    den: &dyn Denoiser,
    diff: &Diffusion,
    x: &Tensor,
    t: &Tensor,
    dt: f64,
    u: &mut dyn Uniforms,
) -> Tensor {
    let sigma_t = diff.noise.total(t).reshape([-1]);
    let sigma_s = diff.noise.total(&(t - dt)).reshape([-1]);
    let mc_t = (sigma_t.neg().exp().neg() + 1.0).view([-1, 1, 1]);
    let mc_s = (sigma_s.neg().exp().neg() + 1.0).view([-1, 1, 1]);
    let log_p_x0 = den.log_probs(x, &sigma_t);
    let q_xs = reverse_probs(&log_p_x0.exp(), &mc_t, &mc_s, diff.mask_index);
    let drawn = categorical::sample(&q_xs, u);
    carry_unmasked(x, &drawn, diff.mask_index)
}

/// Unnormalised `q(x_s | x_t, x0 ~ p)`: `p_x0 (mc_t - mc_s)`, with the mask column set to `mc_s`.
pub fn reverse_probs(p_x0: &Tensor, mc_t: &Tensor, mc_s: &Tensor, mask_index: i64) -> Tensor {
    let q = p_x0 * (mc_t - mc_s);
    let (b, l, _) = q.size3().expect("[B, L, V]");
    let col = mc_s.to_kind(q.kind()).expand([b, l, 1], false);
    q.index_copy(
        2,
        &Tensor::from_slice(&[mask_index]).to_device(q.device()),
        &col,
    )
}

/// Positions that are not masked keep their token; masked ones take the draw.
pub fn carry_unmasked(x: &Tensor, drawn: &Tensor, mask_index: i64) -> Tensor {
    x.where_self(&x.ne(mask_index), drawn)
}
