//! AdamW with `torch.optim.AdamW` semantics (`amsgrad=False`, `maximize=False`), and
//! `torch.nn.utils.clip_grad_norm_`.
//!
//! tch's `nn::Optimizer` keeps its moments inside libtorch where they can be neither saved nor
//! restored, so a resumed run would restart Adam from zero moments. This one keeps every piece of
//! state as a named tensor, so a checkpoint restores it bit for bit.
//!
//! There is no fused/foreach AdamW kernel exposed by tch 0.24, so each parameter is updated with
//! plain in-place ops. The sequence of float roundings follows torch's single-tensor (CPU) path:
//! the `value=` scalars of `addcmul_`/`addcdiv_`, which tch does not expose, are folded into the
//! first factor, which is the multiplication the CPU kernel performs first anyway. torch's CUDA
//! default (the foreach path) may round differently in the last bit; that is also true of torch
//! against itself across devices.

use anyhow::{Result, anyhow, bail};
use std::collections::{HashMap, HashSet};
use tch::{Kind, Tensor};

/// Key of the per-parameter step counts in `state_tensors`.
const STEP_KEY: &str = "optim.step";

/// Hyper-parameters of AdamW; `Default` is the reference's `optim` group (`configs/config.yaml`:
/// lr 3e-4, no weight decay), not torch's AdamW defaults (lr 1e-3, weight decay 1e-2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

pub struct AdamW {
    cfg: AdamWConfig,
    /// Shallow clones: they share storage (and `.grad`) with the caller's parameters.
    params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// torch counts steps per parameter (a parameter without a gradient is not stepped), and the
    /// bias corrections use that count. Kept on the host so the step needs no device sync.
    steps: Vec<i64>,
}

impl AdamW {
    /// Moments start at zero, on each parameter's device and in its dtype (torch creates them
    /// lazily on the first step; zeros make no difference to the result).
    pub fn new(params: &[(String, Tensor)], cfg: AdamWConfig) -> Self {
        let zeros = || -> Vec<Tensor> {
            params
                .iter()
                .map(|(_, p)| p.detach().zeros_like())
                .collect()
        };
        Self {
            cfg,
            params: params
                .iter()
                .map(|(n, p)| (n.clone(), p.shallow_clone()))
                .collect(),
            exp_avg: zeros(),
            exp_avg_sq: zeros(),
            steps: vec![0; params.len()],
        }
    }

    pub fn config(&self) -> AdamWConfig {
        self.cfg
    }

    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }

    /// The scheduler sets this before every step.
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// Number of steps taken by the parameter stepped most often (all of them, in a run where
    /// every parameter receives a gradient).
    pub fn step_count(&self) -> i64 {
        self.steps.iter().copied().max().unwrap_or(0)
    }

    /// One AdamW update of every parameter that has a gradient.
    pub fn step(&mut self) {
        let AdamWConfig {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        tch::no_grad(|| {
            for i in 0..self.params.len() {
                let p = &mut self.params[i].1;
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                self.steps[i] += 1;
                let step = self.steps[i] as f64;
                if weight_decay != 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
                }
                let _ = self.exp_avg[i].lerp_(&grad, 1.0 - beta1);
                let m2 = &mut self.exp_avg_sq[i];
                let _ = m2.g_mul_scalar_(beta2);
                let _ = m2.addcmul_(&(&grad * (1.0 - beta2)), &grad);

                // Python doubles, in torch's order (`** 0.5`, not sqrt, for the same rounding).
                let bias_correction1 = 1.0 - beta1.powf(step);
                let bias_correction2 = 1.0 - beta2.powf(step);
                let step_size = lr / bias_correction1;
                let bias_correction2_sqrt = bias_correction2.powf(0.5);

                let mut denom = m2.sqrt();
                let _ = denom.g_div_scalar_(bias_correction2_sqrt);
                let _ = denom.g_add_scalar_(eps);
                let _ = p.addcdiv_(&(&self.exp_avg[i] * (-step_size)), &denom);
            }
        });
    }

    /// Zeroes the gradients in place. torch's default (`set_to_none=True`) drops them instead,
    /// which tch cannot do; the two differ only for a parameter that later receives no gradient,
    /// which would then still be stepped here with a zero gradient.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// `optim.exp_avg.<param>`, `optim.exp_avg_sq.<param>` (sharing storage with the state) and
    /// `optim.step`, an int64 vector of per-parameter step counts in parameter order.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len() + 1);
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((
                format!("optim.exp_avg.{name}"),
                self.exp_avg[i].shallow_clone(),
            ));
        }
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((
                format!("optim.exp_avg_sq.{name}"),
                self.exp_avg_sq[i].shallow_clone(),
            ));
        }
        out.push((STEP_KEY.to_string(), Tensor::from_slice(&self.steps)));
        out
    }

    /// Restores what `state_tensors` produced. Keys outside `optim.` are ignored (the whole
    /// checkpoint can be passed); a missing or mis-shaped `optim.` key, or one that names no
    /// parameter of this optimizer, is an error, and nothing is modified then. Hyper-parameters are
    /// not part of the state: they come from the config and the schedule.
    pub fn load_state(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let by_name: HashMap<&str, &Tensor> =
            tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let mut expected = HashSet::new();
        let mut sources: Vec<(&Tensor, &Tensor)> = Vec::with_capacity(self.params.len());
        for (name, p) in &self.params {
            let a = format!("optim.exp_avg.{name}");
            let b = format!("optim.exp_avg_sq.{name}");
            let mut get = |key: String| -> Result<&Tensor> {
                let t = *by_name
                    .get(key.as_str())
                    .ok_or_else(|| anyhow!("optimizer state: missing key {key}"))?;
                if t.size() != p.size() {
                    bail!(
                        "optimizer state: {key} has shape {:?} in the checkpoint, the parameter has {:?}",
                        t.size(),
                        p.size()
                    );
                }
                expected.insert(key);
                Ok(t)
            };
            let ta = get(a)?;
            let tb = get(b)?;
            sources.push((ta, tb));
        }
        let steps_t = by_name
            .get(STEP_KEY)
            .ok_or_else(|| anyhow!("optimizer state: missing key {STEP_KEY}"))?;
        if steps_t.size() != [self.params.len() as i64] {
            bail!(
                "optimizer state: {STEP_KEY} has shape {:?}, expected [{}] (one count per parameter)",
                steps_t.size(),
                self.params.len()
            );
        }
        expected.insert(STEP_KEY.to_string());
        if let Some((extra, _)) = tensors
            .iter()
            .find(|(k, _)| k.starts_with("optim.") && !expected.contains(k))
        {
            bail!("optimizer state: unexpected key {extra} (not a parameter of this optimizer)");
        }
        let steps: Vec<i64> = Vec::try_from(&steps_t.to_kind(Kind::Int64))?;
        tch::no_grad(|| {
            for (i, (a, b)) in sources.into_iter().enumerate() {
                self.exp_avg[i].copy_(a);
                self.exp_avg_sq[i].copy_(b);
            }
        });
        self.steps = steps;
        Ok(())
    }
}

/// `torch.nn.utils.clip_grad_norm_` with the L2 norm: scales every gradient by
/// `min(1, max_norm / (total + 1e-6))` and returns `total`, the norm of all gradients taken as
/// one vector, before clipping. The scaling happens on the device whatever the norm (as torch
/// does, to avoid a branch that needs a sync); the returned value is the one host sync.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(Tensor::defined)
            .collect();
        let Some(first) = grads.first() else {
            return 0.0;
        };
        let device = first.device();
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm().to_device(device)).collect();
        let total = Tensor::stack(&norms, 0).norm();
        // Python's `max_norm / tensor` is `tensor.reciprocal() * max_norm`.
        let coef = ((&total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
        for g in &grads {
            let mut g = g.shallow_clone();
            let _ = g.g_mul_(&coef.to_device(g.device()));
        }
        f64::try_from(&total).expect("gradient norm is a scalar")
    })
}
