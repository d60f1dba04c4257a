//! Typed view of the composed config. Field names are the YAML keys of the reference's Hydra
//! tree (kuleshov-group/mdlm `configs/`), so `cfg.loader.global_batch_size` reads like
//! `config.loader.global_batch_size` there. Every struct denies unknown fields; closed choices are
//! plain (externally tagged) enums, never internally tagged ones, so a misspelled key is caught.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole run configuration, as composed from `configs/` plus command-line overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub mode: Mode,
    pub diffusion: DiffusionKind,
    pub backbone: Backbone,
    pub parameterization: Parameterization,
    pub time_conditioning: bool,
    /// Number of discrete time steps; 0 means continuous time.
    #[serde(rename = "T")]
    pub t: u64,
    pub subs_masking: bool,
    pub seed: u64,
    pub loader: Loader,
    pub sampling: Sampling,
    pub training: Training,
    pub eval: Eval,
    pub optim: Optim,
    pub trainer: Trainer,
    pub wandb: Wandb,
    pub hydra: Hydra,
    pub checkpointing: Checkpointing,
    #[serde(default)]
    pub callbacks: Callbacks,
    pub data: Data,
    pub model: Model,
    pub strategy: Strategy,
    pub noise: Noise,
    pub lr_scheduler: LrScheduler,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Train,
    PplEval,
    SampleEval,
}

/// The reference implements only the absorbing-state (masking) diffusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffusionKind {
    AbsorbingState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backbone {
    Dit,
    Dimamba,
    Ar,
    /// A DiT loaded in Hugging Face layout from `eval.checkpoint_path`.
    HfDit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parameterization {
    Subs,
    D3pm,
    Sedd,
    Ar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Predictor {
    Ddpm,
    DdpmCache,
    Analytic,
    /// Ours: exact first-hitting sampler (one denoiser call per unmasked token).
    FirstHitting,
    /// Ours: confidence-based parallel decoding.
    Confidence,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Loader {
    pub global_batch_size: usize,
    pub eval_global_batch_size: usize,
    /// Per device; `None` until [`Config::resolve_devices`] (unless set by the user).
    pub batch_size: Option<usize>,
    /// Per device; `None` until [`Config::resolve_devices`] (unless set by the user).
    pub eval_batch_size: Option<usize>,
    /// `None` until [`Config::resolve_devices`] (unless set by the user).
    pub num_workers: Option<usize>,
    pub pin_memory: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    pub predictor: Predictor,
    pub steps: usize,
    pub noise_removal: bool,
    pub num_sample_batches: usize,
    pub num_sample_log: usize,
    pub semi_ar: bool,
    pub stride_length: usize,
    pub num_strides: usize,
    /// Ours: draw Gumbel noise in float64 (the reference uses float32; `false` reproduces it).
    pub float64_gumbel: bool,
    /// Ours: total samples wanted; when set, `num_sample_batches` becomes
    /// `ceil(num_samples / loader.eval_batch_size)` and the output keeps exactly this many.
    #[serde(default)]
    pub num_samples: Option<usize>,
    /// Ours: divides the denoiser's logits (1 = off).
    #[serde(default = "one")]
    pub temperature: f64,
    /// Ours: nucleus filtering of the denoiser's distribution (1 = off).
    #[serde(default = "one")]
    pub top_p: f64,
    /// Ours, `predictor=confidence`: unmask every position at least this confident per step;
    /// `null` unmasks the `masked / steps left` most confident ones.
    #[serde(default)]
    pub confidence_threshold: Option<f64>,
    /// Ours: conditional generation. Text held at the start (after BOS) of every sample.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Ours: text held at the end of every sample (with `prefix`: infilling).
    #[serde(default)]
    pub suffix: Option<String>,
    /// Ours, `predictor=ddpm_cache`: recompute the denoiser only for the rows that changed (the
    /// reference recomputes the whole batch when any row changed). Off when `float64_gumbel` is.
    #[serde(default = "yes")]
    pub cache_rows: bool,
}

fn yes() -> bool {
    true
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Training {
    pub ema: f64,
    pub antithetic_sampling: bool,
    pub importance_sampling: bool,
    pub sampling_eps: f64,
    pub change_of_variables: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eval {
    pub checkpoint_path: String,
    pub disable_ema: bool,
    pub compute_generative_perplexity: bool,
    pub perplexity_batch_size: usize,
    pub compute_perplexity_on_sanity: bool,
    pub gen_ppl_eval_model_name_or_path: String,
    pub generate_samples: bool,
    /// Which split `ppl-eval` scores: `validation` (the reference's only choice), or `test` (ours,
    /// e.g. text8's test BPC); older configs without the key mean `validation`.
    #[serde(default = "validation")]
    pub split: String,
}

fn validation() -> String {
    "validation".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Optim {
    pub weight_decay: f64,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accelerator {
    /// Lightning also spells this `gpu`.
    #[serde(alias = "gpu")]
    Cuda,
    Cpu,
    /// CUDA when available, else the CPU (ours; the reference hard-codes `cuda`).
    Auto,
}

/// Lightning's `precision` strings. Accepts the numbers Lightning accepts too (`32`, `16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_yaml::Value", into = "String")]
pub enum Precision {
    /// `bf16` / `bf16-mixed`: bf16 autocast, f32 weights.
    Bf16Mixed,
    /// `bf16-true`: weights in bf16.
    Bf16True,
    /// `16` / `16-mixed`.
    Fp16Mixed,
    /// `32` / `32-true`.
    Fp32,
    /// `64` / `64-true`.
    Fp64,
}

impl Precision {
    pub const CHOICES: &'static [&'static str] = &[
        "bf16",
        "bf16-mixed",
        "bf16-true",
        "16",
        "16-mixed",
        "32",
        "32-true",
        "64",
        "64-true",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Bf16Mixed => "bf16",
            Precision::Bf16True => "bf16-true",
            Precision::Fp16Mixed => "16-mixed",
            Precision::Fp32 => "32",
            Precision::Fp64 => "64",
        }
    }
}

impl From<Precision> for String {
    fn from(p: Precision) -> String {
        p.as_str().to_string()
    }
}

impl TryFrom<serde_yaml::Value> for Precision {
    type Error = String;
    fn try_from(v: serde_yaml::Value) -> Result<Self, String> {
        let s = match &v {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            other => return Err(format!("expected a precision string, found {other:?}")),
        };
        Ok(match s.as_str() {
            "bf16" | "bf16-mixed" => Precision::Bf16Mixed,
            "bf16-true" => Precision::Bf16True,
            "16" | "16-mixed" => Precision::Fp16Mixed,
            "32" | "32-true" => Precision::Fp32,
            "64" | "64-true" => Precision::Fp64,
            _ => {
                return Err(format!(
                    "unknown precision '{s}' (allowed: {})",
                    Precision::CHOICES.join(", ")
                ));
            }
        })
    }
}

/// Lightning's convention for `limit_*_batches` and `val_check_interval`: an int is a number of
/// batches (steps), a float is a fraction of the dataset (epoch).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CountOrFraction {
    Count(u64),
    Fraction(f64),
}

impl CountOrFraction {
    /// Number of batches out of `total`: a count is capped at `total`, a fraction is rounded down
    /// (as Lightning does).
    pub fn of(self, total: u64) -> u64 {
        match self {
            CountOrFraction::Count(n) => n.min(total),
            CountOrFraction::Fraction(f) => ((total as f64) * f).floor() as u64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trainer {
    #[serde(rename = "_target_")]
    pub target: String,
    pub accelerator: Accelerator,
    pub num_nodes: usize,
    /// `None` until [`Config::resolve_devices`] (unless set by the user).
    pub devices: Option<usize>,
    /// `None` until [`Config::resolve_devices`] (unless set by the user).
    pub accumulate_grad_batches: Option<usize>,
    /// `null` disables clipping.
    pub gradient_clip_val: Option<f64>,
    pub precision: Precision,
    pub num_sanity_val_steps: i64,
    pub max_steps: u64,
    pub log_every_n_steps: u64,
    pub limit_train_batches: CountOrFraction,
    pub limit_val_batches: CountOrFraction,
    pub val_check_interval: CountOrFraction,
    /// Ours: seconds a data-parallel rank waits on a peer (rendezvous, collectives) before
    /// failing instead of hanging.
    #[serde(default = "default_dist_timeout_s")]
    pub dist_timeout_s: f64,
    /// Ours: gradient bucket size (MB) for the data-parallel all-reduce (DDP's bucket_cap_mb).
    #[serde(default = "default_bucket_cap_mb")]
    pub bucket_cap_mb: f64,
}

fn default_dist_timeout_s() -> f64 {
    600.0
}

fn default_bucket_cap_mb() -> f64 {
    25.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wandb {
    pub project: String,
    pub notes: Option<String>,
    pub group: Option<String>,
    pub job_type: Option<String>,
    pub name: Option<String>,
    pub id: Option<String>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hydra {
    pub run: HydraRun,
    pub job: HydraJob,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HydraRun {
    pub dir: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HydraJob {
    pub chdir: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpointing {
    /// `null` in YAML means `hydra.run.dir`; always `Some` after composition.
    pub save_dir: Option<String>,
    pub resume_from_ckpt: bool,
    pub resume_ckpt_path: Option<String>,
}

/// Lightning callbacks, one optional entry per file of `configs/callbacks/`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Callbacks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every_n_steps: Option<CheckpointEveryNSteps>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_monitor: Option<CheckpointMonitor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate_monitor: Option<LearningRateMonitor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointEveryNSteps {
    #[serde(rename = "_target_")]
    pub target: String,
    /// -1 keeps every checkpoint.
    pub save_top_k: i64,
    pub save_last: bool,
    pub dirpath: String,
    pub verbose: bool,
    pub auto_insert_metric_name: bool,
    pub every_n_train_steps: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorMode {
    Min,
    Max,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMonitor {
    #[serde(rename = "_target_")]
    pub target: String,
    pub monitor: String,
    pub mode: MonitorMode,
    pub save_top_k: i64,
    pub save_last: bool,
    pub dirpath: String,
    pub filename: String,
    pub auto_insert_metric_name: bool,
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoggingInterval {
    Step,
    Epoch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearningRateMonitor {
    #[serde(rename = "_target_")]
    pub target: String,
    pub logging_interval: LoggingInterval,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    pub train: String,
    pub valid: String,
    pub tokenizer_name_or_path: String,
    /// `None`: the per-user cache, see [`Data::resolved_cache_dir`].
    pub cache_dir: Option<String>,
    pub wrap: bool,
    pub streaming: bool,
    /// EOS after every validation document when wrapping: true is the MDLM paper's protocol,
    /// false the later re-evaluation without it (the reference's successors' key).
    pub insert_valid_eos: bool,
}

impl Data {
    /// `cache_dir` if set, else `$MDLM_CACHE/data`, else `$XDG_CACHE_HOME/mdlm/data`, else
    /// `~/.cache/mdlm/data` (the same cache root as `scripts/setup-libtorch.sh`).
    pub fn resolved_cache_dir(&self) -> PathBuf {
        if let Some(dir) = &self.cache_dir {
            return PathBuf::from(dir);
        }
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = env("MDLM_CACHE")
            .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("mdlm")))
            .or_else(|| env("HOME").map(|p| p.join(".cache").join("mdlm")))
            .unwrap_or_else(|| PathBuf::from(".cache").join("mdlm"));
        root.join("data")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelType {
    Ddit,
    Dimamba,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ModelType,
    pub hidden_size: usize,
    pub cond_dim: usize,
    /// Sequence length in tokens.
    pub length: usize,
    pub n_blocks: usize,
    pub n_heads: usize,
    pub scale_by_sigma: bool,
    pub dropout: f64,
    pub tie_word_embeddings: bool,
    /// Only in `small-ar` / `tiny-ar`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causal: Option<bool>,
    /// Only in `tiny-dimamba`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temb_strategy: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StrategyKind {
    #[serde(rename = "lightning.pytorch.strategies.DDPStrategy")]
    Ddp,
    #[serde(rename = "lightning.pytorch.strategies.FSDPStrategy")]
    Fsdp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Strategy {
    #[serde(rename = "_target_")]
    pub target: StrategyKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub find_unused_parameters: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharding_strategy: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseType {
    Loglinear,
    Linear,
    Geometric,
    Cosine,
    Cosinesqr,
    /// Shipped as a file by the reference, not implemented by its `get_noise`.
    Polynomial,
    /// Shipped as a file by the reference, not implemented by its `get_noise`.
    Ar,
}

/// One flat struct for every schedule (no tagged enum: see the module doc); which fields a
/// schedule needs is checked by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noise {
    #[serde(rename = "type")]
    pub kind: NoiseType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma_min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma_max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<f64>,
}

/// The scheduler, named by the reference's `_target_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LrSchedulerKind {
    #[serde(rename = "transformers.get_constant_schedule_with_warmup")]
    ConstantWarmup,
    #[serde(rename = "utils.CosineDecayWarmupLRScheduler")]
    CosineDecayWarmup,
}

/// One flat struct for both schedulers; [`Config::validate`] checks the fields each one needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrScheduler {
    #[serde(rename = "_target_")]
    pub target: LrSchedulerKind,
    /// constant_warmup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_warmup_steps: Option<u64>,
    /// cosine_decay_warmup (timm's CosineLRScheduler arguments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t_in_epochs: Option<bool>,
    /// cosine_decay_warmup; `max_steps - warmup_t` when null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t_initial: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_prefix: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_lr_init: Option<f64>,
    /// cosine_decay_warmup; `0.1 * max_steps` when null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_t: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_min: Option<f64>,
}

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
    /// process group exists: `devices * num_nodes` processes, and
    /// `global_batch_size = batch_size * devices * num_nodes * accumulate_grad_batches` (the
    /// evaluation batch likewise without accumulation). Call after [`Config::resolve_devices`].
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
        if batch * world * accumulate != global {
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
        if !(self.trainer.dist_timeout_s > 0.0) {
            anyhow::bail!(
                "trainer.dist_timeout_s must be > 0, found {}; set e.g. trainer.dist_timeout_s=600",
                self.trainer.dist_timeout_s
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

    /// Cross-field checks. Each error names the key, its value, what is allowed and the fix.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut errs: Vec<String> = Vec::new();
        let mut check = |ok: bool, msg: String| {
            if !ok {
                errs.push(msg);
            }
        };
        let p = self.parameterization;

        check(
            !(self.backbone == Backbone::Ar) || p == Parameterization::Ar,
            format!(
                "backbone=ar requires parameterization=ar, found parameterization={}; \
                 set parameterization=ar (and noise=ar as the reference does)",
                p
            ),
        );
        check(
            p != Parameterization::Ar || self.backbone == Backbone::Ar,
            format!(
                "parameterization=ar requires backbone=ar, found backbone={}; set backbone=ar",
                self.backbone
            ),
        );
        check(
            p != Parameterization::Sedd || self.time_conditioning,
            "parameterization=sedd requires time_conditioning=true, found false; \
             set time_conditioning=true"
                .to_string(),
        );
        // The reference's Diffusion._validate_configuration.
        check(
            !(self.training.change_of_variables && self.training.importance_sampling),
            "training.change_of_variables=true and training.importance_sampling=true \
             cannot both be set; set one of them to false"
                .to_string(),
        );
        check(
            p != Parameterization::Sedd
                || !(self.training.importance_sampling || self.training.change_of_variables),
            "parameterization=sedd does not support training.importance_sampling or \
             training.change_of_variables; set both to false"
                .to_string(),
        );
        check(
            p != Parameterization::D3pm || self.t > 0,
            "parameterization=d3pm requires discrete time, found T=0; set T=1000 (or any T >= 1)"
                .to_string(),
        );
        check(
            self.t == 0 || matches!(p, Parameterization::D3pm | Parameterization::Subs),
            format!(
                "T={} (discrete time) requires parameterization in [d3pm, subs], found {}; \
                 set T=0 or change parameterization",
                self.t, p
            ),
        );
        check(
            !self.subs_masking || p == Parameterization::D3pm,
            format!(
                "subs_masking=true requires parameterization=d3pm, found {}; \
                 set subs_masking=false",
                p
            ),
        );

        check(
            self.sampling.steps >= 1,
            format!(
                "sampling.steps must be >= 1, found {}; set e.g. sampling.steps=128",
                self.sampling.steps
            ),
        );
        check(
            self.sampling.stride_length >= 1 && self.sampling.num_strides >= 1,
            format!(
                "sampling.stride_length and sampling.num_strides must be >= 1, found {} and {}",
                self.sampling.stride_length, self.sampling.num_strides
            ),
        );
        check(
            !self.sampling.semi_ar || self.sampling.stride_length <= self.model.length,
            format!(
                "sampling.stride_length={} exceeds model.length={}; lower sampling.stride_length",
                self.sampling.stride_length, self.model.length
            ),
        );
        for (key, v) in [
            ("loader.global_batch_size", self.loader.global_batch_size),
            (
                "loader.eval_global_batch_size",
                self.loader.eval_global_batch_size,
            ),
            ("trainer.num_nodes", self.trainer.num_nodes),
            ("model.length", self.model.length),
            ("model.n_heads", self.model.n_heads),
            ("model.hidden_size", self.model.hidden_size),
        ] {
            check(
                v >= 1,
                format!("{key} must be >= 1, found {v}; set {key}=<positive integer>"),
            );
        }
        for (key, v) in [
            ("loader.batch_size", self.loader.batch_size),
            ("loader.eval_batch_size", self.loader.eval_batch_size),
            ("trainer.devices", self.trainer.devices),
            (
                "trainer.accumulate_grad_batches",
                self.trainer.accumulate_grad_batches,
            ),
        ] {
            check(
                v != Some(0),
                format!("{key} must be >= 1 or null (computed), found 0; remove the override"),
            );
        }
        check(
            self.model.n_heads == 0 || self.model.hidden_size.is_multiple_of(self.model.n_heads),
            format!(
                "model.hidden_size={} is not divisible by model.n_heads={}; \
                 pick n_heads dividing hidden_size",
                self.model.hidden_size, self.model.n_heads
            ),
        );
        check(
            (0.0..=1.0).contains(&self.model.dropout),
            format!(
                "model.dropout must be in [0, 1], found {}",
                self.model.dropout
            ),
        );
        check(
            (0.0..1.0).contains(&self.training.ema),
            format!(
                "training.ema must be in [0, 1) (0 disables EMA), found {}",
                self.training.ema
            ),
        );
        check(
            self.training.sampling_eps > 0.0 && self.training.sampling_eps < 1.0,
            format!(
                "training.sampling_eps must be in (0, 1), found {}; the reference uses 1e-3",
                self.training.sampling_eps
            ),
        );
        check(
            self.optim.lr > 0.0,
            format!("optim.lr must be > 0, found {}", self.optim.lr),
        );
        for (key, v) in [
            (
                "trainer.limit_train_batches",
                self.trainer.limit_train_batches,
            ),
            ("trainer.limit_val_batches", self.trainer.limit_val_batches),
            (
                "trainer.val_check_interval",
                self.trainer.val_check_interval,
            ),
        ] {
            if let CountOrFraction::Fraction(f) = v {
                check(
                    (0.0..=1.0).contains(&f),
                    format!(
                        "{key}={f}: a float is a fraction and must be in [0, 1]; \
                         use an int for a number of batches"
                    ),
                );
            }
        }
        check(
            self.trainer.val_check_interval != CountOrFraction::Count(0),
            "trainer.val_check_interval must be >= 1 (steps) or a fraction in (0, 1]".to_string(),
        );

        let noise = &self.noise;
        match noise.kind {
            NoiseType::Linear | NoiseType::Geometric => check(
                noise.sigma_min.is_some() && noise.sigma_max.is_some(),
                format!(
                    "noise.type={} needs noise.sigma_min and noise.sigma_max; \
                     add them with +noise.sigma_min=... +noise.sigma_max=...",
                    noise.kind
                ),
            ),
            NoiseType::Loglinear | NoiseType::Cosine | NoiseType::Cosinesqr => {}
            NoiseType::Polynomial | NoiseType::Ar => {}
        }

        let lr = &self.lr_scheduler;
        match lr.target {
            LrSchedulerKind::ConstantWarmup => check(
                lr.num_warmup_steps.is_some(),
                "lr_scheduler=constant_warmup needs lr_scheduler.num_warmup_steps; \
                 add +lr_scheduler.num_warmup_steps=2500"
                    .to_string(),
            ),
            LrSchedulerKind::CosineDecayWarmup => {
                let missing: Vec<&str> = [
                    ("t_in_epochs", lr.t_in_epochs.is_none()),
                    ("t_initial", lr.t_initial.is_none()),
                    ("warmup_prefix", lr.warmup_prefix.is_none()),
                    ("warmup_lr_init", lr.warmup_lr_init.is_none()),
                    ("warmup_t", lr.warmup_t.is_none()),
                    ("lr_min", lr.lr_min.is_none()),
                ]
                .into_iter()
                .filter(|(_, m)| *m)
                .map(|(k, _)| k)
                .collect();
                check(
                    missing.is_empty(),
                    format!(
                        "lr_scheduler=cosine_decay_warmup is missing lr_scheduler.{}; \
                         use the file configs/lr_scheduler/cosine_decay_warmup.yaml",
                        missing.join(", lr_scheduler.")
                    ),
                );
            }
        }

        if errs.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid config:\n  - {}", errs.join("\n  - "))
        }
    }
}

/// The YAML spelling of a value (e.g. `ddpm_cache` for `Predictor::DdpmCache`), for messages.
pub(crate) fn yaml_name<T: Serialize>(v: &T) -> String {
    match serde_yaml::to_value(v) {
        Ok(serde_yaml::Value::String(s)) => s,
        Ok(other) => serde_yaml::to_string(&other)
            .unwrap_or_default()
            .trim()
            .to_string(),
        Err(_) => String::from("?"),
    }
}

macro_rules! display_as_yaml {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&yaml_name(self))
            }
        }
    )*};
}

display_as_yaml!(
    Mode,
    DiffusionKind,
    Backbone,
    Parameterization,
    Predictor,
    Accelerator,
    Precision,
    ModelType,
    StrategyKind,
    NoiseType,
    LrSchedulerKind,
    MonitorMode,
    LoggingInterval
);
