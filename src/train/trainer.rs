//! The training loop, top to bottom, in the order Lightning runs the reference's `Diffusion`
//! module: per optimizer step, `training_step` (`accumulate` micro-batches of loss/accumulate
//! backward), gradient clipping, AdamW, EMA update, then `validation_step` and the checkpoint
//! callback at their intervals. How the draws are seeded is in [`super::seeds`].
//!
//! Data parallel (`dist` given): each rank holds a shard of every batch, gradients are averaged
//! once per optimizer step (not per micro-batch), validation sums are added up across ranks, and
//! only rank 0 writes checkpoints, metrics (`metrics.jsonl` and the TensorBoard event file) and
//! the progress bar, and draws the validation samples.

use super::lr::LrSchedule;
use super::optim::{AdamWConfig, clip_grad_norm};
use super::samples::ValidationSamples;
use super::seeds::{reseed_micro, reseed_validation, row_share};
use super::state::TrainState;
use crate::data::loader::{Loader, TrainBatches};
use crate::diffusion::Diffusion;
use crate::dist::ProcessGroup;
use crate::dist::ddp::{self, GradReducer};
use crate::eval::metrics::NllMeter;
use crate::model::{Model, Rows};
use crate::profile::StepProfile;
use crate::tb::{self, EventWriter};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

/// Everything the loop needs, as plain values (the command layer maps the config onto it).
#[derive(Clone, Debug)]
pub struct TrainPlan {
    pub max_steps: u64,
    pub accumulate: usize,
    /// Rows of the data one loader batch stands for over all ranks (`batch_size x processes`):
    /// the unit of the loader position a checkpoint records, so that a run resumes at the same
    /// place with another number of processes.
    pub rows_per_batch: usize,
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
    /// Where rank 0 writes this process's TensorBoard event file (`<run dir>/tb`).
    pub tb_dir: PathBuf,
    /// Samples drawn and logged at every validation (`eval.generate_samples`; rank 0 only).
    pub samples: Option<ValidationSamples>,
    pub config_yaml: String,
    pub progress: bool,
    /// Gradient bucket size for data-parallel all-reduce (MB).
    pub bucket_mb: f64,
    /// text8-crop: training blocks twice this length are cut to a random window of it whose first
    /// token becomes this BOS id (`(model.length, bos)`; the reference's `_maybe_sub_sample`).
    pub crop: Option<(i64, i64)>,
    /// `trainer.profile`: where a few recorded steps' Chrome trace goes.
    pub profile: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub steps: u64,
    pub resumed_from: Option<u64>,
    pub last_val: Option<NllMeter>,
    pub last_checkpoint: Option<PathBuf>,
    pub tokens_per_s: f64,
    pub last_loss: f64,
    /// Data parallelism: what the gradient exchange cost over this process's steps.
    pub comm: Comm,
}

/// Gradient exchanges of a data-parallel run: `syncs` rounds (one per optimizer step, however
/// many micro-batches it accumulates) of `collectives` all-reduces in all (one per bucket).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Comm {
    pub syncs: u64,
    pub collectives: u64,
}

/// Runs `plan` from scratch or from `plan.resume_from`, alone or as one rank of `dist` (loaders
/// already sharded, weights already broadcast); `stop_after` ends early (as an interruption
/// would) after that global step, with a checkpoint.
#[allow(clippy::too_many_arguments)]
pub fn train(
    plan: &TrainPlan,
    model: &Model,
    ema_model: &Model,
    diffusion: &Diffusion,
    train_loader: &mut dyn TrainBatches,
    valid_loader: &mut Loader,
    stop_after: Option<u64>,
    dist: Option<&ProcessGroup>,
) -> Result<TrainOutcome> {
    let params = model.params();
    let reducer = dist.map(|_| GradReducer::new(&params, plan.bucket_mb));
    let mut state = TrainState::new(params, plan.adamw, plan.ema_decay);
    let mut resumed_from = None;
    if let Some(path) = &plan.resume_from {
        state.resume(path, plan.accumulate, plan.rows_per_batch, train_loader)?;
        resumed_from = Some(state.step);
        tracing::info!(step = state.step, path = %path.display(), "resumed");
    }
    let main = dist.is_none_or(|d| d.is_main());
    let log = RunLog::open(plan, main, state.step)?;
    let mut trainer = Trainer {
        plan,
        model,
        ema_model,
        diffusion,
        train_loader,
        valid_loader,
        dist,
        main,
        reducer,
        state,
        log,
        comm: Comm::default(),
    };
    let end = stop_after.map_or(plan.max_steps, |s| s.min(plan.max_steps));
    Ok(TrainOutcome {
        resumed_from,
        ..trainer.fit(end)?
    })
}

/// One run's models, loaders and state, borrowed for the length of [`train`].
struct Trainer<'a> {
    plan: &'a TrainPlan,
    model: &'a Model,
    ema_model: &'a Model,
    diffusion: &'a Diffusion,
    train_loader: &'a mut dyn TrainBatches,
    valid_loader: &'a mut Loader,
    dist: Option<&'a ProcessGroup>,
    /// Rank 0 (or the only process): the one that writes checkpoints.
    main: bool,
    reducer: Option<GradReducer>,
    state: TrainState,
    log: RunLog,
    comm: Comm,
}

impl Trainer<'_> {
    /// Optimizer steps until global step `end`, each followed by validation and the checkpoint
    /// callback when due; the EMA model holds the final EMA weights afterwards.
    fn fit(&mut self, end: u64) -> Result<TrainOutcome> {
        let plan = self.plan;
        // A run resumed at its end has nothing left to do; its checkpoint is the one it came from.
        let mut last_checkpoint = if self.state.step >= end {
            plan.resume_from.clone()
        } else {
            None
        };
        let mut last_val = None;
        let mut last_loss = f64::NAN;
        let mut profile = plan.profile.clone().map(StepProfile::new);
        while self.state.step < end {
            let lr = plan.schedule.lr_at(self.state.step);
            let batches_before = self.state.batches;
            let step = self.state.step;
            let (loss, grad_norm) = match profile.as_mut() {
                Some(p) => p.step(|| self.train_step(lr))??,
                None => self.train_step(lr)?,
            };
            self.log.queue(Pending {
                step,
                lr,
                loss,
                grad_norm,
            });
            let val_due = self.validation_due(batches_before);
            let ckpt_due = self.checkpoint_due(end);
            // The one host sync: losses and norms are read at logging steps and before anything
            // is written, so a non-finite loss stops the run before a checkpoint can hold it.
            if self.log.due(self.state.step) || val_due || ckpt_due.is_some() {
                let intact = last_checkpoint.as_ref().or(plan.resume_from.as_ref());
                if let Some(loss) = self.log.flush(intact)? {
                    last_loss = loss;
                }
            }
            if val_due {
                last_val = Some(self.validation_step()?);
            }
            if let Some(periodic) = ckpt_due {
                last_checkpoint = Some(self.checkpoint_callback(periodic)?);
            }
        }
        if let Some(p) = profile {
            p.finish()?;
        }
        let tokens_per_s = self.log.finish();
        // The EMA model reflects the final weights for whoever samples next.
        self.ema_model.assign(self.state.ema.shadow())?;
        Ok(TrainOutcome {
            steps: self.state.step,
            resumed_from: None, // [`train`] knows where it resumed
            last_val,
            last_checkpoint,
            tokens_per_s,
            last_loss,
            comm: self.comm,
        })
    }

    /// One optimizer step: the loss summed over its micro-batches and the gradient norm (when
    /// clipping), both left on the device.
    fn train_step(&mut self, lr: f64) -> Result<(Tensor, Option<Tensor>)> {
        let loss = self.training_step(lr)?;
        Ok((loss, self.optimizer_step()?))
    }

    /// `training_step` over the step's micro-batches, then the one collective of the step:
    /// gradients averaged over ranks, the loss riding along. Returns the loss summed over the
    /// micro-batches, on the device (read when logged).
    fn training_step(&mut self, lr: f64) -> Result<Tensor> {
        self.state.opt.set_lr(lr);
        self.state.opt.zero_grad()?;
        // Summed on the device: one host sync per optimizer step, not per micro-batch.
        let mut loss_sum: Option<Tensor> = None;
        for micro in 0..self.plan.accumulate {
            let this = self.micro_batch(micro)?;
            loss_sum = Some(match loss_sum {
                Some(acc) => acc + this,
                None => this,
            });
        }
        let loss_sum = loss_sum.context("accumulate_grad_batches is 0")?;
        let loss_sum = match (self.dist, &self.reducer) {
            (Some(pg), Some(r)) => {
                let before = pg.collectives();
                let mean = r.reduce(pg, &self.state.params, &loss_sum)?;
                self.comm.syncs += 1;
                self.comm.collectives += pg.collectives() - before;
                mean
            }
            _ => loss_sum,
        };
        Ok(loss_sum)
    }

    /// Loss and backward of one micro-batch (scaled by 1/accumulate, as Lightning does); returns
    /// the unscaled loss, detached.
    fn micro_batch(&mut self, micro: usize) -> Result<Tensor> {
        let (plan, step) = (self.plan, self.state.step);
        reseed_micro(plan.seed, step, micro);
        let batch = self.train_loader.next_train_batch()?;
        let (x, mask) = maybe_crop(plan.crop, batch.x, batch.attention_mask)?;
        let (b, l) = x.size2()?;
        let share = row_share(self.dist, plan.seed, step, micro);
        let parts = self
            .model
            .batch_loss(self.diffusion, &x, &mask, true, share)?;
        (&parts.loss / plan.accumulate as f64).backward();
        let world = self.dist.map_or(1, |d| d.world());
        self.log.tokens += (b * l * world as i64) as f64;
        Ok(parts.loss.detach())
    }

    /// Gradient clipping, AdamW and the EMA update, then the counters move on. Returns the
    /// gradient norm before clipping, on the device (none without clipping).
    fn optimizer_step(&mut self) -> Result<Option<Tensor>> {
        let grad_norm = match self.plan.grad_clip {
            Some(max) => clip_grad_norm(&self.state.params, max)?,
            None => None,
        };
        self.state.opt.step()?;
        self.state.ema.update(&self.state.params)?;
        self.state.batches += self.plan.accumulate as u64;
        self.state.step += 1;
        Ok(grad_norm)
    }

    /// Due when this step's micro-batches crossed a multiple of `val_every_batches`.
    fn validation_due(&self, batches_before: u64) -> bool {
        let every = self.plan.val_every_batches;
        every > 0 && self.state.batches / every > batches_before / every
    }

    /// `validation_step` on the EMA weights; a new best NLL writes `best.safetensors`.
    fn validation_step(&mut self) -> Result<NllMeter> {
        let plan = self.plan;
        self.ema_model.assign(self.state.ema.shadow())?;
        let m = validate(
            self.ema_model,
            self.diffusion,
            self.valid_loader,
            plan.val_batches,
            plan.seed,
            self.dist,
        )?;
        self.log.validation(self.state.step, &m)?;
        if let Some(s) = plan.samples.as_ref().filter(|_| self.main) {
            let texts = s.draw(self.ema_model, self.diffusion)?;
            self.log.samples(self.state.step, &texts)?;
        }
        if plan.keep_best && self.state.best.is_none_or(|b| m.nll() < b) {
            self.state.best = Some(m.nll());
            if self.main {
                self.save(&plan.ckpt_dir.join("best.safetensors"))?;
            }
        }
        Ok(m)
    }

    /// Whether the checkpoint callback is due after this step: `Some(true)` every `ckpt_every`
    /// steps (`step-N` and `last`), `Some(false)` at the end (`last` only).
    fn checkpoint_due(&self, end: u64) -> Option<bool> {
        let (plan, step) = (self.plan, self.state.step);
        let periodic = plan.ckpt_every > 0 && step.is_multiple_of(plan.ckpt_every);
        (periodic || step == end).then_some(periodic)
    }

    /// The checkpoint callback. Returns `last`'s path (every rank; only rank 0 writes it).
    fn checkpoint_callback(&self, periodic: bool) -> Result<PathBuf> {
        let (plan, step) = (self.plan, self.state.step);
        let last = plan.ckpt_dir.join("last.safetensors");
        if self.main {
            if periodic {
                self.save(&plan.ckpt_dir.join(format!("step-{step:07}.safetensors")))?;
            }
            self.save(&last)?;
        }
        Ok(last)
    }

    fn save(&self, path: &Path) -> Result<()> {
        let loader = self.train_loader.state();
        let plan = self.plan;
        self.state.save(path, loader, plan)?;
        tracing::info!(step = self.state.step, path = %path.display(), "checkpoint written");
        Ok(())
    }
}

/// A non-finite loss stops the run at the next read, before any checkpoint can hold it.
fn ensure_finite(loss: f64, step: u64, lr: f64, last_checkpoint: Option<&PathBuf>) -> Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    bail!(
        "training loss is {loss} at step {step} (lr {lr:.3e}); stopped without writing a checkpoint, so the last one ({}) is intact — lower optim.lr or check the data",
        last_checkpoint.map_or("none yet".to_string(), |p| p.display().to_string())
    )
}

/// A step whose loss and gradient norm are still on the device.
struct Pending {
    /// The step's index before it ran (what an error names).
    step: u64,
    lr: f64,
    /// Summed over the step's micro-batches.
    loss: Tensor,
    grad_norm: Option<Tensor>,
}

/// Where the loop reports: the progress bar and, on rank 0, `metrics.jsonl` and the TensorBoard
/// event file (the other ranks write to a sink and no event file, so the loop reads the same).
/// Both get the same numbers at the same steps; TensorBoard keeps them as f32.
struct RunLog {
    metrics: Box<dyn Write>,
    tb: Option<EventWriter>,
    bar: indicatif::ProgressBar,
    started: Instant,
    /// Tokens trained on by all ranks together, for tokens/s.
    tokens: f64,
    main: bool,
    log_every: u64,
    accumulate: usize,
    pending: Vec<Pending>,
}

impl RunLog {
    fn open(plan: &TrainPlan, main: bool, step: u64) -> Result<RunLog> {
        let tb = if main {
            Some(open_board(plan, step)?)
        } else {
            None
        };
        let metrics: Box<dyn Write> = if main {
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
        Ok(RunLog {
            metrics,
            tb,
            bar: progress_bar(plan.progress && main, plan.max_steps, step),
            started: Instant::now(),
            tokens: 0.0,
            main,
            log_every: plan.log_every,
            accumulate: plan.accumulate,
            pending: Vec::new(),
        })
    }

    fn tokens_per_s(&self) -> f64 {
        self.tokens / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// Keeps a finished step for the next [`RunLog::flush`]; only the bar moves now.
    fn queue(&mut self, p: Pending) {
        self.bar.set_position(p.step + 1);
        self.pending.push(p);
    }

    /// Whether global step `step` (just finished) is a logging step.
    fn due(&self, step: u64) -> bool {
        self.log_every > 0 && step.is_multiple_of(self.log_every)
    }

    /// Reads the queued losses and norms in one transfer, stops at the first non-finite loss,
    /// and logs the logging steps among them. Returns the last step's mean loss.
    fn flush(&mut self, intact: Option<&PathBuf>) -> Result<Option<f64>> {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return Ok(None);
        }
        let read = |ts: Vec<Tensor>| -> Result<Vec<f64>> {
            let all = Tensor::stack(&ts, 0).to_kind(tch::Kind::Double);
            Ok(Vec::<f64>::try_from(all.to_device(tch::Device::Cpu))?)
        };
        let losses = read(pending.iter().map(|p| p.loss.reshape([])).collect())?;
        let norms: Vec<Tensor> = pending
            .iter()
            .filter_map(|p| p.grad_norm.as_ref())
            .map(|n| n.reshape([]))
            .collect();
        let norms = if norms.len() == pending.len() {
            read(norms)?
        } else {
            vec![f64::NAN; pending.len()]
        };
        let tps = self.tokens_per_s();
        let mut last = f64::NAN;
        for ((p, loss_sum), grad_norm) in pending.iter().zip(losses).zip(norms) {
            let loss = loss_sum / self.accumulate as f64;
            ensure_finite(loss, p.step, p.lr, intact)?;
            let (done, lr) = (p.step + 1, p.lr);
            if self.main && self.due(done) {
                tracing::info!(
                    step = done,
                    loss,
                    lr,
                    grad_norm,
                    tokens_per_s = tps,
                    "train"
                );
                writeln!(
                    self.metrics,
                    "{}",
                    json!({"step": done, "train/loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tps})
                )?;
                if let Some(tb) = &mut self.tb {
                    tb.scalar("train/loss", done, loss)?;
                    tb.scalar("train/lr", done, lr)?;
                    // Not computed without clipping (null in metrics.jsonl too).
                    if grad_norm.is_finite() {
                        tb.scalar("train/grad_norm", done, grad_norm)?;
                    }
                    tb.scalar("train/tokens_per_s", done, tps)?;
                }
            }
            last = loss;
        }
        // Visible to a TensorBoard watching the run from every logging step on.
        if let Some(tb) = &mut self.tb {
            tb.flush()?;
        }
        let lr = pending.last().map_or(f64::NAN, |p| p.lr);
        self.bar
            .set_message(format!("loss {last:.4} lr {lr:.2e} {tps:.0} tok/s"));
        Ok(Some(last))
    }

    fn validation(&mut self, step: u64, m: &NllMeter) -> Result<()> {
        let (nll, bpd, ppl) = (m.nll(), m.bpd(), m.ppl());
        if self.main {
            tracing::info!(step, nll, bpd, ppl, "validation (EMA weights)");
        }
        self.bar.println(format!(
            "step {step}: val nll {nll:.4} bpd {bpd:.4} ppl {ppl:.3}"
        ));
        writeln!(
            self.metrics,
            "{}",
            json!({"step": step, "val/nll": nll, "val/bpd": bpd, "val/ppl": ppl})
        )?;
        if let Some(tb) = &mut self.tb {
            tb.scalar("val/nll", step, nll)?;
            tb.scalar("val/bpd", step, bpd)?;
            tb.scalar("val/ppl", step, ppl)?;
            tb.flush()?;
        }
        Ok(())
    }

    fn samples(&mut self, step: u64, texts: &[String]) -> Result<()> {
        if let Some(tb) = &mut self.tb {
            tb.text("samples", step, &tb::samples_markdown(texts))?;
            tb.flush()?;
        }
        Ok(())
    }

    /// Clears the bar; returns the run's tokens per second.
    fn finish(&self) -> f64 {
        self.bar.finish_and_clear();
        self.tokens_per_s()
    }
}

/// Rank 0's event file for this process: a session start, then the resolved config. A run
/// resumed from a checkpoint at `step` writes a new file holding only later steps (start and
/// config at `step + 1`), so no (tag, step) is in two files when the first process stopped at
/// its checkpoint. After a crash, the steps it logged past the checkpoint are logged again; the
/// second start tells TensorBoard to drop the first file's copies.
fn open_board(plan: &TrainPlan, step: u64) -> Result<EventWriter> {
    let mut tb = EventWriter::create(&plan.tb_dir)?;
    // A checkpoint is only written after a step, so step 0 is a fresh run.
    let first = if step == 0 { 0 } else { step + 1 };
    tb.session_start(first)?;
    tb.text("config", first, &tb::code_block(&plan.config_yaml))?;
    tb.flush()?;
    Ok(tb)
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

/// Token-weighted NELBO over the first `max_batches` global validation batches, with draws fixed
/// by the seed and the batch so that successive validations are comparable. With `dist`, over
/// this rank's rows of those batches, summed over ranks: the same number as one process gives
/// with the same global eval batch.
pub fn validate(
    model: &Model,
    diffusion: &Diffusion,
    loader: &mut Loader,
    max_batches: usize,
    seed: u64,
    dist: Option<&ProcessGroup>,
) -> Result<NllMeter> {
    loader.reset();
    let mut meter = NllMeter::default();
    tch::no_grad(|| -> Result<()> {
        for _ in 0..max_batches {
            let Some((batch, place)) = loader.next_eval_batch() else {
                break;
            };
            reseed_validation(seed, place.index);
            let rows = Rows::Eval(&place);
            let parts =
                model.batch_loss(diffusion, &batch.x, &batch.attention_mask, false, rows)?;
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
