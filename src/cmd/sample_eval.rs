//! `mdlm sample-eval`: draw samples from a checkpoint, print them, write them as JSONL and as a
//! readable text file, report their cost (and, when asked, their generative perplexity). The
//! printed samples and the generative perplexity also go to TensorBoard (`<run dir>/tb`), at the
//! checkpoint's training step.

use super::ranks::{self, Role};
use super::setup::{self, Run};
use crate::config::{self, Config};
use crate::data::Tokenizer;
use crate::diffusion::Diffusion;
use crate::dist::{Launch, ProcessGroup};
use crate::model::{Model, Net};
use crate::profile::StepProfile;
use crate::sample::ar::{ArSampleSpec, ArSampler, TorchGumbel, sample_ar};
use crate::sample::categorical::TorchUniforms;
use crate::sample::semi_ar::{SemiArSpec, sample_semi_ar};
use crate::sample::{self, Denoiser, Held, ModelDenoiser, SampleSpec};
use crate::tb::{self, EventWriter};
use crate::train::seeds::reseed_sample_batch;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

pub struct SampleReport {
    pub texts: Vec<String>,
    pub tokens: Vec<Vec<u32>>,
    /// Denoiser (or AR) forward passes over all batches.
    pub forward_calls: usize,
    /// Sampling time over all batches (model loading excluded).
    pub seconds: f64,
    pub gen_ppl: Option<f64>,
}

/// One batch of samples and what it cost.
struct Drawn {
    tokens: Tensor,
    calls: usize,
    seconds: f64,
}

/// Every batch, with the sampler as the output files name it and its step count.
struct Sampled {
    batches: Vec<Drawn>,
    steps: usize,
    what: String,
}

/// What `sampling.*` and the loader ask for, resolved before anything is drawn.
struct Plan {
    batch: i64,
    length: i64,
    n_batches: usize,
    /// Samples kept: `sampling.num_samples`, or every row of every batch.
    wanted: usize,
    /// Of the Gumbel noise.
    kind: Kind,
    held: Option<Held>,
    device: Device,
    /// `trainer.profile`: where the sampler steps' Chrome trace goes.
    profile: Option<PathBuf>,
    /// The batches (of `n_batches`, numbered over all ranks) this process draws.
    mine: Vec<usize>,
    /// Rank 0 (or alone): shows the progress bar.
    main: bool,
    seed: u64,
}

/// The `mdlm sample-eval` entry point: one process, one rank, or the local launcher.
pub fn main(cfg: Config) -> Result<()> {
    match ranks::role(&cfg)? {
        Role::Alone => run(cfg, None).map(|_| ()),
        Role::Rank(l) => run(cfg, Some(&l)).map(|_| ()),
        Role::Launched => Ok(()),
    }
}

/// Samples alone (`launch` = `None`) or as one rank of a data-parallel run, where rank `r` of
/// `w` draws batches `r, r + w, ...` and rank 0 gathers every batch, writes them in batch order
/// and scores them. The report on rank 0 (or alone), `None` on the other ranks.
pub fn run(cfg: Config, launch: Option<&Launch>) -> Result<Option<SampleReport>> {
    let Run {
        cfg,
        device,
        run_dir,
    } = setup::start(cfg, launch)?;
    let pg = ranks::join(&cfg, launch, device)?;
    let (rank, world) = pg.as_ref().map_or((0, 1), |p| (p.rank(), p.world()));
    let main = rank == 0;
    let tokenizer = crate::data::tokenizer_by_name(&cfg.data.tokenizer_name_or_path)?;
    check_filter(&cfg.sampling)?;
    let setup::EvalModel {
        model,
        diffusion,
        source,
        step,
    } = ranks::rank_zero_first(pg.as_ref(), "loading the model", || {
        setup::eval_model(&cfg, tokenizer.as_ref(), device)
    })?;
    let step = step.unwrap_or(0);
    let mut plan = Plan::new(&cfg, tokenizer.as_ref(), device)?;
    plan.mine = (rank..plan.n_batches).step_by(world).collect();
    plan.main = main;
    plan.profile = (main && cfg.trainer.profile).then(|| run_dir.join("trace.json"));
    // Fetched before sampling: a failed download must cost no samples.
    let evaluator = if main && cfg.eval.compute_generative_perplexity {
        Some(crate::eval::gen_ppl::fetch_evaluator(
            &cfg.eval.gen_ppl_eval_model_name_or_path,
        )?)
    } else {
        None
    };
    let mut sampled = draw_batches(&cfg, &model, &diffusion, tokenizer.as_ref(), &plan)?;
    if let Some(pg) = pg {
        sampled.batches = gather(&pg, sampled.batches, &plan)?;
        // Before scoring: the other ranks need not wait for the evaluator.
        pg.shutdown()?;
        if !main {
            return Ok(None);
        }
    }
    let mut board = EventWriter::create(&run_dir.join("tb"))?;
    let files = SampleFiles::in_dir(&run_dir);
    let (texts, tokens) = files.write(&sampled, tokenizer.as_ref(), plan.wanted)?;
    report(&cfg, &sampled, &texts, &source, &files, plan.length, world);
    let shown = &texts[..texts.len().min(cfg.sampling.num_sample_log)];
    board.text("samples", step, &tb::samples_markdown(shown))?;
    board.flush()?;
    let gen_ppl = match &evaluator {
        Some(dir) => {
            let r = score(&cfg, dir, &texts, &sampled, &run_dir, device)?;
            board.scalar("eval/gen_ppl", step, r.gen_ppl)?;
            board.scalar("eval/unigram_entropy", step, r.unigram_entropy)?;
            board.flush()?;
            Some(r.gen_ppl)
        }
        None => None,
    };
    Ok(Some(SampleReport {
        texts,
        tokens,
        forward_calls: sampled.batches.iter().map(|d| d.calls).sum(),
        seconds: sampled.batches.iter().map(|d| d.seconds).sum(),
        gen_ppl,
    }))
}

/// Rank 0 receives every other rank's batches through the rendezvous store and returns all
/// `plan.n_batches` in batch order; the other ranks send theirs and return none.
fn gather(pg: &ProcessGroup, mine: Vec<Drawn>, plan: &Plan) -> Result<Vec<Drawn>> {
    let key = |b: usize| format!("mdlm/samples/{b}");
    if !pg.is_main() {
        for (&b, d) in plan.mine.iter().zip(&mine) {
            pg.store().set(&key(b), &d.to_bytes()?).map_err(|e| {
                anyhow::anyhow!("rank {}: sending sample batch {b}: {e}", pg.rank())
            })?;
        }
        return Ok(Vec::new());
    }
    let mut mine = mine.into_iter();
    (0..plan.n_batches)
        .map(|b| {
            if b % pg.world() == 0 {
                return mine
                    .next()
                    .context("rank 0 drew fewer batches than planned");
            }
            let bytes = pg.store().get(&key(b)).map_err(|e| {
                anyhow::anyhow!(
                    "rank 0: waiting for sample batch {b} from rank {}: {e}",
                    b % pg.world()
                )
            })?;
            Drawn::from_bytes(&bytes).with_context(|| format!("sample batch {b}"))
        })
        .collect()
}

impl Drawn {
    /// Calls, seconds, shape and the token ids, little-endian.
    fn to_bytes(&self) -> Result<Vec<u8>> {
        let (rows, cols) = self.tokens.size2()?;
        let ids = Vec::<i64>::try_from(self.tokens.reshape([-1]))?;
        let mut out = Vec::with_capacity(32 + ids.len() * 8);
        out.extend((self.calls as u64).to_le_bytes());
        out.extend(self.seconds.to_le_bytes());
        out.extend((rows as u64).to_le_bytes());
        out.extend((cols as u64).to_le_bytes());
        ids.iter().for_each(|t| out.extend(t.to_le_bytes()));
        Ok(out)
    }

    fn from_bytes(b: &[u8]) -> Result<Drawn> {
        let word = |i: usize| -> Result<[u8; 8]> {
            b.get(i * 8..i * 8 + 8)
                .and_then(|w| w.try_into().ok())
                .context("truncated sample batch")
        };
        let (rows, cols) = (u64::from_le_bytes(word(2)?), u64::from_le_bytes(word(3)?));
        let n = (rows * cols) as usize;
        if b.len() != 32 + n * 8 {
            bail!(
                "a sample batch of {rows} x {cols} tokens holds {} bytes",
                b.len()
            );
        }
        let ids: Vec<i64> = (0..n)
            .map(|i| word(4 + i).map(i64::from_le_bytes))
            .collect::<Result<_>>()?;
        Ok(Drawn {
            tokens: Tensor::from_slice(&ids).view([rows as i64, cols as i64]),
            calls: u64::from_le_bytes(word(0)?) as usize,
            seconds: f64::from_le_bytes(word(1)?),
        })
    }
}

fn check_filter(s: &config::Sampling) -> Result<()> {
    if !(s.top_p > 0.0 && s.top_p <= 1.0) {
        bail!("sampling.top_p={} must be in (0, 1]", s.top_p);
    }
    if !(s.temperature > 0.0 && s.temperature.is_finite()) {
        bail!("sampling.temperature={} must be positive", s.temperature);
    }
    Ok(())
}

impl Plan {
    fn new(cfg: &Config, tokenizer: &dyn Tokenizer, device: Device) -> Result<Plan> {
        let s = &cfg.sampling;
        let batch = cfg
            .loader
            .eval_batch_size
            .context("loader.eval_batch_size unresolved")? as i64;
        let length = cfg.model.length as i64;
        // `sampling.num_samples` is the convenient spelling of num_sample_batches x eval batch.
        let n_batches = match s.num_samples {
            Some(0) => bail!("sampling.num_samples=0: nothing to sample"),
            Some(n) => n.div_ceil(batch as usize),
            None => s.num_sample_batches,
        };
        Ok(Plan {
            batch,
            length,
            n_batches,
            wanted: s.num_samples.unwrap_or(n_batches * batch as usize),
            // float64 Gumbel noise unless the user asks for the reference's float32 draws.
            kind: if s.float64_gumbel {
                Kind::Double
            } else {
                Kind::Float
            },
            held: held_tokens(cfg, tokenizer, batch, length, device)?,
            device,
            profile: None,
            mine: (0..n_batches).collect(),
            main: true,
            seed: cfg.seed,
        })
    }
}

/// Every batch from the sampler the model and `sampling.*` call for; the progress bar ticks per
/// step where the sampler reports steps, else per batch.
fn draw_batches(
    cfg: &Config,
    model: &Model,
    diffusion: &Diffusion,
    tokenizer: &dyn Tokenizer,
    plan: &Plan,
) -> Result<Sampled> {
    let bar = progress(plan.mine.len(), plan.main);
    let sampled = match &model.net {
        Net::Dit(_) | Net::DiMamba(_) => {
            let draws = DiffusionDraws {
                s: &cfg.sampling,
                den: ModelDenoiser::new(model.backbone(), diffusion),
                diffusion,
                plan,
                bar: &bar,
            };
            if cfg.sampling.semi_ar {
                draws.semi_ar()
            } else {
                draws.reverse()
            }
        }
        Net::Ar(ar) => {
            if plan.held.is_some() {
                bail!("sampling.prefix / sampling.suffix are for the diffusion samplers");
            }
            let spec = ArSampleSpec {
                batch: plan.batch,
                length: plan.length,
                bos: tokenizer.bos_id() as i64,
                mask_index: diffusion.mask_index,
            };
            let mut gumbel = TorchGumbel { kind: plan.kind };
            let batches = plan
                .mine
                .iter()
                .map(|&b| {
                    reseed_sample_batch(plan.seed, b);
                    let start = Instant::now();
                    let out = sample_ar(
                        ar,
                        &spec,
                        ArSampler::Cached,
                        plan.device,
                        &mut gumbel,
                        false,
                    );
                    finish(out.tokens, out.forward_calls, start, Some(&bar))
                })
                .collect();
            Ok(Sampled {
                batches,
                steps: plan.length as usize,
                what: "ar (KV cache)".to_string(),
            })
        }
    }?;
    bar.finish_and_clear();
    Ok(sampled)
}

/// A diffusion model (DiT or DiMamba) and what its samplers read.
struct DiffusionDraws<'a> {
    s: &'a config::Sampling,
    den: ModelDenoiser<'a>,
    diffusion: &'a Diffusion,
    plan: &'a Plan,
    bar: &'a indicatif::ProgressBar,
}

impl DiffusionDraws<'_> {
    /// The reference's semi-autoregressive generation: ddpm_cache steps of size 1/sampling.steps
    /// per stride, whatever sampling.predictor says.
    fn semi_ar(&self) -> Result<Sampled> {
        let (s, den, plan) = (self.s, &self.den, self.plan);
        if plan.held.is_some() {
            bail!("sampling.prefix / sampling.suffix do not combine with sampling.semi_ar=true");
        }
        let spec = SemiArSpec {
            batch: plan.batch,
            length: plan.length,
            stride_length: s.stride_length as i64,
            num_strides: s.num_strides as i64,
            dt: 1.0 / s.steps as f64,
        };
        let mut uniforms = TorchUniforms { kind: plan.kind };
        let mut batches = Vec::new();
        for &b in &plan.mine {
            reseed_sample_batch(plan.seed, b);
            let (start, calls) = (Instant::now(), den.calls());
            let out = sample_semi_ar(den, self.diffusion, &spec, plan.device, &mut uniforms)?;
            batches.push(finish(
                out.tokens,
                den.calls() - calls,
                start,
                Some(self.bar),
            ));
        }
        let what = format!(
            "semi_ar (ddpm_cache, {} strides of {} tokens, dt 1/{})",
            spec.num_strides + 1,
            spec.stride_length,
            s.steps
        );
        Ok(Sampled {
            batches,
            steps: s.steps,
            what,
        })
    }

    /// The reverse-process samplers (`sampling.predictor`), ticking the bar once per step.
    fn reverse(&self) -> Result<Sampled> {
        let (s, den, plan) = (self.s, &self.den, self.plan);
        let spec = SampleSpec::from_config(s, plan.batch, plan.length, plan.held.clone());
        self.bar
            .set_length(plan.mine.len() as u64 * sample::observed_steps(&spec));
        let mut uniforms = TorchUniforms { kind: plan.kind };
        let mut batches = Vec::new();
        let mut profile = plan.profile.clone().map(StepProfile::new);
        for &b in &plan.mine {
            reseed_sample_batch(plan.seed, b);
            let (start, calls) = (Instant::now(), den.calls());
            let out = sample::sample(
                den,
                self.diffusion,
                &spec,
                plan.device,
                &mut uniforms,
                false,
                &mut || {
                    self.bar.inc(1);
                    if let Some(p) = profile.as_mut() {
                        p.tick();
                    }
                },
            )?;
            batches.push(finish(out.tokens, den.calls() - calls, start, None));
        }
        if let Some(p) = profile {
            p.finish()?;
        }
        Ok(Sampled {
            batches,
            steps: s.steps,
            what: sampler_name(s),
        })
    }
}

/// Where the samples go: `samples.jsonl` (one JSON object per sample) and `samples.txt`.
struct SampleFiles {
    jsonl: PathBuf,
    text: PathBuf,
}

impl SampleFiles {
    fn in_dir(run_dir: &Path) -> SampleFiles {
        SampleFiles {
            jsonl: run_dir.join("samples.jsonl"),
            text: run_dir.join("samples.txt"),
        }
    }

    /// Decodes and writes the first `wanted` rows; returns their texts and token ids.
    fn write(
        &self,
        sampled: &Sampled,
        tokenizer: &dyn Tokenizer,
        wanted: usize,
    ) -> Result<(Vec<String>, Vec<Vec<u32>>)> {
        let create = |p: &Path| {
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))
        };
        let (mut out, mut readable) = (create(&self.jsonl)?, create(&self.text)?);
        let what = &sampled.what;
        let mut texts = Vec::new();
        let mut all_tokens = Vec::new();
        'batches: for (b, d) in sampled.batches.iter().enumerate() {
            let rows: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(d.tokens.to_device(Device::Cpu))?;
            for (i, row) in rows.iter().enumerate() {
                if texts.len() == wanted {
                    break 'batches;
                }
                let ids: Vec<u32> = row.iter().map(|&t| t as u32).collect();
                let text = tokenizer.decode(&ids)?;
                writeln!(
                    out,
                    "{}",
                    json!({
                        "index": texts.len(), "batch": b, "row": i, "text": text, "tokens": row,
                        "sampler": what, "steps": sampled.steps,
                        // Per batch: the denoiser's cost is shared by the rows drawn together.
                        "batch_denoiser_calls": d.calls, "batch_seconds": d.seconds,
                    })
                )?;
                writeln!(
                    readable,
                    "=== sample {} ({what}) ===\n{text}\n",
                    texts.len()
                )?;
                texts.push(text);
                all_tokens.push(ids);
            }
        }
        Ok((texts, all_tokens))
    }
}

/// Prints the first `sampling.num_sample_log` samples and what sampling cost.
fn report(
    cfg: &Config,
    sampled: &Sampled,
    texts: &[String],
    source: &str,
    files: &SampleFiles,
    length: i64,
    world: usize,
) {
    let s = &cfg.sampling;
    for (i, t) in texts.iter().take(s.num_sample_log).enumerate() {
        println!("--- sample {i} ---\n{t}");
    }
    let seconds: f64 = sampled.batches.iter().map(|d| d.seconds).sum();
    let forward_calls: usize = sampled.batches.iter().map(|d| d.calls).sum();
    let (what, steps) = (&sampled.what, sampled.steps);
    println!(
        "{} samples of {} tokens from {source} with {what}, {steps} steps: {seconds:.2} s{} ({:.3} s per sample), {forward_calls} denoiser calls ({} gumbel); written to {} and {}",
        texts.len(),
        sampled
            .batches
            .first()
            .map_or(length, |d| d.tokens.size()[1]),
        if world > 1 {
            format!(" summed over {world} processes")
        } else {
            String::new()
        },
        seconds / texts.len().max(1) as f64,
        if s.float64_gumbel {
            "float64"
        } else {
            "float32, as the reference"
        },
        files.jsonl.display(),
        files.text.display()
    );
}

/// Generative perplexity of the samples under the evaluator in `dir`; printed and written to
/// `metrics.jsonl`.
fn score(
    cfg: &Config,
    dir: &Path,
    texts: &[String],
    sampled: &Sampled,
    run_dir: &Path,
    device: Device,
) -> Result<crate::eval::gen_ppl::GenPplReport> {
    let name = &cfg.eval.gen_ppl_eval_model_name_or_path;
    let r = crate::eval::gen_ppl::evaluate(
        dir,
        texts,
        cfg.model.length,
        cfg.eval.perplexity_batch_size,
        device,
    )?;
    println!(
        "gen ppl {:.3} under {name} ({} samples scored) | mean unigram entropy {:.3} nats",
        r.gen_ppl, r.samples_scored, r.unigram_entropy
    );
    let metrics = run_dir.join("metrics.jsonl");
    std::fs::write(
        &metrics,
        format!("{}\n", json!({"gen_ppl": r.gen_ppl, "evaluator": name, "samples_scored": r.samples_scored, "unigram_entropy": r.unigram_entropy, "sampler": sampled.what, "steps": sampled.steps})),
    )
    .with_context(|| format!("writing {}", metrics.display()))?;
    Ok(r)
}

/// `bar` ticks once per batch (samplers without per-step ticks).
fn finish(
    tokens: Tensor,
    calls: usize,
    start: Instant,
    bar: Option<&indicatif::ProgressBar>,
) -> Drawn {
    // The timing waits for the device: the tokens are needed on the host anyway.
    let tokens = tokens.to_device(Device::Cpu);
    if let Some(bar) = bar {
        bar.inc(1);
    }
    Drawn {
        tokens,
        calls,
        seconds: start.elapsed().as_secs_f64(),
    }
}

fn progress(n_batches: usize, shown: bool) -> indicatif::ProgressBar {
    if !shown {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(n_batches as u64).with_style(
        indicatif::ProgressStyle::with_template("sampling {bar:30} {pos}/{len} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar
}

/// The sampler as the output files name it, with the knobs that change its draws.
fn sampler_name(s: &config::Sampling) -> String {
    let mut name = serde_json::to_value(s.predictor)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{:?}", s.predictor));
    if s.predictor == config::Predictor::Confidence {
        match s.confidence_threshold {
            Some(t) => name.push_str(&format!(" (threshold {t})")),
            None => name.push_str(" (schedule)"),
        }
    }
    if s.temperature != 1.0 {
        name.push_str(&format!(", temperature {}", s.temperature));
    }
    if s.top_p < 1.0 {
        name.push_str(&format!(", top-p {}", s.top_p));
    }
    name
}

/// `sampling.prefix` after BOS at the start and `sampling.suffix` (then EOS) at the end of every
/// row, held fixed; `None` when neither is set.
fn held_tokens(
    cfg: &Config,
    tokenizer: &dyn Tokenizer,
    batch: i64,
    length: i64,
    device: Device,
) -> Result<Option<Held>> {
    let (prefix, suffix) = (&cfg.sampling.prefix, &cfg.sampling.suffix);
    if prefix.is_none() && suffix.is_none() {
        return Ok(None);
    }
    let mut head = vec![tokenizer.bos_id() as i64];
    head.extend(
        tokenizer
            .encode(prefix.as_deref().unwrap_or(""))?
            .into_iter()
            .map(i64::from),
    );
    let mut tail: Vec<i64> = Vec::new();
    if let Some(sfx) = suffix {
        tail.extend(tokenizer.encode(sfx)?.into_iter().map(i64::from));
        tail.push(tokenizer.eos_id() as i64);
    }
    let fixed = head.len() + tail.len();
    if fixed >= length as usize {
        bail!(
            "sampling.prefix/suffix take {fixed} of the model's {length} tokens, leaving none to generate"
        );
    }
    let mut row = vec![-1i64; length as usize];
    row[..head.len()].copy_from_slice(&head);
    let end = length as usize - tail.len();
    row[end..].copy_from_slice(&tail);
    let mask: Vec<bool> = row.iter().map(|&t| t >= 0).collect();
    let row: Vec<i64> = row.iter().map(|&t| t.max(0)).collect();
    let tokens = Tensor::from_slice(&row)
        .view([1, length])
        .expand([batch, length], false)
        .contiguous()
        .to_device(device);
    let held = Tensor::from_slice(&mask)
        .view([1, length])
        .expand([batch, length], false)
        .contiguous()
        .to_device(device);
    Ok(Some(Held { tokens, held }))
}
