//! The training loop, top to bottom, in the order Lightning runs the reference's `Diffusion`
//! module: per optimizer step, `accumulate` micro-batches of loss/accumulate backward, gradient
//! clipping, AdamW, EMA update, then validation and checkpoints at their intervals.
//!
//! Randomness is a function of (seed, step, micro-batch): every micro-batch reseeds libtorch's
//! generators, so a run resumed from a checkpoint draws exactly what the uninterrupted run drew,
//! with no generator state to save, and data-parallel ranks draw the rows of one global batch.
//!
//! Data parallel ([`train_dp`]): each rank holds a shard of every batch, gradients are averaged
//! once per optimizer step (not per micro-batch), validation sums are added up across ranks, and
//! only rank 0 writes checkpoints, metrics and the progress bar.

use super::ema::Ema;
use super::lr::LrSchedule;
use super::optim::{AdamW, AdamWConfig, clip_grad_norm};
use crate::checkpoint;
use crate::data::loader::{Loader, LoaderState, TrainBatches};
use crate::diffusion::Diffusion;
use crate::dist::ProcessGroup;
use crate::dist::ddp::{self, GradReducer};
use crate::eval::metrics::NllMeter;
use crate::model::{Model, RowShare};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything the loop needs, as plain values (the command layer maps the config onto it).
#[derive(Clone, Debug)]
pub struct TrainPlan {
    pub max_steps: u64,
    pub accumulate: usize,
    pub grad_clip: Option<f64>,
    pub schedule: LrSchedule,
    pub adamw: AdamWConfig,
    pub ema_decay: f64,
    pub seed: u64,
    /// Validate after every this many training batches (Lightning's `val_check_interval`); 0: never.
    pub val_every_batches: u64,
    pub val_batches: usize,
    pub log_every: u64,
    /// Write `step-N` and `last` checkpoints every this many optimizer steps; 0: only at the end.
    pub ckpt_every: u64,
    pub ckpt_dir: PathBuf,
    /// Keep `best.safetensors` by validation NLL (the reference's `checkpoint_monitor`).
    pub keep_best: bool,
    pub resume_from: Option<PathBuf>,
    pub metrics_path: PathBuf,
    pub config_yaml: String,
    pub progress: bool,
    /// Gradient bucket size for data-parallel all-reduce (MB).
    pub bucket_mb: f64,
    /// text8-crop: training blocks twice this length are cut to a random window of it whose first
    /// token becomes this BOS id (`(model.length, bos)`; the reference's `_maybe_sub_sample`).
    pub crop: Option<(i64, i64)>,
}

#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub steps: u64,
    pub resumed_from: Option<u64>,
    pub last_val: Option<NllMeter>,
    pub last_checkpoint: Option<PathBuf>,
    pub tokens_per_s: f64,
    pub last_loss: f64,
}

/// Seeds the generators for one optimizer step (or a validation pass) of the run.
fn reseed(seed: u64, stream: u64, step: u64) {
    tch::manual_seed(seed_of(seed, stream, step));
}

fn seed_of(seed: u64, stream: u64, step: u64) -> i64 {
    let s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ stream.wrapping_mul(0xBF58_476D_1CE4_E5B9)
        ^ step;
    (s & 0x7FFF_FFFF_FFFF_FFFF) as i64
}

/// Micro-batch 0 keeps the step's seed (so runs without accumulation draw what they always
/// drew); later micro-batches get streams of their own.
fn reseed_micro(seed: u64, step: u64, micro: usize) {
    if micro == 0 {
        reseed(seed, TRAIN_STREAM, step);
    } else {
        reseed(seed, MICRO_STREAM + micro as u64, step);
    }
}

const TRAIN_STREAM: u64 = 1;
const VAL_STREAM: u64 = 2;
/// Per-rank randomness (dropout) of data-parallel replicas.
const RANK_STREAM: u64 = 3;
/// Micro-batches 1, 2, ... use streams `MICRO_STREAM + micro`.
const MICRO_STREAM: u64 = 1 << 32;

/// The rows a rank holds at `(step, micro)`, `None` outside data parallelism.
fn row_share(dist: Option<&ProcessGroup>, seed: u64, step: u64, micro: usize) -> Option<RowShare> {
    let pg = dist?;
    let key = step
        .wrapping_mul(1 << 20)
        .wrapping_add(micro as u64)
        .wrapping_mul(1 << 12)
        .wrapping_add(pg.rank() as u64);
    Some(RowShare {
        rank: pg.rank() as i64,
        world: pg.world() as i64,
        rank_seed: seed_of(seed, RANK_STREAM, key),
    })
}

/// Runs `plan` from scratch or from `plan.resume_from`; `stop_after` ends early (as an
/// interruption would) after that global step, with a checkpoint.
pub fn train(
    plan: &TrainPlan,
    model: &Model,
    ema_model: &Model,
    diffusion: &Diffusion,
    train_loader: &mut dyn TrainBatches,
    valid_loader: &mut Loader,
    stop_after: Option<u64>,
) -> Result<TrainOutcome> {
    train_dp(
        plan,
        model,
        ema_model,
        diffusion,
        train_loader,
        valid_loader,
        stop_after,
        None,
    )
}

/// [`train`] as one rank of `dist` (loaders already sharded, weights already broadcast).
#[allow(clippy::too_many_arguments)]
pub fn train_dp(
    plan: &TrainPlan,
    model: &Model,
    ema_model: &Model,
    diffusion: &Diffusion,
    train_loader: &mut dyn TrainBatches,
    valid_loader: &mut Loader,
    stop_after: Option<u64>,
    dist: Option<&ProcessGroup>,
) -> Result<TrainOutcome> {
    let main = dist.is_none_or(|d| d.is_main());
    let world = dist.map_or(1, |d| d.world());
    let params = model.params();
    let reducer = dist.map(|_| GradReducer::new(&params, plan.bucket_mb));
    let mut opt = AdamW::new(&params, plan.adamw);
    let mut ema = Ema::new(&params, plan.ema_decay);
    let mut step: u64 = 0;
    let mut batches: u64 = 0;
    let mut best: Option<f64> = None;
    let mut resumed_from = None;

    if let Some(path) = &plan.resume_from {
        let ckpt = checkpoint::load(path)?;
        checkpoint::load_into(&params, "", &ckpt)
            .with_context(|| format!("resuming from {}", path.display()))?;
        let all = ckpt.tensor_list();
        opt.load_state(&all)?;
        ema.load_state(&all)?;
        step = ckpt.state["global_step"]
            .as_u64()
            .context("checkpoint state lacks global_step")?;
        batches = ckpt.state["batches"]
            .as_u64()
            .unwrap_or(step * plan.accumulate as u64);
        best = ckpt.state["best_val_nll"].as_f64();
        let ls: LoaderState = serde_json::from_value(ckpt.state["loader"].clone())
            .context("checkpoint loader state")?;
        train_loader.restore(ls)?;
        resumed_from = Some(step);
        tracing::info!(step, path = %path.display(), "resumed");
    }

    // Only rank 0 writes; the others keep a sink so the loop reads the same.
    let mut metrics: Box<dyn Write> = if main {
        std::fs::create_dir_all(&plan.ckpt_dir)
            .with_context(|| format!("creating {}", plan.ckpt_dir.display()))?;
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&plan.metrics_path)
                .with_context(|| format!("opening {}", plan.metrics_path.display()))?,
        )
    } else {
        Box::new(std::io::sink())
    };

    let end = stop_after.map_or(plan.max_steps, |s| s.min(plan.max_steps));
    let bar = progress_bar(plan.progress && main, plan.max_steps, step);
    let started = Instant::now();
    let mut tokens_done: f64 = 0.0;
    let mut last_val = None;
    // A run resumed at its end has nothing left to do; its checkpoint is the one it came from.
    let mut last_checkpoint = if step >= end {
        plan.resume_from.clone()
    } else {
        None
    };
    let mut last_loss = f64::NAN;

    while step < end {
        let lr = plan.schedule.lr_at(step);
        opt.set_lr(lr);
        opt.zero_grad();
        // Summed on the device: one host sync per optimizer step, not per micro-batch.
        let mut loss_sum: Option<tch::Tensor> = None;
        for micro in 0..plan.accumulate {
            reseed_micro(plan.seed, step, micro);
            let batch = train_loader.next_train_batch()?;
            let (x, mask) = maybe_crop(plan.crop, batch.x, batch.attention_mask)?;
            let (b, l) = x.size2()?;
            let share = row_share(dist, plan.seed, step, micro);
            let parts = model.batch_loss_rows(diffusion, &x, &mask, true, share)?;
            (&parts.loss / plan.accumulate as f64).backward();
            let this = parts.loss.detach();
            loss_sum = Some(match loss_sum {
                Some(acc) => acc + this,
                None => this,
            });
            tokens_done += (b * l * world as i64) as f64;
        }
        let loss_sum = loss_sum.context("accumulate_grad_batches is 0")?;
        // The one collective of the step: gradients averaged over ranks, the loss riding along.
        let loss_sum = match (dist, &reducer) {
            (Some(pg), Some(r)) => r.reduce(pg, &params, &loss_sum)?,
            _ => f64::try_from(&loss_sum)?,
        };
        let loss = loss_sum / plan.accumulate as f64;
        if !loss.is_finite() {
            bail!(
                "training loss is {loss} at step {step} (lr {lr:.3e}); stopped without writing a checkpoint, so the last one ({}) is intact — lower optim.lr or check the data",
                last_checkpoint
                    .as_ref()
                    .or(plan.resume_from.as_ref())
                    .map_or("none yet".to_string(), |p: &PathBuf| p
                        .display()
                        .to_string())
            );
        }
        let grad_norm = match plan.grad_clip {
            Some(max) => clip_grad_norm(&params, max),
            None => f64::NAN,
        };
        opt.step();
        ema.update(&params);
        let batches_before = batches;
        batches += plan.accumulate as u64;
        step += 1;
        last_loss = loss;

        let save_at = |path: &Path, best: Option<f64>| {
            let loader = train_loader.state();
            save(
                plan,
                path,
                &params,
                &opt,
                &ema,
                &Snapshot {
                    step,
                    batches,
                    best,
                    loader,
                },
            )
        };
        let tps = tokens_done / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(step);
        bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {:.0} tok/s", tps));
        if main && plan.log_every > 0 && step.is_multiple_of(plan.log_every) {
            tracing::info!(step, loss, lr, grad_norm, tokens_per_s = tps, "train");
            writeln!(
                metrics,
                "{}",
                json!({"step": step, "train/loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tps})
            )?;
        }

        let validate_now = plan.val_every_batches > 0
            && batches / plan.val_every_batches > batches_before / plan.val_every_batches;
        if validate_now {
            ema_model.assign(ema.shadow())?;
            let m = validate_dp(
                ema_model,
                diffusion,
                valid_loader,
                plan.val_batches,
                plan.seed,
                dist,
            )?;
            if main {
                tracing::info!(
                    step,
                    nll = m.nll(),
                    bpd = m.bpd(),
                    ppl = m.ppl(),
                    "validation (EMA weights)"
                );
            }
            bar.println(format!(
                "step {step}: val nll {:.4} bpd {:.4} ppl {:.3}",
                m.nll(),
                m.bpd(),
                m.ppl()
            ));
            writeln!(
                metrics,
                "{}",
                json!({"step": step, "val/nll": m.nll(), "val/bpd": m.bpd(), "val/ppl": m.ppl()})
            )?;
            if plan.keep_best && best.is_none_or(|b| m.nll() < b) {
                best = Some(m.nll());
                if main {
                    save_at(&plan.ckpt_dir.join("best.safetensors"), best)?;
                }
            }
            last_val = Some(m);
        }

        let periodic = plan.ckpt_every > 0 && step.is_multiple_of(plan.ckpt_every);
        if periodic || step == end {
            let path = plan.ckpt_dir.join("last.safetensors");
            if main {
                if periodic {
                    let path = plan.ckpt_dir.join(format!("step-{step:07}.safetensors"));
                    save_at(&path, best)?;
                }
                save_at(&path, best)?;
            }
            last_checkpoint = Some(path);
        }
    }
    bar.finish_and_clear();
    let tokens_per_s = tokens_done / started.elapsed().as_secs_f64().max(1e-9);
    // The EMA model reflects the final weights for whoever samples next.
    ema_model.assign(ema.shadow())?;
    Ok(TrainOutcome {
        steps: step,
        resumed_from,
        last_val,
        last_checkpoint,
        tokens_per_s,
        last_loss,
    })
}

/// One window start per batch, drawn from the step's reseeded generator (so a resumed run crops
/// where the straight run cropped), as the reference draws one `np.random.choice` per batch.
fn maybe_crop(
    crop: Option<(i64, i64)>,
    x: tch::Tensor,
    mask: tch::Tensor,
) -> Result<(tch::Tensor, tch::Tensor)> {
    let Some((length, bos)) = crop else {
        return Ok((x, mask));
    };
    let (_, l) = x.size2()?;
    if l == length {
        return Ok((x, mask));
    }
    if l != 2 * length {
        bail!(
            "text8-crop expects training blocks of {} tokens, got {l}",
            2 * length
        );
    }
    let start =
        tch::Tensor::randint(length, [1], (tch::Kind::Int64, tch::Device::Cpu)).int64_value(&[0]);
    Ok(crate::diffusion::loss::crop(&x, &mask, start, length, bos))
}

/// Token-weighted NELBO over the first `max_batches` validation batches, with draws fixed by the
/// seed so that successive validations are comparable.
pub fn validate(
    model: &Model,
    diffusion: &Diffusion,
    loader: &mut Loader,
    max_batches: usize,
    seed: u64,
) -> Result<NllMeter> {
    validate_dp(model, diffusion, loader, max_batches, seed, None)
}

/// [`validate`] over this rank's shard of the validation split, summed over ranks.
pub fn validate_dp(
    model: &Model,
    diffusion: &Diffusion,
    loader: &mut Loader,
    max_batches: usize,
    seed: u64,
    dist: Option<&ProcessGroup>,
) -> Result<NllMeter> {
    reseed(seed, VAL_STREAM, 0);
    let share = row_share(dist, seed, 0, 0);
    loader.reset();
    let mut meter = NllMeter::default();
    tch::no_grad(|| -> Result<()> {
        for _ in 0..max_batches {
            let Some(batch) = loader.next_batch() else {
                break;
            };
            let parts =
                model.batch_loss_rows(diffusion, &batch.x, &batch.attention_mask, false, share)?;
            meter.update(&parts.nlls, &parts.token_mask);
        }
        Ok(())
    })?;
    if let Some(pg) = dist {
        let device = model.vs.device();
        meter = ddp::reduce_meter(pg, &meter, device)?;
    }
    if meter.tokens == 0.0 {
        bail!("the validation split yields no batch");
    }
    Ok(meter)
}

/// The loop's counters at a checkpoint: with the tensors, all a resume needs.
struct Snapshot {
    step: u64,
    batches: u64,
    best: Option<f64>,
    loader: LoaderState,
}

fn save(
    plan: &TrainPlan,
    path: &Path,
    params: &[(String, tch::Tensor)],
    opt: &AdamW,
    ema: &Ema,
    snap: &Snapshot,
) -> Result<()> {
    let Snapshot {
        step,
        batches,
        best,
        ref loader,
    } = *snap;
    let mut tensors: Vec<(String, tch::Tensor)> = params
        .iter()
        .map(|(n, t)| (n.clone(), t.detach()))
        .collect();
    tensors.extend(ema.state_tensors());
    tensors.extend(opt.state_tensors());
    let state = json!({
        "global_step": step,
        "batches": batches,
        "best_val_nll": best,
        "loader": loader,
        "seed": plan.seed,
    });
    checkpoint::save(path, &tensors, &state, &plan.config_yaml)?;
    tracing::info!(step, path = %path.display(), "checkpoint written");
    Ok(())
}

fn progress_bar(enabled: bool, total: u64, pos: u64) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("static template"),
    );
    bar.set_position(pos);
    bar
}
