//! Noise schedules sigma(t) and their rates dsigma/dt (reference: `noise_schedule.py`). All
//! arithmetic is float32 tensor arithmetic with double scalars, as in the reference, so the numbers
//! match to the last bits that matter.

use tch::{Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Noise {
    /// sigma = -log1p(-(1-eps) t). Ignores the YAML's sigma_min/sigma_max, like the reference.
    LogLinear { eps: f64 },
    /// sigma = sigma_min^(1-t) sigma_max^t.
    Geometric { sigma_min: f64, sigma_max: f64 },
    /// sigma = -log(eps + (1-eps) cos(pi t / 2)).
    Cosine { eps: f64 },
    /// sigma = -log(eps + (1-eps) cos^2(pi t / 2)).
    CosineSqr { eps: f64 },
    /// sigma = sigma_min + t (sigma_max - sigma_min).
    Linear { sigma_min: f64, sigma_max: f64 },
}

const HALF_PI: f64 = std::f64::consts::FRAC_PI_2;

impl Noise {
    /// sigma(t), same shape as `t`.
    pub fn total(&self, t: &Tensor) -> Tensor {
        match *self {
            Noise::LogLinear { eps } => -(-(t * (1.0 - eps))).log1p(),
            Noise::Geometric {
                sigma_min,
                sigma_max,
            } => {
                let (lo, hi) = geometric_bounds(sigma_min, sigma_max, t);
                lo.pow(&(1.0 - t)) * hi.pow(t)
            }
            Noise::Cosine { eps } => {
                let cos = (t * HALF_PI).cos();
                -((cos * (1.0 - eps)) + eps).log()
            }
            Noise::CosineSqr { eps } => {
                let cos = (t * HALF_PI).cos().square();
                -((cos * (1.0 - eps)) + eps).log()
            }
            Noise::Linear {
                sigma_min,
                sigma_max,
            } => {
                let (lo, hi) = linear_bounds(sigma_min, sigma_max, t);
                &lo + t * (&hi - &lo)
            }
        }
    }

    /// dsigma/dt, same shape as `t` (the reference's 0-d rate of `Linear` is broadcast here).
    pub fn rate(&self, t: &Tensor) -> Tensor {
        match *self {
            Noise::LogLinear { eps } => t.full_like(1.0 - eps) / (1.0 - t * (1.0 - eps)),
            Noise::Geometric {
                sigma_min,
                sigma_max,
            } => {
                let (lo, hi) = geometric_bounds(sigma_min, sigma_max, t);
                lo.pow(&(1.0 - t)) * hi.pow(t) * (hi.log() - lo.log())
            }
            Noise::Cosine { eps } => {
                let cos = (t * HALF_PI).cos() * (1.0 - eps);
                let sin = (t * HALF_PI).sin() * (1.0 - eps);
                sin * HALF_PI / (cos + eps)
            }
            Noise::CosineSqr { eps } => {
                let cos = (t * HALF_PI).cos().square() * (1.0 - eps);
                let sin = (t * std::f64::consts::PI).sin() * (1.0 - eps);
                sin * HALF_PI / (cos + eps)
            }
            Noise::Linear {
                sigma_min,
                sigma_max,
            } => {
                let (lo, hi) = linear_bounds(sigma_min, sigma_max, t);
                (hi - lo).expand_as(t).contiguous()
            }
        }
    }

    /// The noise object's `sigma_min` as the reference holds it (a float32 value).
    pub fn sigma_min(&self) -> Tensor {
        match *self {
            Noise::LogLinear { eps } => self.total(&Tensor::from(0.0f32)) + eps,
            Noise::Geometric { sigma_min, .. } | Noise::Linear { sigma_min, .. } => {
                Tensor::from(sigma_min as f32)
            }
            // Cosine schedules carry no bounds in the reference; sigma(0) = 0 there.
            Noise::Cosine { .. } | Noise::CosineSqr { .. } => self.total(&Tensor::from(0.0f32)),
        }
    }

    pub fn sigma_max(&self) -> Tensor {
        match *self {
            Noise::Geometric { sigma_max, .. } | Noise::Linear { sigma_max, .. } => {
                Tensor::from(sigma_max as f32)
            }
            _ => self.total(&Tensor::from(1.0f32)),
        }
    }

    /// The reference's `importance_sampling_transformation` (log-linear and linear only).
    pub fn importance_sampling_transformation(&self, t: &Tensor) -> anyhow::Result<Tensor> {
        let dev = t.device();
        let f_t = log_move_chance(&self.sigma_max().to_device(dev));
        let f_0 = log_move_chance(&self.sigma_min().to_device(dev));
        // The sigma whose log move chance is the interpolation: sigma = -log(1 - e^f).
        let sigma_t = -(-(t * &f_t + (1f64 - t) * &f_0).exp()).log1p();
        match *self {
            Noise::LogLinear { eps } => Ok(-(-&sigma_t).expm1() / (1.0 - eps)),
            Noise::Linear { .. } => {
                let lo = self.sigma_min().to_device(dev);
                let hi = self.sigma_max().to_device(dev);
                Ok((sigma_t - &lo) / (hi - lo))
            }
            other => anyhow::bail!(
                "training.importance_sampling needs noise=loglinear or noise=linear, not {other:?}"
            ),
        }
    }
}

/// `1 - e^{-sigma}`: the probability that a token is masked under total noise `sigma` (MDLM's
/// `1 - alpha_t`).
pub fn move_chance(sigma: &Tensor) -> Tensor {
    1.0 - (-sigma).exp()
}

/// `log(1 - e^{-sigma})`, computed as the reference does, `log1p(-e^{-sigma})`: accurate where
/// `e^{-sigma}` is small, and bit-identical to the reference's numbers.
pub fn log_move_chance(sigma: &Tensor) -> Tensor {
    (-(-sigma).exp()).log1p()
}

fn geometric_bounds(lo: f64, hi: f64, t: &Tensor) -> (Tensor, Tensor) {
    // The reference builds `1.0 * torch.tensor([sigma_min, sigma_max])`: float32 values.
    let opts = (Kind::Float, t.device());
    (Tensor::full([], lo, opts), Tensor::full([], hi, opts))
}

fn linear_bounds(lo: f64, hi: f64, t: &Tensor) -> (Tensor, Tensor) {
    geometric_bounds(lo, hi, t)
}
