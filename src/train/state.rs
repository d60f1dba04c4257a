//! What a checkpoint carries of a run in progress: the weights, the AdamW and EMA state, and the
//! loop's counters (with the loader's position, all a bit-identical resume needs).

use super::ema::Ema;
use super::optim::{AdamW, AdamWConfig};
use super::trainer::TrainPlan;
use crate::checkpoint;
use crate::data::loader::{LoaderState, TrainBatches};
use anyhow::{Context, Result, bail};
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
    /// A checkpoint without `batches` predates gradient accumulation being counted in batches;
    /// one without `loader_rows` / `accumulate` is taken to have been saved with today's.
    /// The loader position and the micro-batch count are carried over to this run's batch and
    /// accumulation (another number of processes with the same global batch).
    pub fn resume(
        &mut self,
        path: &Path,
        accumulate: usize,
        rows_per_batch: usize,
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
        let count = |k: &str, now: usize| ckpt.state[k].as_u64().unwrap_or(now as u64);
        let accumulate_then = count("accumulate", accumulate);
        self.batches = ckpt.state["batches"]
            .as_u64()
            .unwrap_or(self.step * accumulate_then);
        if accumulate_then != accumulate as u64 {
            // Saved after an optimizer step: every step took `accumulate_then` micro-batches.
            self.batches = self.batches / accumulate_then.max(1) * accumulate as u64;
        }
        self.best = ckpt.state["best_val_nll"].as_f64();
        let ls: LoaderState = serde_json::from_value(ckpt.state["loader"].clone())
            .context("checkpoint loader state")?;
        let ls = regroup(
            ls,
            count("loader_rows", rows_per_batch),
            rows_per_batch as u64,
        )
        .with_context(|| format!("resuming from {}", path.display()))?;
        loader.restore(ls)?;
        Ok(())
    }

    /// Writes weights, EMA and optimizer tensors with the counters, `loader`'s position, the
    /// run's seed and the config that made it.
    pub fn save(&self, path: &Path, loader: LoaderState, plan: &TrainPlan) -> Result<()> {
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
            "loader_rows": plan.rows_per_batch,
            "accumulate": plan.accumulate,
            "seed": plan.seed,
        });
        checkpoint::save(path, &tensors, &state, &plan.config_yaml)
    }
}

/// A loader position saved in batches of `then` rows, in batches of `now` rows (both over all
/// ranks); an error when `now` rows per batch cannot land on the saved position.
fn regroup(ls: LoaderState, then: u64, now: u64) -> Result<LoaderState> {
    if then == now {
        return Ok(ls);
    }
    let rows = ls.cursor as u64 * then;
    if now == 0 || !rows.is_multiple_of(now) {
        bail!(
            "the checkpoint stopped {rows} rows into epoch {}, which batches of {now} rows (loader.batch_size x processes) cannot reach; resume with a batch that divides it",
            ls.epoch
        );
    }
    Ok(LoaderState {
        epoch: ls.epoch,
        cursor: (rows / now) as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_positions_regroup_by_rows() {
        let at = |epoch, cursor| LoaderState { epoch, cursor };
        // 2 processes x 4 rows, 3 batches in: 24 rows, which is 3 batches of 8 on one process,
        // 6 batches of 4 with accumulation, 1.5 batches of 16 (refused).
        assert_eq!(regroup(at(2, 3), 8, 8).unwrap(), at(2, 3));
        assert_eq!(regroup(at(2, 3), 8, 4).unwrap(), at(2, 6));
        assert_eq!(regroup(at(2, 6), 4, 8).unwrap(), at(2, 3));
        let e = regroup(at(2, 3), 8, 16).unwrap_err().to_string();
        assert!(e.contains("24 rows into epoch 2"), "{e}");
    }
}
