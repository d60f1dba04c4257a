//! Learning-rate schedules of the reference's `configs/lr_scheduler/*.yaml`, as a pure function of
//! the 0-based optimizer step.
//!
//! The reference hands these to Lightning with `interval: step`, so the rate used by optimizer step
//! `s` is the one after `s` calls of `scheduler.step()`. Both formulas below keep the exact order of
//! double operations of the Python code they mirror, so the values agree bit for bit with the
//! fixture `lrs`, not just within a tolerance.

/// A learning-rate schedule; `lr_at(s)` is the rate of optimizer step `s` (0-based).
#[derive(Debug, Clone, PartialEq)]
pub enum LrSchedule {
    /// `transformers.get_constant_schedule_with_warmup` (`constant_warmup.yaml`).
    ConstantWarmup { base_lr: f64, num_warmup_steps: u64 },
    /// The reference's `utils.CosineDecayWarmupLRScheduler`, i.e. timm's `CosineLRScheduler`
    /// stepped per optimizer step (`cosine_decay_warmup.yaml`).
    CosineDecayWarmup(CosineDecayWarmup),
}

/// timm `CosineLRScheduler` parameters. Times are doubles because the reference's YAML computes
/// them with `${eval:...}` and passes floats (`t_initial: 900000.0`).
#[derive(Debug, Clone, PartialEq)]
pub struct CosineDecayWarmup {
    pub base_lr: f64,
    /// Length of one cosine cycle.
    pub t_initial: f64,
    pub lr_min: f64,
    pub warmup_t: f64,
    pub warmup_lr_init: f64,
    /// When true the cosine starts after the warm-up instead of overlapping it.
    pub warmup_prefix: bool,
    /// timm's cycle settings; the reference leaves them at their defaults (1, 1, 1, 1), which
    /// `CosineDecayWarmup::new` uses.
    pub cycle_mul: f64,
    pub cycle_decay: f64,
    pub cycle_limit: u64,
    pub k_decay: f64,
}

impl CosineDecayWarmup {
    /// The reference's settings with timm's defaults for everything it does not set.
    pub fn new(
        base_lr: f64,
        t_initial: f64,
        lr_min: f64,
        warmup_t: f64,
        warmup_lr_init: f64,
        warmup_prefix: bool,
    ) -> Self {
        Self {
            base_lr,
            t_initial,
            lr_min,
            warmup_t,
            warmup_lr_init,
            warmup_prefix,
            cycle_mul: 1.0,
            cycle_decay: 1.0,
            cycle_limit: 1,
            k_decay: 1.0,
        }
    }

    fn lr_at(&self, step: u64) -> f64 {
        let t = step as f64;
        if t < self.warmup_t {
            // timm precomputes the per-step increment, then adds `t * increment`.
            let increment = (self.base_lr - self.warmup_lr_init) / self.warmup_t;
            return self.warmup_lr_init + t * increment;
        }
        let t = if self.warmup_prefix {
            t - self.warmup_t
        } else {
            t
        };
        let (i, t_i, t_curr) = if self.cycle_mul != 1.0 {
            let i = (1.0 - t / self.t_initial * (1.0 - self.cycle_mul))
                .log(self.cycle_mul)
                .floor();
            let t_i = self.cycle_mul.powf(i) * self.t_initial;
            let t_curr =
                t - (1.0 - self.cycle_mul.powf(i)) / (1.0 - self.cycle_mul) * self.t_initial;
            (i, t_i, t_curr)
        } else {
            let i = py_floordiv(t, self.t_initial);
            (i, self.t_initial, t - self.t_initial * i)
        };
        if i >= self.cycle_limit as f64 {
            return self.lr_min;
        }
        let lr_max = self.base_lr * self.cycle_decay.powf(i);
        let k = self.k_decay;
        let (num, den) = if k == 1.0 {
            (t_curr, t_i)
        } else {
            (t_curr.powf(k), t_i.powf(k))
        };
        self.lr_min
            + 0.5 * (lr_max - self.lr_min) * (1.0 + (std::f64::consts::PI * num / den).cos())
    }
}

/// Python's float `//`, which is not always `floor(a / b)`: it divides `a - fmod(a, b)`.
fn py_floordiv(a: f64, b: f64) -> f64 {
    let m = a % b;
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    if div == 0.0 {
        return 0.0f64.copysign(a / b);
    }
    let f = div.floor();
    if div - f > 0.5 { f + 1.0 } else { f }
}

impl LrSchedule {
    /// Learning rate of optimizer step `step` (0-based: after `step` scheduler steps).
    pub fn lr_at(&self, step: u64) -> f64 {
        match self {
            LrSchedule::ConstantWarmup {
                base_lr,
                num_warmup_steps,
            } => {
                if step < *num_warmup_steps {
                    // transformers divides by max(1, n) and LambdaLR multiplies the base by it.
                    base_lr * (step as f64 / (*num_warmup_steps).max(1) as f64)
                } else {
                    *base_lr
                }
            }
            LrSchedule::CosineDecayWarmup(c) => c.lr_at(step),
        }
    }

    /// The base (peak) learning rate the optimizer was configured with.
    pub fn base_lr(&self) -> f64 {
        match self {
            LrSchedule::ConstantWarmup { base_lr, .. } => *base_lr,
            LrSchedule::CosineDecayWarmup(c) => c.base_lr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_warmup_ramps_then_holds() {
        let s = LrSchedule::ConstantWarmup {
            base_lr: 1.0,
            num_warmup_steps: 4,
        };
        let got: Vec<f64> = (0..6).map(|i| s.lr_at(i)).collect();
        assert_eq!(got, vec![0.0, 0.25, 0.5, 0.75, 1.0, 1.0]);
        let no_warmup = LrSchedule::ConstantWarmup {
            base_lr: 2.0,
            num_warmup_steps: 0,
        };
        assert_eq!(no_warmup.lr_at(0), 2.0);
    }

    #[test]
    fn cosine_warmup_endpoints() {
        let s =
            LrSchedule::CosineDecayWarmup(CosineDecayWarmup::new(1.0, 10.0, 0.1, 5.0, 0.0, true));
        assert_eq!(s.lr_at(0), 0.0);
        assert!((s.lr_at(1) - 0.2).abs() < 1e-15);
        assert_eq!(s.lr_at(5), 1.0);
        // Halfway through the cosine the rate is the mean of the two ends.
        assert!((s.lr_at(10) - 0.55).abs() < 1e-15);
        assert_eq!(s.lr_at(15), 0.1);
        assert_eq!(s.lr_at(1_000), 0.1);
    }
}
