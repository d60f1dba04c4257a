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

use super::categorical;
use super::{Denoiser, Reverse, prior_move_chance, sigma_of_move_chance};
use anyhow::ensure;
use tch::{Kind, Tensor};

/// Fills every mask of `x [B, L]` (rows unmask in parallel, one position per call each).
pub fn run(den: &dyn Denoiser, walk: &mut Reverse, mut x: Tensor) -> anyhow::Result<Tensor> {
    let m = walk.diff.mask_index;
    let (b, _l) = x.size2()?;
    let device = x.device();
    let mut mc = prior_move_chance(walk.diff, b, device); // [B]
    let most = x.eq(m).sum_dim_intlist(-1, false, Kind::Int64).max();
    // Each pass unmasks one position of every unfinished row, so `most` passes finish them all
    // (one host read for the whole run); the bound also stops a degenerate denoiser from looping
    // forever.
    for _ in 0..most.int64_value(&[]) {
        let masked = x.eq(m); // [B, L]
        let n = masked.sum_dim_intlist(-1, false, Kind::Int64); // [B]
        // Rows already filled sit out; no host read: `most` passes are exactly enough.
        let active = n.gt(0);
        let u_time = walk.uniforms.next(&[b], device).to_kind(Kind::Double);
        let inv_n = n.to_kind(Kind::Double).clamp_min(1.0).reciprocal();
        mc = (&mc * u_time.pow(&inv_n)).where_self(&active, &mc);
        let sigma = sigma_of_move_chance(&mc); // [B]
        let p_x0 = den.log_probs(&x, &sigma).exp(); // [B, L, V]
        let v = p_x0.size()[2];
        // Gumbel-max over a 0/1 row: uniform among the masked positions.
        let pos = categorical::sample(&masked.to_kind(Kind::Double), walk.uniforms); // [B]
        let rows = p_x0
            .gather(1, &pos.view([b, 1, 1]).expand([b, 1, v], false), false)
            .squeeze_dim(1); // [B, V]
        let rows = rows.index_fill(1, &Tensor::from(m).to_device(device), 0.0);
        let token = categorical::sample(&rows, walk.uniforms); // [B]
        let next = x.scatter(1, &pos.view([b, 1]), &token.view([b, 1]));
        x = (walk.pin)(next.where_self(&active.unsqueeze(1), &x));
        (walk.on_step)(&x);
    }
    ensure!(
        x.eq(m).any().int64_value(&[]) == 0,
        "first-hitting sampling left masked positions (the denoiser gave no mass outside the mask token)"
    );
    Ok(x)
}
