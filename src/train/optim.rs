//! AdamW with `torch.optim.AdamW` semantics (`amsgrad=False`, `maximize=False`), and
//! `torch.nn.utils.clip_grad_norm_`.
//!
//! tch's `nn::Optimizer` keeps its moments inside libtorch where they can be neither saved nor
//! restored, so a resumed run would restart Adam from zero moments. This one keeps every piece of
//! state as a named tensor, so a checkpoint restores it bit for bit.
//!
//! The update runs on whole lists of tensors (`torch._foreach_*`, see [`super::foreach`]): about
//! ten dispatched ops per step whatever the number of parameters, torch's own multi-tensor path
//! (its CUDA default). Its float roundings are torch's single-tensor path's: the list ops fall back
//! to the per-tensor ops on CPU, and `addcmul`/`addcdiv` multiply their `value=` scalar into the
//! first factor first, as the single-tensor path's kernels do.

use super::foreach;
use anyhow::{Context, Result, anyhow, bail};
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

    /// One AdamW update of every parameter that has a gradient (torch's `_multi_tensor_adamw`).
    pub fn step(&mut self) -> Result<()> {
        let AdamWConfig {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        let (live, grads): (Vec<usize>, Vec<Tensor>) = self
            .params
            .iter()
            .enumerate()
            .filter_map(|(i, (_, p))| Some(p.grad()).filter(Tensor::defined).map(|g| (i, g)))
            .unzip();
        if live.is_empty() {
            return Ok(());
        }
        let pick =
            |v: &[Tensor]| -> Vec<Tensor> { live.iter().map(|&i| v[i].shallow_clone()).collect() };
        let params: Vec<Tensor> = live
            .iter()
            .map(|&i| self.params[i].1.shallow_clone())
            .collect();
        let (exp_avg, exp_avg_sq) = (pick(&self.exp_avg), pick(&self.exp_avg_sq));
        // Python doubles, in torch's order (`** 0.5`, not sqrt, for the same rounding).
        let (mut neg_step_size, mut bias_correction2_sqrt) = (Vec::new(), Vec::new());
        for &i in &live {
            self.steps[i] += 1;
            let step = self.steps[i] as f64;
            neg_step_size.push(-(lr / (1.0 - beta1.powf(step))));
            bias_correction2_sqrt.push((1.0 - beta2.powf(step)).powf(0.5));
        }
        tch::no_grad(|| -> Result<()> {
            if weight_decay != 0.0 {
                foreach::mul_scalar_(&params, 1.0 - lr * weight_decay)?;
            }
            foreach::lerp_(&exp_avg, &grads, 1.0 - beta1)?;
            foreach::mul_scalar_(&exp_avg_sq, beta2)?;
            foreach::addcmul_(&exp_avg_sq, &grads, &grads, 1.0 - beta2)?;
            let denom = foreach::sqrt(&exp_avg_sq)?;
            foreach::div_scalars_(&denom, &bias_correction2_sqrt)?;
            foreach::add_scalar_(&denom, eps)?;
            foreach::addcdiv_scalars_(&params, &exp_avg, &denom, &neg_step_size)
        })
        .context("AdamW step")
    }

    /// Drops the gradients, as torch's default `zero_grad(set_to_none=True)` does: no kernel, and
    /// the next backward writes each gradient instead of adding it to zeros. A parameter that
    /// then receives no gradient is not stepped, as in torch.
    pub fn zero_grad(&mut self) -> Result<()> {
        let params: Vec<Tensor> = self.params.iter().map(|(_, p)| p.shallow_clone()).collect();
        foreach::grads_to_none(&params)
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
/// one vector, before clipping, as a 0-d tensor on the gradients' device (`None` without
/// gradients). Nothing waits for the device: the scaling happens whatever the norm (as torch does,
/// to avoid a branch that needs a sync), and the caller reads the norm when it logs.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> Result<Option<Tensor>> {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(Tensor::defined)
            .collect();
        let Some(first) = grads.first() else {
            return Ok(None);
        };
        let device = first.device();
        if grads.iter().any(|g| g.device() != device) {
            bail!("gradient clipping: gradients on more than one device");
        }
        let norms = foreach::norm(&grads)?;
        let total = Tensor::stack(&norms, 0).norm();
        // Python's `max_norm / tensor` is `tensor.reciprocal() * max_norm`.
        let coef = ((&total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
        foreach::mul_tensor_(&grads, &coef)?;
        Ok(Some(total))
    })
}
