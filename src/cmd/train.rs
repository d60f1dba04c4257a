//! `mdlm train`: prepare data, build the model, run the loop, report — as one process, as one
//! rank of a data-parallel run started by `srun` / torchrun-style variables, or as the local
//! launcher (`trainer.devices=N` without a launcher) that starts one rank per device.

use super::ranks::{self, Role};
use super::setup::{self, Run};
use crate::config::{Config, CountOrFraction, LrSchedulerKind, Parameterization};
use crate::data::prepare::prepare_one;
use crate::data::{Loader, Prefetch, Split, StreamLoader, TokenBlocks, Tokenizer, TrainBatches};
use crate::dist::{self, Launch};
use crate::sample::SampleSpec;
use crate::train::lr::{CosineDecayWarmup, LrSchedule};
use crate::train::optim::AdamWConfig;
use crate::train::samples::ValidationSamples;
use crate::train::trainer::{self, TrainOutcome, TrainPlan};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::sync::Arc;

/// The `mdlm train` entry point: one process, one rank, or the local launcher.
pub fn main(cfg: Config) -> Result<()> {
    match ranks::role(&cfg)? {
        Role::Alone => run(cfg, None).map(|_| ()),
        Role::Rank(l) => run(cfg, Some(&l)).map(|_| ()),
        Role::Launched => Ok(()),
    }
}

/// Trains as rank `launch.rank` of a data-parallel run, or alone with `None`.
pub fn run(cfg: Config, launch: Option<&Launch>) -> Result<TrainOutcome> {
    let Run {
        cfg,
        device,
        run_dir,
    } = setup::start(cfg, launch)?;
    let main = launch.is_none_or(|l| l.rank == 0);
    if main {
        eprintln!("{}", cfg.tree());
    }
    let pg = ranks::join(&cfg, launch, device)?;
    let (rank, world) = pg.as_ref().map_or((0, 1), |p| (p.rank(), p.world()));
    let batch = cfg
        .loader
        .batch_size
        .context("loader.batch_size unresolved")?;
    let eval_batch = cfg
        .loader
        .eval_batch_size
        .context("loader.eval_batch_size unresolved")?;
    let data = ranks::rank_zero_first(pg.as_ref(), "preparing the data", || {
        TrainData::new(&cfg, batch, device, rank, world)
    })?;
    let (vocab_size, mask_index) = setup::vocab(data.tokenizer.as_ref());
    let diffusion = setup::diffusion(&cfg, vocab_size, mask_index)?;
    let model = setup::build_model(&cfg, vocab_size, device)?;
    let ema_model = setup::build_model(&cfg, vocab_size, device)?;
    if let Some(pg) = &pg {
        dist::ddp::broadcast_params(pg, &model.params())?;
    }
    let mut valid_loader = Loader::eval(data.valid.clone(), eval_batch)?
        .shard(rank, world)?
        .with_device(device);
    let mut plan = rank_plan(&cfg, &run_dir, &data, batch, world, &valid_loader, main)?;
    if main {
        // Only rank 0 logs, so only rank 0 draws samples for the log.
        plan.samples = validation_samples(&cfg, &data.tokenizer, &diffusion, eval_batch);
        eprintln!(
            "run dir {} | device {device:?} | {} parameters | vocab {vocab_size} (mask {mask_index}) | {} train / {} valid blocks of {} | batch {batch} x {world} ranks x accumulate {}",
            run_dir.display(),
            model.num_params(),
            data.train_blocks
                .map_or("streamed".to_string(), |n| n.to_string()),
            data.valid.len(),
            cfg.model.length,
            plan.accumulate
        );
        if let Some(p) = &plan.resume_from {
            eprintln!("resuming from {}", p.display());
        }
    }
    let mut train_loader = data.train_loader;
    let out = trainer::train(
        &plan,
        &model,
        &ema_model,
        &diffusion,
        train_loader.as_mut(),
        &mut valid_loader,
        None,
        pg.as_ref(),
    )?;
    if let Some(pg) = pg {
        pg.shutdown()?;
    }
    if main {
        report(&out, model.train_flops_per_token(&cfg.model));
        if world > 1 {
            // Steps this process took (a resumed run starts past the checkpoint's).
            let steps = out.steps - out.resumed_from.unwrap_or(0);
            eprintln!(
                "gradients exchanged {} times in {steps} optimizer steps of {} micro-batches per rank ({} all-reduces)",
                out.comm.syncs,
                steps * plan.accumulate as u64,
                out.comm.collectives
            );
        }
    }
    Ok(out)
}

/// [`plan`] for this rank: its share of an epoch, the progress bar on rank 0 only, and
/// text8-crop when the training blocks are twice the model length.
fn rank_plan(
    cfg: &Config,
    run_dir: &std::path::Path,
    data: &TrainData,
    batch: usize,
    world: usize,
    valid_loader: &Loader,
    main: bool,
) -> Result<TrainPlan> {
    let mut plan = plan(
        cfg,
        run_dir,
        data.train_blocks.map(|n| (n / world / batch) as u64),
        valid_loader.global_batches() as u64,
    )?;
    plan.progress = main;
    if data.train_block_size == 2 * cfg.model.length {
        plan.crop = Some((cfg.model.length as i64, data.tokenizer.bos_id() as i64));
        if main {
            eprintln!(
                "{}: training blocks of {} are cropped to random windows of {} (BOS first)",
                cfg.data.train, data.train_block_size, cfg.model.length
            );
        }
    }
    Ok(plan)
}

/// What rank 0 samples at every validation (`eval.generate_samples`): `sampling.num_sample_log`
/// rows with the configured sampler, none for the autoregressive baseline (as the reference). A
/// sampler this model cannot run is reported now and skipped, rather than ending the run at its
/// first validation.
fn validation_samples(
    cfg: &Config,
    tokenizer: &Arc<dyn Tokenizer>,
    diffusion: &crate::diffusion::Diffusion,
    eval_batch: usize,
) -> Option<ValidationSamples> {
    let rows = cfg.sampling.num_sample_log;
    if !cfg.eval.generate_samples || rows == 0 || cfg.parameterization == Parameterization::Ar {
        return None;
    }
    let batch = rows.min(eval_batch.max(1)) as i64;
    let spec = SampleSpec::from_config(&cfg.sampling, batch, cfg.model.length as i64, None);
    if let Err(e) = spec.validate(diffusion) {
        eprintln!("eval.generate_samples: no samples at validation: {e:#}");
        return None;
    }
    Some(ValidationSamples {
        spec,
        rows,
        kind: if cfg.sampling.float64_gumbel {
            tch::Kind::Double
        } else {
            tch::Kind::Float
        },
        tokenizer: tokenizer.clone(),
    })
}

/// Rank 0's summary: throughput on stderr (tokens/s and the model FLOP/s they amount to, which
/// divided by the device's peak is the MFU), the validation numbers and checkpoint on stdout.
fn report(out: &TrainOutcome, flops_per_token: f64) {
    eprintln!(
        "trained {} steps, {:.0} tokens/s ({:.3} model TFLOP/s at {:.3e} FLOPs/token), last loss {:.4}",
        out.steps,
        out.tokens_per_s,
        out.tokens_per_s * flops_per_token / 1e12,
        flops_per_token,
        out.last_loss
    );
    if let Some(m) = &out.last_val {
        println!(
            "val nll {:.4} | val bpd {:.4} | val ppl {:.3}",
            m.nll(),
            m.bpd(),
            m.ppl()
        );
    }
    if let Some(p) = &out.last_checkpoint {
        println!("checkpoint {}", p.display());
    }
}

/// The training batches (a prepared split, or a stream with `data.streaming=true`), the prepared
/// validation split, and the tokenizer.
struct TrainData {
    train_loader: Box<dyn TrainBatches>,
    /// Blocks in the training split; unknown for a stream.
    train_blocks: Option<usize>,
    train_block_size: usize,
    valid: Arc<TokenBlocks>,
    tokenizer: Arc<dyn Tokenizer>,
}

impl TrainData {
    fn new(
        cfg: &Config,
        batch: usize,
        device: tch::Device,
        rank: usize,
        world: usize,
    ) -> Result<TrainData> {
        if !cfg.data.streaming {
            let data = setup::prepare_data(cfg)?;
            let loader = Loader::train(data.train.clone(), batch, cfg.seed)?.shard(rank, world)?;
            return Ok(TrainData {
                train_loader: Box::new(Prefetch::new(Box::new(loader), device)),
                train_blocks: Some(data.train.len()),
                train_block_size: data.train.block_size(),
                valid: data.valid,
                tokenizer: data.tokenizer.into(),
            });
        }
        let spec = setup::data_spec(cfg)?;
        let (valid, _, tokenizer) = prepare_one(&spec, &cfg.data.valid, Split::Validation)?;
        let stream =
            StreamLoader::train(&spec, &cfg.data.train, batch, cfg.seed)?.shard(rank, world)?;
        eprintln!(
            "streaming {}: documents are tokenised while training (no prepared file)",
            cfg.data.train
        );
        Ok(TrainData {
            train_block_size: stream.block_size(),
            train_loader: Box::new(Prefetch::new(Box::new(stream), device)),
            train_blocks: None,
            valid: Arc::new(valid),
            tokenizer: tokenizer.into(),
        })
    }
}

/// Maps the config's training knobs onto the loop's plain plan (exposed for tests).
pub fn plan(
    cfg: &Config,
    run_dir: &std::path::Path,
    train_batches: Option<u64>,
    valid_batches: u64,
) -> Result<TrainPlan> {
    let schedule = match cfg.lr_scheduler.target {
        LrSchedulerKind::ConstantWarmup => LrSchedule::ConstantWarmup {
            base_lr: cfg.optim.lr,
            num_warmup_steps: cfg.lr_scheduler.num_warmup_steps.unwrap_or(0),
        },
        LrSchedulerKind::CosineDecayWarmup => {
            let l = &cfg.lr_scheduler;
            LrSchedule::CosineDecayWarmup(CosineDecayWarmup::new(
                cfg.optim.lr,
                l.t_initial.context("lr_scheduler.t_initial unresolved")? as f64,
                l.lr_min.unwrap_or(0.0),
                l.warmup_t.context("lr_scheduler.warmup_t unresolved")? as f64,
                l.warmup_lr_init.unwrap_or(0.0),
                l.warmup_prefix.unwrap_or(true),
            ))
        }
    };
    let val_every_batches = match cfg.trainer.val_check_interval {
        CountOrFraction::Count(n) => n,
        CountOrFraction::Fraction(f) => match train_batches {
            Some(n) => ((n as f64) * f).floor().max(1.0) as u64,
            None => bail!(
                "trainer.val_check_interval={f} is a fraction of an epoch, which a stream (data.streaming=true) does not know; give a number of batches"
            ),
        },
    };
    let save_dir = PathBuf::from(
        cfg.checkpointing
            .save_dir
            .clone()
            .unwrap_or_else(|| run_dir.display().to_string()),
    );
    let resume_from = match (
        &cfg.checkpointing.resume_ckpt_path,
        cfg.checkpointing.resume_from_ckpt,
    ) {
        (Some(p), true) if std::path::Path::new(p).exists() => Some(PathBuf::from(p)),
        _ => None,
    };
    if cfg.trainer.max_steps == 0 {
        bail!("trainer.max_steps=0: nothing to train");
    }
    Ok(TrainPlan {
        max_steps: cfg.trainer.max_steps,
        accumulate: cfg
            .trainer
            .accumulate_grad_batches
            .context("trainer.accumulate_grad_batches unresolved")?
            .max(1),
        rows_per_batch: cfg
            .loader
            .batch_size
            .context("loader.batch_size unresolved")?
            * cfg.trainer.devices.unwrap_or(1)
            * cfg.trainer.num_nodes.max(1),
        grad_clip: cfg.trainer.gradient_clip_val.filter(|v| *v > 0.0),
        schedule,
        adamw: AdamWConfig {
            lr: cfg.optim.lr,
            beta1: cfg.optim.beta1,
            beta2: cfg.optim.beta2,
            eps: cfg.optim.eps,
            weight_decay: cfg.optim.weight_decay,
        },
        ema_decay: cfg.training.ema,
        seed: cfg.seed,
        val_every_batches,
        val_batches: cfg.trainer.limit_val_batches.of(valid_batches) as usize,
        log_every: cfg.trainer.log_every_n_steps,
        ckpt_every: cfg
            .callbacks
            .checkpoint_every_n_steps
            .as_ref()
            .map_or(0, |c| c.every_n_train_steps),
        ckpt_dir: save_dir.join("checkpoints"),
        keep_best: cfg.callbacks.checkpoint_monitor.is_some(),
        resume_from,
        metrics_path: run_dir.join("metrics.jsonl"),
        tb_dir: run_dir.join("tb"),
        samples: None,
        config_yaml: cfg.to_yaml(),
        progress: true,
        bucket_mb: cfg.trainer.bucket_cap_mb,
        crop: None,
        profile: cfg.trainer.profile.then(|| run_dir.join("trace.json")),
    })
}
