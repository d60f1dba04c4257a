//! DDPM update that reuses the denoiser's output while no token changes (reference:
//! `Diffusion._ddpm_caching_update`). With time conditioning off, p(x0 | xt) depends only on xt,
//! so an unchanged xt needs no new forward pass — most steps of a long schedule change nothing.
//! Log-linear noise only: it takes the move chance to be `t` itself, as the reference does.

use super::Denoiser;
use super::categorical::Uniforms;
use super::ddpm::{DrawMode, reverse_draw};
use crate::diffusion::Diffusion;
use tch::Tensor;

/// One step; `cache` is `p_x0` from the previous step when still valid. Returns the new
/// `p_x0` and `x`.
pub fn step(
    den: &dyn Denoiser,
    diff: &Diffusion,
    x: &Tensor,
    t: &Tensor,
    dt: f64,
    cache: Option<Tensor>,
    u: &mut dyn Uniforms,
) -> (Tensor, Tensor) {
    step_with(den, diff, x, t, dt, cache, DrawMode::Reference, u)
}

#[allow(clippy::too_many_arguments)]
pub fn step_with(
    den: &dyn Denoiser,
    diff: &Diffusion,
    x: &Tensor,
    t: &Tensor,
    dt: f64,
    cache: Option<Tensor>,
    mode: DrawMode,
    u: &mut dyn Uniforms,
) -> (Tensor, Tensor) {
    let t = t.reshape([-1]);
    let p_x0 = match cache {
        Some(p) => p,
        None => {
            let sigma_t = diff.noise.total(&t);
            den.log_probs(x, &sigma_t).exp()
        }
    };
    let mc_t = t.view([-1, 1, 1]);
    let mc_s = (&t - dt).view([-1, 1, 1]);
    let x_next = reverse_draw(&p_x0, &mc_t, &mc_s, x, diff.mask_index, mode, u);
    (p_x0, x_next)
}
