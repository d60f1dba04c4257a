//! Typed view of the composed config. Field names are the YAML keys of the reference's Hydra
//! tree (kuleshov-group/mdlm `configs/`), so `cfg.loader.global_batch_size` reads like
//! `config.loader.global_batch_size` there. Every struct denies unknown fields; closed choices are
//! plain (externally tagged) enums, never internally tagged ones, so a misspelled key is caught.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::yaml_text::yaml_name;

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
    /// The autoregressive baseline: its loss is next-token cross-entropy on a causal backbone
    /// (`diffusion::ar`), not a NELBO; only the mask index and the parameterization apply.
    Ar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Predictor {
    /// Ancestral steps on the `linspace(1, eps, steps + 1)` grid (reference: `_ddpm_update`).
    Ddpm,
    /// Ddpm that reuses p(x0 | xt) while x is unchanged (log-linear noise, no time conditioning).
    DdpmCache,
    /// SEDD's analytic (tau-leaping) update; noise removal is its denoiser step, not an argmax.
    Analytic,
    /// Ours: exact absorbing-diffusion sampling one unmasking at a time (Zheng et al., 2024): one
    /// denoiser call per generated token; `steps`, `eps` and `noise_removal` do not apply.
    FirstHitting,
    /// Ours: confidence-ordered parallel decoding (MaskGIT; LLaDA's low-confidence remasking):
    /// `steps` denoiser calls, each unmasking the most confident masked positions per
    /// `sampling.confidence_*`. Not a sampler of the model's distribution; `noise_removal` does
    /// not apply.
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
    /// Ours: record a few steps after warm-up (training steps for `train`, sampler steps for
    /// `sample-eval`) into `<run dir>/trace.json` and print the ops per step.
    #[serde(default)]
    pub profile: bool,
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
