//! Values computed from other keys: the reference's `${eval:...}` / `${div_up:...}` resolvers
//! (per-device batch sizes, gradient accumulation, device count, scheduler steps), the batch
//! arithmetic of a data-parallel run, and paths that fall back on the environment.

use std::path::PathBuf;

use super::schema::{Config, Data, LrSchedulerKind, Mode};

fn div_up(a: usize, b: usize) -> usize {
    a.div_ceil(b.max(1))
}

impl Config {
    /// Fills the values the reference computes with resolvers, for `devices` devices per node
    /// (the detected CUDA device count; 0, i.e. the CPU, counts as one device).
    ///
    /// - `trainer.devices` (kept if already set),
    /// - `loader.batch_size = ceil(global_batch_size / (devices * num_nodes))` and
    ///   `loader.eval_batch_size` likewise from `eval_global_batch_size` (kept if already set),
    /// - `trainer.accumulate_grad_batches = ceil(global / (devices * batch_size * num_nodes))`
    ///   (kept if already set; derived from an explicit `batch_size` when there is one),
    /// - `loader.num_workers` = CPUs available to this process (kept if already set).
    pub fn resolve_devices(&mut self, devices: usize) {
        let devices = *self.trainer.devices.get_or_insert(devices.max(1));
        let nodes = self.trainer.num_nodes.max(1);
        let per_step = devices * nodes;
        let loader = &mut self.loader;
        let batch = *loader
            .batch_size
            .get_or_insert(div_up(loader.global_batch_size, per_step));
        loader
            .eval_batch_size
            .get_or_insert(div_up(loader.eval_global_batch_size, per_step));
        loader.num_workers.get_or_insert_with(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        self.trainer
            .accumulate_grad_batches
            .get_or_insert(div_up(loader.global_batch_size, per_step * batch.max(1)));
    }

    /// The reference's batch arithmetic for `world` data-parallel processes, checked before any
    /// process group exists: `devices * num_nodes` processes, and (training)
    /// `global_batch_size = batch_size * devices * num_nodes * accumulate_grad_batches`, and the
    /// evaluation batch likewise without accumulation. Call after [`Config::resolve_devices`].
    pub fn check_data_parallel(&self, world: usize) -> anyhow::Result<()> {
        let devices = self.trainer.devices.unwrap_or(1);
        let nodes = self.trainer.num_nodes.max(1);
        if devices * nodes != world {
            anyhow::bail!(
                "trainer.devices={devices} x trainer.num_nodes={nodes} = {} processes, but the launcher started {world}; set trainer.devices={} (or start {} processes)",
                devices * nodes,
                world / nodes,
                devices * nodes
            );
        }
        let batch = self.loader.batch_size.unwrap_or(0);
        let accumulate = self.trainer.accumulate_grad_batches.unwrap_or(0);
        let global = self.loader.global_batch_size;
        // Evaluation and sampling never read the training batch.
        if self.mode == Mode::Train && batch * world * accumulate != global {
            anyhow::bail!(
                "loader.global_batch_size={global} must equal loader.batch_size={batch} x trainer.devices={devices} x trainer.num_nodes={nodes} x trainer.accumulate_grad_batches={accumulate} = {}; pick a global batch divisible by {} or leave loader.batch_size and trainer.accumulate_grad_batches unset",
                batch * world * accumulate,
                world
            );
        }
        let eval = self.loader.eval_batch_size.unwrap_or(0);
        let eval_global = self.loader.eval_global_batch_size;
        if eval * world != eval_global {
            anyhow::bail!(
                "loader.eval_global_batch_size={eval_global} must equal loader.eval_batch_size={eval} x {world} processes = {}; pick an eval global batch divisible by {world} or leave loader.eval_batch_size unset",
                eval * world
            );
        }
        let timeout = self.trainer.dist_timeout_s;
        // NaN is refused too.
        if timeout.is_nan() || timeout <= 0.0 {
            anyhow::bail!(
                "trainer.dist_timeout_s must be > 0, found {timeout}; set e.g. trainer.dist_timeout_s=600"
            );
        }
        Ok(())
    }

    /// `hydra.run.dir`, resolved at composition (the reference's per-run output folder).
    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from(&self.hydra.run.dir)
    }

    /// Fills values the reference computes with `${eval:...}` resolvers from other keys.
    pub(crate) fn fill_derived(&mut self) {
        let lr = &mut self.lr_scheduler;
        if lr.target == LrSchedulerKind::CosineDecayWarmup {
            let max_steps = self.trainer.max_steps;
            let warmup = *lr
                .warmup_t
                .get_or_insert(((max_steps as f64) * 0.1).round() as u64);
            lr.t_initial.get_or_insert(max_steps.saturating_sub(warmup));
        }
    }
}

impl Data {
    /// `cache_dir` if set, else `$MDLM_CACHE/data`, else `$XDG_CACHE_HOME/mdlm/data`, else
    /// `~/.cache/mdlm/data` (the same cache root as `scripts/setup-libtorch.sh`). Without any of
    /// them there is no per-user cache: a path relative to wherever mdlm runs would prepare the
    /// data again in every folder, so that is an error.
    pub fn resolved_cache_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.cache_dir {
            return Ok(PathBuf::from(dir));
        }
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = env("MDLM_CACHE")
            .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("mdlm")))
            .or_else(|| env("HOME").map(|p| p.join(".cache").join("mdlm")))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "cannot place the data cache: data.cache_dir is not set and MDLM_CACHE, XDG_CACHE_HOME and HOME are all unset; set one of them"
                )
            })?;
        Ok(root.join("data"))
    }
}
