//! What every subcommand does first: resolve the device and the device-derived config values,
//! create the run directory, and map config sections onto the library's plain types.

use crate::backbone::{ArConfig, BiStrategy, DimambaConfig, DitConfig, Precision};
use crate::config::{self, Config};
use crate::data::{self, DataSpec, Prepared};
use crate::diffusion::{Diffusion, Noise};
use crate::model::Model;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use tch::Device;

pub struct Run {
    pub cfg: Config,
    pub device: Device,
    pub run_dir: PathBuf,
}

/// Resolves the device and batch arithmetic, checks that this build supports the requested
/// model, and writes the resolved config into a fresh run directory. With `launch` (one rank of a
/// data-parallel run) the batch arithmetic is resolved for and checked against the launcher's
/// world size (before any process group exists), the rank drives the CUDA device of its local
/// rank, and only rank 0 writes into the run directory.
pub fn start(mut cfg: Config, launch: Option<&crate::dist::Launch>) -> Result<Run> {
    check_supported(&cfg)?;
    let mut device = crate::device::resolve(cfg.trainer.accelerator)?;
    match launch {
        None => {
            // One process drives one device; the reference's resolvers divide by the device count.
            cfg.resolve_devices(1);
            cfg.validate()?;
        }
        Some(l) => {
            cfg.resolve_devices(l.world / cfg.trainer.num_nodes.max(1));
            cfg.validate()?;
            cfg.check_data_parallel(l.world)
                .with_context(|| format!("rank {} of {} ({})", l.rank, l.world, l.source))?;
            if device.is_cuda() {
                device = tch::Device::Cuda(l.local_rank);
            }
        }
    }
    let run_dir = cfg.run_dir();
    if launch.is_none_or(|l| l.rank == 0) {
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating run directory {}", run_dir.display()))?;
        let cfg_path = run_dir.join("config.yaml");
        std::fs::write(&cfg_path, cfg.to_yaml())
            .with_context(|| format!("writing {}", cfg_path.display()))?;
    }
    tch::manual_seed(cfg.seed as i64);
    Ok(Run {
        cfg,
        device,
        run_dir,
    })
}

/// Settings this build does not implement yet fail here, before any work, naming the key.
fn check_supported(cfg: &Config) -> Result<()> {
    if cfg.backbone == config::Backbone::Dimamba {
        dimamba_config(cfg, 1)?;
    }
    Ok(())
}

pub fn data_spec(cfg: &Config) -> Result<DataSpec> {
    Ok(DataSpec {
        name: cfg.data.train.clone(),
        valid_name: cfg.data.valid.clone(),
        tokenizer: cfg.data.tokenizer_name_or_path.clone(),
        cache_dir: cfg.data.resolved_cache_dir()?,
        wrap: cfg.data.wrap,
        block_size: cfg.model.length,
        insert_valid_eos: cfg.data.insert_valid_eos,
    })
}

pub fn prepare_data(cfg: &Config) -> Result<Prepared> {
    data::prepare(&data_spec(cfg)?)
}

/// (vocab_size incl. mask, mask_index): the mask token is appended when the tokenizer has none,
/// as the reference does.
pub fn vocab(tokenizer: &dyn data::Tokenizer) -> (i64, i64) {
    match tokenizer.mask_id() {
        Some(m) => (tokenizer.vocab_size() as i64, m as i64),
        None => (
            tokenizer.vocab_size() as i64 + 1,
            tokenizer.vocab_size() as i64,
        ),
    }
}

pub fn dit_config(cfg: &Config, vocab_size: i64) -> DitConfig {
    DitConfig {
        vocab_size,
        hidden_size: cfg.model.hidden_size as i64,
        cond_dim: cfg.model.cond_dim as i64,
        n_blocks: cfg.model.n_blocks as i64,
        n_heads: cfg.model.n_heads as i64,
        dropout: cfg.model.dropout,
        mlp_ratio: 4,
        frequency_embedding_size: 256,
        rotary_base: 10_000.0,
    }
}

/// The reference's DiMamba settings at the configured size. Only `temb_strategy: adaln` is
/// implemented (what `tiny-dimamba` sets, and the only strategy the reference's final layer
/// supports with its fused add-norm).
pub fn dimamba_config(cfg: &Config, vocab_size: i64) -> Result<DimambaConfig> {
    match cfg.model.temb_strategy.as_deref() {
        Some("adaln") => {}
        other => {
            let found = other.map_or_else(
                || format!("none (model={} sets no temb_strategy)", cfg.model.name),
                |s| s.to_string(),
            );
            bail!(
                "backbone=dimamba requires model.temb_strategy=adaln (available: adaln), found {found}; use model=tiny-dimamba"
            )
        }
    }
    Ok(DimambaConfig {
        dropout: cfg.model.dropout,
        tie_word_embeddings: cfg.model.tie_word_embeddings,
        strategy: BiStrategy::Add,
        ..DimambaConfig::reference(
            vocab_size,
            cfg.model.hidden_size as i64,
            cfg.model.cond_dim as i64,
            cfg.model.n_blocks as i64,
        )
    })
}

pub fn precision(cfg: &Config, device: Device) -> Result<Precision> {
    Precision::resolve(cfg.trainer.precision, device)
}

pub fn noise(cfg: &Config) -> Result<Noise> {
    use config::NoiseType as N;
    let n = &cfg.noise;
    let need = |v: Option<f64>, k: &str| {
        v.with_context(|| format!("noise.{k} is required for noise.type={:?}", n.kind))
    };
    Ok(match n.kind {
        // The reference's LogLinearNoise() ignores the YAML's sigma_min/sigma_max.
        N::Loglinear => Noise::LogLinear { eps: 1e-3 },
        N::Geometric => Noise::Geometric {
            sigma_min: need(n.sigma_min, "sigma_min")?,
            sigma_max: need(n.sigma_max, "sigma_max")?,
        },
        N::Cosine => Noise::Cosine {
            eps: n.eps.unwrap_or(1e-3),
        },
        N::Cosinesqr => Noise::CosineSqr {
            eps: n.eps.unwrap_or(1e-3),
        },
        N::Linear => Noise::Linear {
            sigma_min: need(n.sigma_min, "sigma_min")?,
            sigma_max: need(n.sigma_max, "sigma_max")?,
        },
        other => bail!(
            "noise.type={other:?} has no implementation in the reference either (available: loglinear, geometric, cosine, cosinesqr, linear)"
        ),
    })
}

pub fn diffusion(cfg: &Config, vocab_size: i64, mask_index: i64) -> Result<Diffusion> {
    Ok(Diffusion {
        parameterization: cfg.parameterization,
        noise: noise(cfg)?,
        mask_index,
        vocab_size,
        time_conditioning: cfg.time_conditioning,
        t_steps: cfg.t as i64,
        subs_masking: cfg.subs_masking,
        sampling_eps: cfg.training.sampling_eps,
        antithetic_sampling: cfg.training.antithetic_sampling,
        importance_sampling: cfg.training.importance_sampling,
        change_of_variables: cfg.training.change_of_variables,
    })
}

pub fn build_model(cfg: &Config, vocab_size: i64, device: Device) -> Result<Model> {
    let dit = dit_config(cfg, vocab_size);
    let precision = precision(cfg, device)?;
    Ok(match cfg.backbone {
        config::Backbone::Ar => Model::ar(&ArConfig::from(&dit), precision, device),
        config::Backbone::Dimamba => {
            Model::dimamba(&dimamba_config(cfg, vocab_size)?, precision, device)
        }
        _ => Model::dit(&dit, precision, device),
    })
}

/// A model ready to evaluate or sample, with the diffusion settings that go with it.
pub struct EvalModel {
    pub model: Model,
    pub diffusion: Diffusion,
    /// What was loaded, for reports.
    pub source: String,
    /// The training step the weights are from, where the checkpoint records it (the step an
    /// evaluation is logged at in TensorBoard).
    pub step: Option<u64>,
}

/// Loads `eval.checkpoint_path` for ppl-eval / sample-eval / export, whatever its kind:
/// - `backbone=hf_dit`: a Hugging Face MDLM (a repo id in the offline hub cache, or a folder);
/// - a `.ckpt` file: the reference's Lightning checkpoint (read without executing its pickle);
/// - otherwise our own safetensors checkpoint.
///
/// EMA weights unless `eval.disable_ema`, as the reference evaluates and samples.
pub fn eval_model(
    cfg: &Config,
    tokenizer: &dyn data::Tokenizer,
    device: Device,
) -> Result<EvalModel> {
    let (vocab_size, mask_index) = vocab(tokenizer);
    let path = cfg.eval.checkpoint_path.as_str();
    if path.is_empty() {
        bail!(
            "eval.checkpoint_path is empty; pass eval.checkpoint_path=<run>/checkpoints/last.safetensors (or a .ckpt file, or an HF MDLM with backbone=hf_dit)"
        );
    }
    let precision = precision(cfg, device)?;
    if cfg.backbone == config::Backbone::HfDit {
        let hf = crate::checkpoint::hf::load(path)
            .with_context(|| format!("eval.checkpoint_path={path}"))?;
        if hf.config.vocab_size != vocab_size {
            bail!(
                "{path}: the checkpoint's vocabulary has {} entries, data.tokenizer_name_or_path={} gives {vocab_size} (mask included)",
                hf.config.vocab_size,
                cfg.data.tokenizer_name_or_path
            );
        }
        if hf.config.model_length != cfg.model.length as i64 {
            tracing::warn!(
                checkpoint = hf.config.model_length,
                config = cfg.model.length,
                "model.length differs from the checkpoint's model_length"
            );
        }
        let vs = tch::nn::VarStore::new(device);
        let dit =
            crate::checkpoint::hf::load_dit(&vs, &hf.config.dit_config(), &hf.tensors, precision)?;
        let mut diffusion = diffusion(cfg, vocab_size, mask_index)?;
        diffusion.time_conditioning = hf.config.time_conditioning;
        let source = format!("{} (Hugging Face MDLM)", hf.dir.display());
        return Ok(EvalModel {
            model: Model {
                vs,
                net: crate::model::Net::Dit(dit),
            },
            diffusion,
            source,
            step: None,
        });
    }
    let model = build_model(cfg, vocab_size, device)?;
    let diffusion = diffusion(cfg, vocab_size, mask_index)?;
    let p = PathBuf::from(path);
    if p.extension().is_some_and(|e| e == "ckpt") {
        let step = load_lightning(cfg, &model, &p)?;
        return Ok(EvalModel {
            model,
            diffusion,
            source: format!("{path} (Lightning checkpoint)"),
            step,
        });
    }
    let step = load_eval_weights(cfg, &model)?;
    Ok(EvalModel {
        model,
        diffusion,
        source: path.to_string(),
        step,
    })
}

/// Returns the checkpoint's global step, when it has one.
fn load_lightning(cfg: &Config, model: &Model, path: &std::path::Path) -> Result<Option<u64>> {
    let ck = crate::checkpoint::lightning::read(path)?;
    let mut weights: std::collections::BTreeMap<String, tch::Tensor> = if cfg.eval.disable_ema {
        ck.state_dict
            .iter()
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect()
    } else {
        let n = cfg.model.n_blocks as i64;
        let order = match cfg.backbone {
            config::Backbone::Ar => crate::checkpoint::lightning::ar_parameter_order(n),
            config::Backbone::Dimamba => dimamba_config(cfg, 1)?.reference_parameter_order(),
            _ => crate::checkpoint::lightning::dit_parameter_order(n),
        };
        ck.ema_state_dict(&order)
            .with_context(|| format!("{}: EMA weights", path.display()))?
    };
    if cfg.backbone == config::Backbone::Dimamba {
        // The EMA lists a tied tensor once; its second name in the state dict still holds the
        // raw weight, and both names are one tensor here, so the second must mirror the first.
        for (alias, src) in dimamba_config(cfg, 1)?.tied_names() {
            if let Some(t) = weights.get(&src).map(|t| t.shallow_clone()) {
                weights.insert(alias, t);
            }
        }
    }
    crate::backbone::load::load_strict(&model.vs, &weights, "backbone.").with_context(|| {
        format!(
            "Lightning checkpoint {} does not fit model={}",
            path.display(),
            cfg.model.name
        )
    })?;
    Ok(ck.global_step.and_then(|s| u64::try_from(s).ok()))
}

/// Loads `eval.checkpoint_path` into `model`: the EMA weights unless `eval.disable_ema`, as the
/// reference evaluates and samples. Returns the checkpoint's global step.
fn load_eval_weights(cfg: &Config, model: &Model) -> Result<Option<u64>> {
    if cfg.eval.checkpoint_path.is_empty() {
        bail!(
            "eval.checkpoint_path is empty; pass eval.checkpoint_path=<run>/checkpoints/last.safetensors"
        );
    }
    let path = PathBuf::from(&cfg.eval.checkpoint_path);
    let ckpt = crate::checkpoint::load(&path)?;
    let prefix = if cfg.eval.disable_ema { "" } else { "ema." };
    let params = model.params();
    crate::checkpoint::load_into(&params, prefix, &ckpt).with_context(|| {
        let trained = config::Config::from_yaml(&ckpt.config_yaml)
            .map(|c| format!("model={} (hidden_size {}, n_blocks {}, length {}) on data={}", c.model.name, c.model.hidden_size, c.model.n_blocks, c.model.length, c.data.train))
            .unwrap_or_else(|_| "an unknown config".into());
        format!(
            "checkpoint {} does not fit model={} with this tokenizer; it was trained with {trained}",
            path.display(),
            cfg.model.name
        )
    })?;
    Ok(ckpt.state["global_step"].as_u64())
}
