//! A backbone together with the variable store that owns its parameters.

use crate::backbone::{Dit, DitConfig, Precision};
use tch::{Device, Tensor, nn};

pub struct Model {
    pub vs: nn::VarStore,
    pub dit: Dit,
}

impl Model {
    pub fn new(cfg: &DitConfig, precision: Precision, device: Device) -> Model {
        let vs = nn::VarStore::new(device);
        let dit = Dit::new(vs.root() / "backbone", cfg, precision);
        Model { vs, dit }
    }

    /// Trainable parameters by their reference names, sorted, so every consumer (optimizer, EMA,
    /// checkpoint) sees one fixed order.
    pub fn params(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Overwrites parameters with same-named tensors (e.g. EMA shadows): this is how the EMA
    /// model is built, rather than by swapping weights in and out of the trained one.
    pub fn assign(&self, named: &[(String, Tensor)]) -> anyhow::Result<()> {
        let vars = self.vs.variables();
        tch::no_grad(|| -> anyhow::Result<()> {
            for (name, t) in named {
                let v = vars
                    .get(name)
                    .ok_or_else(|| anyhow::anyhow!("model has no parameter '{name}'"))?;
                v.shallow_clone().copy_(t);
            }
            Ok(())
        })
    }

    pub fn num_params(&self) -> i64 {
        self.params().iter().map(|(_, t)| t.numel() as i64).sum()
    }
}
