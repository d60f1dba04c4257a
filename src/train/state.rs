//! What a checkpoint carries of a run in progress: the weights, the AdamW and EMA state, and the
//! loop's counters (with the loader's position, all a bit-identical resume needs).

use super::ema::Ema;
use super::optim::{AdamW, AdamWConfig};
use crate::checkpoint;
use crate::data::loader::{LoaderState, TrainBatches};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::Path;
use tch::Tensor;

pub(super) struct TrainState {
    pub params: Vec<(String, Tensor)>,
    pub opt: AdamW,
    pub ema: Ema,
    /// Optimizer steps taken (Lightning's `global_step`).
    pub step: u64,
    /// Training micro-batches consumed: what `val_check_interval` counts.
    pub batches: u64,
    /// The best validation NLL so far (the reference's `checkpoint_monitor`).
    pub best: Option<f64>,
}

impl TrainState {
    pub fn new(params: Vec<(String, Tensor)>, adamw: AdamWConfig, ema_decay: f64) -> TrainState {
        let opt = AdamW::new(&params, adamw);
        let ema = Ema::new(&params, ema_decay);
        TrainState {
            params,
            opt,
            ema,
            step: 0,
            batches: 0,
            best: None,
        }
    }

    /// Loads the checkpoint at `path` into the weights, optimizer, EMA, counters and `loader`.
    /// A checkpoint without `batches` predates gradient accumulation being counted in batches.
    pub fn resume(
        &mut self,
        path: &Path,
        accumulate: usize,
        loader: &mut dyn TrainBatches,
    ) -> Result<()> {
        let ckpt = checkpoint::load(path)?;
        checkpoint::load_into(&self.params, "", &ckpt)
            .with_context(|| format!("resuming from {}", path.display()))?;
        let all = ckpt.tensor_list();
        self.opt.load_state(&all)?;
        self.ema.load_state(&all)?;
        self.step = ckpt.state["global_step"]
            .as_u64()
            .context("checkpoint state lacks global_step")?;
        self.batches = ckpt.state["batches"]
            .as_u64()
            .unwrap_or(self.step * accumulate as u64);
        self.best = ckpt.state["best_val_nll"].as_f64();
        let ls: LoaderState = serde_json::from_value(ckpt.state["loader"].clone())
            .context("checkpoint loader state")?;
        loader.restore(ls)?;
        Ok(())
    }

    /// Writes weights, EMA and optimizer tensors with the counters, `loader`'s position, the
    /// run's seed and the config that made it.
    pub fn save(
        &self,
        path: &Path,
        loader: LoaderState,
        seed: u64,
        config_yaml: &str,
    ) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|(n, t)| (n.clone(), t.detach()))
            .collect();
        tensors.extend(self.ema.state_tensors());
        tensors.extend(self.opt.state_tensors());
        let state = json!({
            "global_step": self.step,
            "batches": self.batches,
            "best_val_nll": self.best,
            "loader": loader,
            "seed": seed,
        });
        checkpoint::save(path, &tensors, &state, config_yaml)
    }
}
