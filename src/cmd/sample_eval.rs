//! `mdlm sample-eval`: draw samples from a checkpoint, print them, write JSONL, report cost.

use super::setup::{self, Run};
use crate::config::{self, Config};
use crate::sample::categorical::TorchUniforms;
use crate::sample::{self, Denoiser, ModelDenoiser, Predictor, SampleSpec};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::io::Write;
use std::time::Instant;
use tch::Kind;

pub struct SampleReport {
    pub texts: Vec<String>,
    pub forward_calls: usize,
    pub seconds: f64,
}

pub fn run(cfg: Config) -> Result<SampleReport> {
    let Run {
        cfg,
        device,
        run_dir,
    } = setup::start(cfg)?;
    let tokenizer = crate::data::tokenizer_by_name(&cfg.data.tokenizer_name_or_path)?;
    let (vocab_size, mask_index) = setup::vocab(tokenizer.as_ref());
    let diffusion = setup::diffusion(&cfg, vocab_size, mask_index)?;
    let model = setup::build_model(&cfg, vocab_size, device)?;
    let ckpt = setup::load_eval_weights(&cfg, &model)?;
    let predictor = match cfg.sampling.predictor {
        config::Predictor::Ddpm => Predictor::Ddpm,
        config::Predictor::DdpmCache => Predictor::DdpmCache,
        config::Predictor::Analytic => bail!(
            "sampling.predictor=analytic is not implemented yet (available: ddpm, ddpm_cache)"
        ),
    };
    if cfg.sampling.semi_ar {
        bail!("sampling.semi_ar=true is not implemented yet");
    }
    let batch = cfg
        .loader
        .eval_batch_size
        .context("loader.eval_batch_size unresolved")? as i64;
    let spec = SampleSpec {
        predictor,
        steps: cfg.sampling.steps as i64,
        eps: 1e-5,
        noise_removal: cfg.sampling.noise_removal,
        batch,
        length: cfg.model.length as i64,
    };
    let kind = if cfg.sampling.float64_gumbel {
        Kind::Double
    } else {
        Kind::Float
    };
    let mut uniforms = TorchUniforms { kind };
    let den = ModelDenoiser::new(&model.dit, &diffusion);
    let path = run_dir.join("samples.jsonl");
    let mut out =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let start = Instant::now();
    let mut texts = Vec::new();
    for b in 0..cfg.sampling.num_sample_batches {
        let s = sample::sample(&den, &diffusion, &spec, device, &mut uniforms, false)?;
        let rows: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(s.tokens.to_device(tch::Device::Cpu))?;
        for (i, row) in rows.iter().enumerate() {
            let ids: Vec<u32> = row.iter().map(|&t| t as u32).collect();
            let text = tokenizer.decode(&ids);
            writeln!(
                out,
                "{}",
                json!({"batch": b, "index": i, "text": text, "tokens": row})
            )?;
            texts.push(text);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    for (i, t) in texts.iter().enumerate() {
        println!("--- sample {i} ---\n{t}");
    }
    println!(
        "{} samples of {} tokens from {} with {:?}, {} steps: {:.2} s, {} denoiser calls ({} gumbel); written to {}",
        texts.len(),
        spec.length,
        ckpt.display(),
        predictor,
        spec.steps,
        seconds,
        den.calls(),
        if cfg.sampling.float64_gumbel {
            "float64"
        } else {
            "float32, as the reference"
        },
        path.display()
    );
    Ok(SampleReport {
        texts,
        forward_calls: den.calls(),
        seconds,
    })
}
