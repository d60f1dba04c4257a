//! The NELBO as a weighted masked-LM loss (MDLM eq. 10; reference: `Diffusion._loss`,
//! `_forward_pass_diffusion`, `_d3pm_loss`, `_score_entropy`).
//!
//! Randomness enters only through [`Draws`], so a test can replay the reference's exact draws and
//! training can use the device generator.

use super::noise::{log_move_chance, move_chance};
use super::{Diffusion, Parameterization};
use crate::backbone::Backbone;
use anyhow::Result;
use tch::{Device, Kind, Tensor};

/// The two uniform draws of one loss evaluation, in the reference's call order.
pub struct Draws {
    /// `[B]`: the time draw of `_sample_t`.
    pub u_t: Tensor,
    /// `[B, L]`: the masking draw of `q_xt`.
    pub u_mask: Tensor,
    /// `u_t` has already been spread over its batch by antithetic sampling (rows cut from a
    /// larger batch), so [`Diffusion::sample_t`] must not spread it again over the rows it sees.
    pub stratified: bool,
}

impl Draws {
    /// The reference's draws for a batch of `batch` rows held whole by one process.
    pub fn sample(batch: i64, len: i64, device: Device) -> Draws {
        let u_t = Tensor::rand([batch], (Kind::Float, device));
        let u_mask = Tensor::rand([batch, len], (Kind::Float, device));
        Draws {
            u_t,
            u_mask,
            stratified: false,
        }
    }

    /// Rows `rows` of the draws one process makes for a whole batch of `global` rows: the same
    /// generator calls, with antithetic sampling applied over all `global` rows before the cut,
    /// so each row's time and mask are exactly what the whole batch gives that row — however
    /// the batch is split between processes.
    pub fn rows_of(
        global: i64,
        rows: &Tensor,
        len: i64,
        device: Device,
        antithetic: bool,
    ) -> Draws {
        Draws::sample(global, len, device).cut(rows, antithetic)
    }

    /// Rows `rows` of these draws for a whole batch (antithetic sampling applied over all of it
    /// first).
    pub fn cut(self, rows: &Tensor, antithetic: bool) -> Draws {
        let u_t = if antithetic && !self.stratified {
            stratify(&self.u_t)
        } else {
            self.u_t
        };
        Draws {
            u_t: u_t.index_select(0, rows),
            u_mask: self.u_mask.index_select(0, rows),
            stratified: self.stratified || antithetic,
        }
    }

    /// Rank `rank`'s rows of a data-parallel training batch of `world * batch` rows: rows
    /// `rank, rank + world, ...`, the rows its loader shard holds.
    pub fn sample_rows(
        batch: i64,
        len: i64,
        device: Device,
        rank: i64,
        world: i64,
        antithetic: bool,
    ) -> Draws {
        if world <= 1 {
            return Draws::sample(batch, len, device);
        }
        let rows = Tensor::arange_start_step(rank, world * batch, world, (Kind::Int64, device));
        Draws::rows_of(world * batch, &rows, len, device, antithetic)
    }
}

/// Antithetic sampling's spread of `n` uniforms over `[0, 1)`: row `i` lands in `[i/n, (i+1)/n)`.
fn stratify(u: &Tensor) -> Tensor {
    let n = u.size()[0];
    let offset = Tensor::arange(n, (Kind::Float, u.device())) / n as f64;
    (u / n as f64 + offset).remainder(1.0)
}

/// Everything one loss evaluation produces; tests compare each part with the reference.
pub struct LossParts {
    /// Token-mean NELBO (what is minimised).
    pub loss: Tensor,
    /// `[B, L]` per-token loss times the attention mask.
    pub nlls: Tensor,
    /// `[B, L]` before the attention mask.
    pub loss_per_token: Tensor,
    pub token_mask: Tensor,
    pub t: Tensor,
    pub sigma: Option<Tensor>,
    pub dsigma: Option<Tensor>,
    pub move_chance: Tensor,
    pub conditioning: Tensor,
    pub xt: Tensor,
    pub model_output: Tensor,
}

impl Diffusion {
    /// `_sample_t` given the uniforms `u [B]` (already spread over a larger batch when
    /// `stratified`).
    pub fn sample_t(&self, u: &Tensor, stratified: bool) -> Result<Tensor> {
        let e = if self.antithetic_sampling && !stratified {
            stratify(u)
        } else {
            u.shallow_clone()
        };
        let t = e * (1.0 - self.sampling_eps) + self.sampling_eps;
        if self.importance_sampling {
            self.noise.importance_sampling_transformation(&t)
        } else {
            Ok(t)
        }
    }

    /// `q_xt`: each position becomes the mask token where `u_mask < move_chance`.
    pub fn q_xt(&self, x0: &Tensor, move_chance: &Tensor, u_mask: &Tensor) -> Tensor {
        let moved = u_mask.lt_tensor(move_chance);
        x0.masked_fill(&moved, self.mask_index)
    }

    /// The training / validation loss of `x0 [B, L]` under `attention_mask [B, L]` (float).
    pub fn loss(
        &self,
        backbone: &dyn Backbone,
        x0: &Tensor,
        attention_mask: &Tensor,
        draws: &Draws,
        train: bool,
    ) -> Result<LossParts> {
        if self.parameterization == Parameterization::Ar {
            anyhow::bail!("parameterization=ar has no diffusion loss; use diffusion::ar::loss");
        }
        let mut t = self.sample_t(&draws.u_t, draws.stratified)?;
        if self.t_steps > 0 {
            let tt = self.t_steps as f64;
            // Truncation toward zero, then the step's right edge (reference: `(t*T).to(int)/T + 1/T`).
            t = (&t * tt).to_kind(Kind::Int).to_kind(Kind::Float) / tt + 1.0 / tt;
        }
        let (sigma, dsigma, conditioning, move_chance) = if self.change_of_variables {
            let dev = t.device();
            // The log move chance is linear in t between its values at sigma_min and sigma_max.
            let f_t = log_move_chance(&self.noise.sigma_max().to_device(dev));
            let f_0 = log_move_chance(&self.noise.sigma_min().to_device(dev));
            let mc = (&f_0 + &t * (&f_t - &f_0)).exp().unsqueeze(1);
            (None, None, t.unsqueeze(1), mc)
        } else {
            let sigma = self.noise.total(&t);
            let dsigma = self.noise.rate(&t);
            let mc = move_chance(&sigma.unsqueeze(1));
            let cond = sigma.unsqueeze(1);
            (Some(sigma), Some(dsigma), cond, mc)
        };
        let xt = self.q_xt(x0, &move_chance, &draws.u_mask);
        let model_output = self.forward(backbone, &xt, &conditioning, train);
        let masked = xt.eq(self.mask_index);

        let loss_per_token = match self.parameterization {
            Parameterization::Sedd => {
                let (sigma, dsigma) = (sigma.as_ref().unwrap(), dsigma.as_ref().unwrap());
                dsigma.unsqueeze(1)
                    * self.score_entropy(&model_output, &sigma.unsqueeze(1), &xt, x0)
            }
            _ if self.t_steps > 0 => {
                let diffusion_loss = self.d3pm_loss(&model_output, &masked, x0, &t);
                match self.parameterization {
                    Parameterization::D3pm => {
                        diffusion_loss + self.reconstruction_loss(backbone, x0, train)
                    }
                    _ => diffusion_loss,
                }
            }
            _ => {
                let log_p = model_output
                    .gather(2, &x0.unsqueeze(-1), false)
                    .squeeze_dim(-1);
                if self.change_of_variables || self.importance_sampling {
                    log_p * log_move_chance(&self.noise.sigma_min().to_device(t.device()))
                } else {
                    let (sigma, dsigma) = (sigma.as_ref().unwrap(), dsigma.as_ref().unwrap());
                    -log_p * (dsigma / sigma.expm1()).unsqueeze(1)
                }
            }
        };
        let nlls = &loss_per_token * attention_mask;
        let loss = nlls.sum(Kind::Float) / attention_mask.sum(Kind::Float);
        Ok(LossParts {
            loss,
            nlls,
            loss_per_token,
            token_mask: attention_mask.shallow_clone(),
            t,
            sigma,
            dsigma,
            move_chance,
            conditioning,
            xt,
            model_output,
        })
    }

    /// Discrete-time (T > 0) diffusion loss (`_d3pm_loss`): uses `alpha_t = 1 - t` whatever the
    /// schedule, with `t` clamped below 1 only here — as the reference does.
    fn d3pm_loss(&self, model_output: &Tensor, masked: &Tensor, x0: &Tensor, t: &Tensor) -> Tensor {
        let tt = self.t_steps as f64;
        let dt = 1.0 / tt;
        let t = t.unsqueeze(1).clamp(0.0, 1.0 - 1e-4); // [B, 1]
        let alpha_t = 1.0 - &t;
        let alpha_s = 1.0 - (&t - dt);
        let log_at_x0 = model_output
            .gather(2, &x0.unsqueeze(-1), false)
            .squeeze_dim(-1);
        let p_m = model_output.select(2, self.mask_index).exp();
        let coef1 = t.reciprocal() * dt; // dt / t
        let log_nr = (&alpha_t * &p_m / &t + 1.0).log();
        let log_dr2 = (&alpha_s * &p_m / (&t - dt) + 1.0).log();
        let l = &coef1 * (&log_nr - log_at_x0) + (1.0 - &coef1) * (&log_nr - log_dr2);
        l * masked.to_kind(Kind::Float) * tt
    }

    /// `-log p(x0 | x0, sigma(0))` at every position (D3PM's reconstruction term).
    fn reconstruction_loss(&self, backbone: &dyn Backbone, x0: &Tensor, train: bool) -> Tensor {
        let t0 = Tensor::zeros([x0.size()[0]], (Kind::Float, x0.device()));
        let sigma0 = self.noise.total(&t0);
        let out = self.forward(backbone, x0, &sigma0, train);
        -out.gather(2, &x0.unsqueeze(-1), false).squeeze_dim(-1)
    }

    /// SEDD's score entropy at masked positions, 0 elsewhere (`_score_entropy`).
    fn score_entropy(
        &self,
        log_score: &Tensor,
        sigma: &Tensor,
        xt: &Tensor,
        x0: &Tensor,
    ) -> Tensor {
        let masked = xt.eq(self.mask_index);
        let q_ratio = sigma.expm1().reciprocal().expand_as(xt); // 1 / expm1(sigma), [B, L]
        // Unmasked rows are dropped by the reference before exp(); zeroing them first keeps
        // their (possibly infinite) scores out of the sum and out of the gradient.
        let log_score = log_score.masked_fill(&masked.logical_not().unsqueeze(-1), 0.0);
        let s = log_score.exp();
        let m = self.mask_index;
        let v = s.size()[2];
        // Sum over every entry but the mask column.
        let pos_term = s
            .narrow(2, 0, m)
            .sum_dim_intlist(&[-1i64][..], false, Kind::Float)
            + s.narrow(2, m + 1, v - m - 1)
                .sum_dim_intlist(&[-1i64][..], false, Kind::Float);
        let neg_term = &q_ratio
            * log_score
                .gather(2, &x0.unsqueeze(-1), false)
                .squeeze_dim(-1);
        let cnst = &q_ratio * (q_ratio.log() - 1.0);
        let entropy = pos_term - neg_term + cnst;
        entropy.where_self(&masked, &entropy.zeros_like())
    }
}

/// text8-crop sub-sampling (`_maybe_sub_sample`): a window of `length` tokens starting at `start`,
/// whose first token is overwritten with BOS, as the reference does.
pub fn crop(
    x0: &Tensor,
    attention_mask: &Tensor,
    start: i64,
    length: i64,
    bos: i64,
) -> (Tensor, Tensor) {
    let x = x0.narrow(1, start, length).copy();
    let _ = x.narrow(1, 0, 1).fill_(bos);
    (x, attention_mask.narrow(1, start, length).copy())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::{Noise, Parameterization};

    /// Any split of a batch's rows between processes gives each row exactly the time and mask
    /// draws the whole batch gives it (antithetic sampling included), bit for bit.
    #[test]
    fn rows_of_a_batch_draw_what_the_whole_batch_draws() {
        let mut diff = Diffusion::reference_subs(3, 0);
        let draws = || Draws {
            u_t: Tensor::from_slice(&[0.9f32, 0.1, 0.5, 0.99, 0.0, 0.7, 0.3]),
            u_mask: Tensor::arange(35, (Kind::Float, Device::Cpu)).view([7, 5]) / 35.0,
            stratified: false,
        };
        for antithetic in [true, false] {
            diff.antithetic_sampling = antithetic;
            let whole = draws();
            let t = diff.sample_t(&whole.u_t, whole.stratified).unwrap();
            for rows in [vec![0i64, 3, 6], vec![1, 4], vec![2, 5], vec![6]] {
                let idx = Tensor::from_slice(&rows);
                let part = draws().cut(&idx, antithetic);
                let tp = diff.sample_t(&part.u_t, part.stratified).unwrap();
                assert!(tp.equal(&t.index_select(0, &idx)), "t of rows {rows:?}");
                assert!(part.u_mask.equal(&whole.u_mask.index_select(0, &idx)));
                // Spread over 7 rows: row i's time lies in [i/7, (i+1)/7) (before the eps map).
                if antithetic {
                    let e: Vec<f32> = Vec::try_from(&part.u_t).unwrap();
                    for (&i, e) in rows.iter().zip(e) {
                        assert!(e >= i as f32 / 7.0 && e < (i + 1) as f32 / 7.0, "{i}: {e}");
                    }
                }
            }
        }
    }

    /// Score entropy with the mask in the middle of the vocabulary (BERT's [MASK] is 103 of
    /// 30522), against the formula evaluated element by element in f64.
    #[test]
    fn score_entropy_with_mask_inside_the_vocabulary() {
        let (v, m) = (6i64, 2i64);
        let diff = Diffusion {
            parameterization: Parameterization::Sedd,
            noise: Noise::LogLinear { eps: 1e-3 },
            mask_index: m,
            vocab_size: v,
            time_conditioning: true,
            t_steps: 0,
            subs_masking: false,
            sampling_eps: 1e-3,
            antithetic_sampling: false,
            importance_sampling: false,
            change_of_variables: false,
        };
        tch::manual_seed(3);
        let log_score = Tensor::randn([2, 4, v], (Kind::Float, tch::Device::Cpu));
        let sigma = Tensor::from_slice(&[0.7f32, 1.9]).view([2, 1]);
        let xt = Tensor::from_slice(&[2i64, 0, 2, 5, 1, 2, 2, 3]).view([2, 4]);
        let x0 = Tensor::from_slice(&[4i64, 0, 1, 5, 1, 0, 5, 3]).view([2, 4]);
        let got = diff.score_entropy(&log_score, &sigma, &xt, &x0);
        for b in 0..2 {
            let s = sigma.get(b).get(0).double_value(&[]);
            let q = 1.0 / s.exp_m1();
            for l in 0..4 {
                let expected = if i64::try_from(xt.get(b).get(l)).unwrap() == m {
                    let row: Vec<f64> = (0..v)
                        .map(|k| log_score.get(b).get(l).get(k).double_value(&[]))
                        .collect();
                    let pos: f64 = (0..v)
                        .filter(|&k| k != m)
                        .map(|k| row[k as usize].exp())
                        .sum();
                    let target = i64::try_from(x0.get(b).get(l)).unwrap() as usize;
                    pos - q * row[target] + q * (q.ln() - 1.0)
                } else {
                    0.0
                };
                let g = got.get(b).get(l).double_value(&[]);
                assert!(
                    (g - expected).abs() < 1e-4 * (1.0 + expected.abs()),
                    "[{b},{l}]: {g} vs {expected}"
                );
            }
        }
    }
}
