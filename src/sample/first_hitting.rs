//! First-hitting sampler for absorbing diffusion (Zheng et al., 2024, "Masked diffusion models are
//! secretly time-agnostic masked models and exploit inaccurate categorical sampling", §4). Not in
//! the reference.
//!
//! Given x at move chance `mc` with `n` masked positions, each masked position became masked at a
//! move chance uniform on `[0, mc]` independently, so (backwards in time) the next unmasking
//! happens at `mc u^(1/n)` and is equally likely to be any of the n. The sampler jumps straight
//! there, unmasks that one position with a token from p(x0 | xt), and repeats: exact for the
//! absorbing process at any schedule, with one denoiser call per generated token instead of one
//! per grid step. It is ddpm's infinitely-many-steps limit without the grid.

use super::Denoiser;
use super::categorical::{self, Uniforms};
use crate::diffusion::Diffusion;
use anyhow::ensure;
use tch::{Kind, Tensor};

/// Fills every mask of `x [B, L]` (rows unmask in parallel, one position per call each). `pin`
/// is applied after every update (held positions); `on_step` sees x after each one.
pub fn run(
    den: &dyn Denoiser,
    diff: &Diffusion,
    mut x: Tensor,
    pin: &dyn Fn(Tensor) -> Tensor,
    u: &mut dyn Uniforms,
    on_step: &mut dyn FnMut(&Tensor),
) -> anyhow::Result<Tensor> {
    let m = diff.mask_index;
    let (b, _l) = x.size2()?;
    let device = x.device();
    // The all-mask prior lives at t = 1; float64 so that a large sigma(1) does not round the
    // move chance to 1 (and the next sigma to infinity).
    let sigma_1 = diff
        .noise
        .total(&Tensor::ones([b], (Kind::Float, device)))
        .to_kind(Kind::Double);
    let mut mc = sigma_1.neg().expm1().neg(); // [B]
    let most = x.eq(m).sum_dim_intlist(-1, false, Kind::Int64).max();
    // Each pass unmasks one position of every unfinished row, so `most` passes finish them all;
    // the bound also stops a degenerate denoiser from looping forever.
    for _ in 0..most.int64_value(&[]) {
        let masked = x.eq(m); // [B, L]
        let n = masked.sum_dim_intlist(-1, false, Kind::Int64); // [B]
        let active = n.gt(0);
        if active.any().int64_value(&[]) == 0 {
            break;
        }
        let u_time = u.next(&[b], device).to_kind(Kind::Double);
        let inv_n = n.to_kind(Kind::Double).clamp_min(1.0).reciprocal();
        mc = (&mc * u_time.pow(&inv_n)).where_self(&active, &mc);
        let sigma = mc.neg().log1p().neg().to_kind(Kind::Float); // [B]
        let p_x0 = den.log_probs(&x, &sigma).exp(); // [B, L, V]
        let v = p_x0.size()[2];
        // Gumbel-max over a 0/1 row: uniform among the masked positions.
        let pos = categorical::sample(&masked.to_kind(Kind::Double), u); // [B]
        let rows = p_x0
            .gather(1, &pos.view([b, 1, 1]).expand([b, 1, v], false), false)
            .squeeze_dim(1); // [B, V]
        let rows = rows.index_fill(1, &Tensor::from(m).to_device(device), 0.0);
        let token = categorical::sample(&rows, u); // [B]
        let next = x.scatter(1, &pos.view([b, 1]), &token.view([b, 1]));
        x = pin(next.where_self(&active.unsqueeze(1), &x));
        on_step(&x);
    }
    ensure!(
        x.eq(m).any().int64_value(&[]) == 0,
        "first-hitting sampling left masked positions (the denoiser gave no mass outside the mask token)"
    );
    Ok(x)
}
