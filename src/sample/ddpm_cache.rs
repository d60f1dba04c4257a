//! DDPM update that reuses the denoiser's output while no token changes (reference:
//! `Diffusion._ddpm_caching_update`). With time conditioning off, p(x0 | xt) depends only on xt,
//! so an unchanged xt needs no new forward pass — most steps of a long schedule change nothing.
//! Log-linear noise only: it takes the move chance to be `t` itself, as the reference does.

use super::categorical::Uniforms;
use super::ddpm::{DrawMode, reverse_draw};
use super::{Denoiser, StepAt};
use crate::diffusion::Diffusion;
use tch::Tensor;

/// One step from `t` (`[B, 1]` or `[B]`) to `t - dt`; `cache` is `p_x0` from the previous step
/// when still valid. Returns the new `p_x0` and `x`.
pub fn step(
    at: StepAt,
    cache: Option<Tensor>,
    mode: DrawMode,
    u: &mut dyn Uniforms,
) -> (Tensor, Tensor) {
    let StepAt {
        den,
        diff,
        x,
        t,
        dt,
    } = at;
    let t = t.reshape([-1]);
    let p_x0 = cache.unwrap_or_else(|| den.log_probs(x, &diff.noise.total(&t)).exp());
    let mc_t = t.view([-1, 1, 1]);
    let mc_s = (&t - dt).view([-1, 1, 1]);
    let x_next = reverse_draw(&p_x0, &mc_t, &mc_s, x, diff.mask_index, mode, u);
    (p_x0, x_next)
}

/// A run of cached steps: what is carried from one step to the next.
pub struct Cache<'a> {
    diff: &'a Diffusion,
    mode: DrawMode,
    p_x0: Option<Tensor>,
    /// Per row only: which rows changed in the last step, `[B]` bool.
    stale: Option<Tensor>,
    per_row: bool,
}

impl<'a> Cache<'a> {
    /// Reuse per batch, as the reference does (recompute all rows as soon as any changed), or,
    /// with `per_row`, recompute only the rows that changed. A time-conditioned network never
    /// reuses, so it is always per batch.
    pub fn new(diff: &'a Diffusion, mode: DrawMode, per_row: bool) -> Cache<'a> {
        Cache {
            diff,
            mode,
            p_x0: None,
            stale: None,
            per_row: per_row && !diff.time_conditioning,
        }
    }

    /// Whether the next step will reuse (some of) the last denoiser output.
    pub fn is_kept(&self) -> bool {
        self.p_x0.is_some()
    }

    /// One [`step`]; `pin` is applied to the new x before deciding what stays reusable.
    pub fn step(
        &mut self,
        at: StepAt,
        u: &mut dyn Uniforms,
        pin: &dyn Fn(Tensor) -> Tensor,
    ) -> Tensor {
        let (diff, x) = (at.diff, at.x);
        let cached = if self.per_row {
            Some(self.refresh_rows(at.den, x, at.t))
        } else {
            self.p_x0.take()
        };
        let (p_x0, x_next) = step(at, cached, self.mode, u);
        let x_next = pin(x_next);
        if self.per_row {
            self.stale = Some(x_next.ne_tensor(x).any_dim(1, false));
            self.p_x0 = Some(p_x0);
        } else if x_next.equal(x) && !diff.time_conditioning {
            // Reusable only while xt is unchanged and the network ignores the time.
            self.p_x0 = Some(p_x0);
        }
        x_next
    }

    /// p(x0 | xt) with a fresh pass for the rows whose x changed since the cached output.
    fn refresh_rows(&mut self, den: &dyn Denoiser, x: &Tensor, t: &Tensor) -> Tensor {
        let sigma = self.diff.noise.total(t).reshape([-1]); // [B]
        match (self.p_x0.take(), self.stale.take()) {
            (Some(p), Some(rows)) => {
                let idx = rows.nonzero().squeeze_dim(1);
                if idx.size()[0] == 0 {
                    return p;
                }
                let fresh = den
                    .log_probs(&x.index_select(0, &idx), &sigma.index_select(0, &idx))
                    .exp();
                p.index_copy(0, &idx, &fresh.to_kind(p.kind()))
            }
            _ => den.log_probs(x, &sigma).exp(),
        }
    }
}
