//! `mdlm sample-eval`: draw samples from a checkpoint, print them, write JSONL, report cost.

use super::setup::{self, Run};
use crate::config::{self, Config};
use crate::model::Net;
use crate::sample::ar::{ArSampleSpec, ArSampler, TorchGumbel, sample_ar};
use crate::sample::categorical::TorchUniforms;
use crate::sample::ddpm::DrawMode;
use crate::sample::semi_ar::{SemiArSpec, sample_semi_ar};
use crate::sample::{self, Denoiser, ModelDenoiser, Predictor, SampleSpec};
use anyhow::{Context, Result};
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
    let setup::EvalModel {
        model,
        diffusion,
        source,
    } = setup::eval_model(&cfg, tokenizer.as_ref(), device)?;
    let mask_index = diffusion.mask_index;
    let batch = cfg
        .loader
        .eval_batch_size
        .context("loader.eval_batch_size unresolved")? as i64;
    let length = cfg.model.length as i64;
    // float64 Gumbel noise unless the user asks for the reference's float32 draws.
    let kind = if cfg.sampling.float64_gumbel {
        Kind::Double
    } else {
        Kind::Float
    };

    let start = Instant::now();
    let mut batches = Vec::new();
    let (forward_calls, what) = match &model.net {
        Net::Dit(_) | Net::DiMamba(_) => {
            let den = ModelDenoiser::new(model.backbone(), &diffusion);
            let mut uniforms = TorchUniforms { kind };
            if cfg.sampling.semi_ar {
                // The reference's semi-autoregressive generation: ddpm_cache steps of size
                // 1/sampling.steps per stride, whatever sampling.predictor says.
                let spec = SemiArSpec {
                    batch,
                    length,
                    stride_length: cfg.sampling.stride_length as i64,
                    num_strides: cfg.sampling.num_strides as i64,
                    dt: 1.0 / cfg.sampling.steps as f64,
                };
                for _ in 0..cfg.sampling.num_sample_batches {
                    batches.push(
                        sample_semi_ar(&den, &diffusion, &spec, device, &mut uniforms)?.tokens,
                    );
                }
                let what = format!(
                    "semi-autoregressive ddpm_cache, {} strides of {} tokens, dt 1/{}",
                    spec.num_strides + 1,
                    spec.stride_length,
                    cfg.sampling.steps
                );
                (den.calls(), what)
            } else {
                let predictor = match cfg.sampling.predictor {
                    config::Predictor::Ddpm => Predictor::Ddpm,
                    config::Predictor::DdpmCache => Predictor::DdpmCache,
                    config::Predictor::Analytic => Predictor::Analytic,
                };
                let spec = SampleSpec {
                    predictor,
                    steps: cfg.sampling.steps as i64,
                    eps: 1e-5,
                    noise_removal: cfg.sampling.noise_removal,
                    batch,
                    length,
                    // The sparse draw goes with our float64 default; `float64_gumbel=false`
                    // replays the reference's draws exactly.
                    draws: if cfg.sampling.float64_gumbel {
                        DrawMode::Sparse
                    } else {
                        DrawMode::Reference
                    },
                    temperature: 1.0,
                    top_p: 1.0,
                    confidence: crate::sample::ConfidenceRule::Schedule,
                    held: None,
                };
                for _ in 0..cfg.sampling.num_sample_batches {
                    batches.push(
                        sample::sample(&den, &diffusion, &spec, device, &mut uniforms, false)?
                            .tokens,
                    );
                }
                (den.calls(), format!("{predictor:?}, {} steps", spec.steps))
            }
        }
        Net::Ar(ar) => {
            let spec = ArSampleSpec {
                batch,
                length,
                bos: tokenizer.bos_id() as i64,
                mask_index,
            };
            let mut gumbel = TorchGumbel { kind };
            let mut calls = 0;
            for _ in 0..cfg.sampling.num_sample_batches {
                let out = sample_ar(ar, &spec, ArSampler::Cached, device, &mut gumbel, false);
                calls += out.forward_calls;
                batches.push(out.tokens);
            }
            (calls, "AR with KV cache".to_string())
        }
    };
    let seconds = start.elapsed().as_secs_f64();

    let path = run_dir.join("samples.jsonl");
    let mut out =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut texts = Vec::new();
    for (b, tokens) in batches.iter().enumerate() {
        let rows: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(tokens.to_device(tch::Device::Cpu))?;
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
    for (i, t) in texts.iter().enumerate() {
        println!("--- sample {i} ---\n{t}");
    }
    println!(
        "{} samples of {length} tokens from {} with {what}: {seconds:.2} s, {forward_calls} denoiser calls ({} gumbel); written to {}",
        texts.len(),
        source,
        if cfg.sampling.float64_gumbel {
            "float64"
        } else {
            "float32, as the reference"
        },
        path.display()
    );
    if cfg.eval.compute_generative_perplexity {
        let name = &cfg.eval.gen_ppl_eval_model_name_or_path;
        let r = crate::eval::gen_ppl::evaluate(
            name,
            &texts,
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
            format!("{}\n", json!({"gen_ppl": r.gen_ppl, "evaluator": name, "samples_scored": r.samples_scored, "unigram_entropy": r.unigram_entropy})),
        )
        .with_context(|| format!("writing {}", metrics.display()))?;
    }
    Ok(SampleReport {
        texts,
        forward_calls,
        seconds,
    })
}
