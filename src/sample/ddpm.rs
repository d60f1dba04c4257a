//! Ancestral (DDPM-style) update of the reverse process (reference: `Diffusion._ddpm_update`).

use super::StepAt;
use super::categorical::{self, Uniforms};
use crate::diffusion::noise::move_chance;
use tch::Tensor;

/// How the categorical draw of a reverse step is made. Both give the same distribution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DrawMode {
    /// The reference's: Gumbel-max over the whole vocabulary at every position, one uniform
    /// tensor `[B, L, V]` per step (replayable against the reference's draws).
    #[default]
    Reference,
    /// First decide per masked position whether it unmasks (one uniform each), then draw a token
    /// only where it does. With many steps few positions unmask per step, so a cached step costs
    /// O(B L) instead of O(B L V).
    Sparse,
}

/// One step from time `t` (`[B, 1]`) to `t - dt`; only masked positions may change.
pub fn step(at: StepAt, mode: DrawMode, u: &mut dyn Uniforms) -> Tensor {
    let StepAt {
        den,
        diff,
        x,
        t,
        dt,
    } = at;
    let sigma_t = diff.noise.total(t).reshape([-1]);
    let sigma_s = diff.noise.total(&(t - dt)).reshape([-1]);
    let mc_t = move_chance(&sigma_t).view([-1, 1, 1]);
    let mc_s = move_chance(&sigma_s).view([-1, 1, 1]);
    let log_p_x0 = den.log_probs(x, &sigma_t);
    reverse_draw(&log_p_x0.exp(), &mc_t, &mc_s, x, diff.mask_index, mode, u)
}

/// Draws `x_s ~ q(x_s | x_t, x0 ~ p_x0)` (move chances `[B, 1, 1]`); unmasked positions keep
/// their token.
pub fn reverse_draw(
    p_x0: &Tensor,
    mc_t: &Tensor,
    mc_s: &Tensor,
    x: &Tensor,
    mask_index: i64,
    mode: DrawMode,
    u: &mut dyn Uniforms,
) -> Tensor {
    match mode {
        DrawMode::Reference => {
            let q_xs = reverse_probs(p_x0, mc_t, mc_s, mask_index);
            carry_unmasked(x, &categorical::sample(&q_xs, u), mask_index)
        }
        DrawMode::Sparse => sparse_draw(p_x0, mc_t, mc_s, x, mask_index, u),
    }
}

/// The reference's q_xs, normalised per position, is: stay masked with weight `mc_s`, become
/// `v != m` with weight `p_x0(v) (mc_t - mc_s)`. So a position unmasks with probability
/// `w / (w + mc_s)`, `w = (mc_t - mc_s) (1 - p_x0(m))`, and then takes `v` in proportion to
/// `p_x0(v)`, mask column excluded. Requires `mc_s >= 0` (true on the sampling grid).
fn sparse_draw(
    p_x0: &Tensor,
    mc_t: &Tensor,
    mc_s: &Tensor,
    x: &Tensor,
    m: i64,
    u: &mut dyn Uniforms,
) -> Tensor {
    let (b, l, _) = p_x0.size3().expect("[B, L, V]");
    let u1 = u.next(&[b, l], x.device());
    let kind = u1.kind();
    let p = p_x0.to_kind(kind);
    let keep = mc_s.to_kind(kind).view([-1, 1]); // [B, 1]
    let move_w = (mc_t - mc_s).to_kind(kind).view([-1, 1]) * (p.select(2, m).neg() + 1.0); // [B, L]
    let unmask = x
        .eq(m)
        .logical_and(&(u1 * (&keep + &move_w)).lt_tensor(&move_w));
    let idx = unmask.nonzero(); // [K, 2]
    if idx.size()[0] == 0 {
        return x.copy();
    }
    let (bi, li) = (idx.select(1, 0), idx.select(1, 1));
    let rows = p.index(&[Some(&bi), Some(&li)]); // [K, V]
    let rows = rows.index_fill(1, &Tensor::from(m).to_device(rows.device()), 0.0);
    let drawn = categorical::sample(&rows, u); // [K]
    x.index_put(&[Some(bi), Some(li)], &drawn, false)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::categorical::TorchUniforms;
    use tch::{Device, Kind};

    /// Both draw modes against the closed form of the normalised q_xs, on 60 000 positions.
    #[test]
    fn sparse_and_reference_draws_have_the_same_distribution() {
        // Mask index 2 in the middle; p_x0 puts some mass on the mask, as D3PM can.
        let p_row = [0.1f64, 0.2, 0.2, 0.3, 0.2];
        let (mc_t, mc_s, m) = (0.6f64, 0.3f64, 2i64);
        let q: Vec<f64> = p_row
            .iter()
            .enumerate()
            .map(|(v, p)| {
                if v as i64 == m {
                    mc_s
                } else {
                    p * (mc_t - mc_s)
                }
            })
            .collect();
        let z: f64 = q.iter().sum();
        let n = 60_000;
        let p_x0 = Tensor::from_slice(&p_row)
            .to_kind(Kind::Float)
            .view([1, 1, 5])
            .expand([1, n, 5], false)
            .contiguous();
        let x = Tensor::full([1, n], m, (Kind::Int64, Device::Cpu));
        // A few unmasked positions must be carried over untouched.
        let _ = x.narrow(1, 0, 10).fill_(4);
        let mct = Tensor::from(mc_t as f32).view([1, 1, 1]);
        let mcs = Tensor::from(mc_s as f32).view([1, 1, 1]);
        for mode in [DrawMode::Reference, DrawMode::Sparse] {
            tch::manual_seed(7);
            let mut u = TorchUniforms { kind: Kind::Double };
            let out = reverse_draw(&p_x0, &mct, &mcs, &x, m, mode, &mut u);
            assert!(
                out.narrow(1, 0, 10).eq(4).all().int64_value(&[]) == 1,
                "{mode:?} changed an unmasked token"
            );
            let body = out.narrow(1, 10, n - 10);
            for (v, qv) in q.iter().enumerate() {
                let freq = body
                    .eq(v as i64)
                    .to_kind(Kind::Double)
                    .mean(Kind::Double)
                    .double_value(&[]);
                // 5 standard deviations of a proportion over 60k draws is below 0.011.
                assert!(
                    (freq - qv / z).abs() < 0.011,
                    "{mode:?}: token {v} frequency {freq}, expected {}",
                    qv / z
                );
            }
        }
    }
}
