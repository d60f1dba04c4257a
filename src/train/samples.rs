//! Samples drawn at validation (`eval.generate_samples`), as the reference's
//! `on_validation_epoch_end` draws them: from the EMA weights, with the configured sampler, for
//! the log. The reference draws `sampling.num_sample_batches` full batches but logs only
//! `num_sample_log` rows of the last one (the other rows feed its generative perplexity, which is
//! not computed during training here), so only the logged rows are drawn.

use crate::data::Tokenizer;
use crate::diffusion::Diffusion;
use crate::model::Model;
use crate::sample::categorical::TorchUniforms;
use crate::sample::{self, ModelDenoiser, SampleSpec};
use anyhow::{Context, Result};
use std::sync::Arc;
use tch::{Device, Kind};

#[derive(Clone)]
pub struct ValidationSamples {
    /// `sampling.*`; its `batch` is at most the eval batch size.
    pub spec: SampleSpec,
    /// Rows kept (`sampling.num_sample_log`), drawn in batches of `spec.batch`.
    pub rows: usize,
    /// Of the Gumbel noise (`sampling.float64_gumbel`).
    pub kind: Kind,
    pub tokenizer: Arc<dyn Tokenizer>,
}

impl std::fmt::Debug for ValidationSamples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidationSamples")
            .field("spec", &self.spec)
            .field("rows", &self.rows)
            .field("kind", &self.kind)
            .field("tokenizer", &self.tokenizer.name())
            .finish()
    }
}

impl ValidationSamples {
    /// `rows` decoded samples from `model` (which holds the EMA weights at validation). The
    /// draws continue libtorch's generator, which validation has just reseeded, and training
    /// reseeds before every step, so drawing them changes no training draw.
    pub fn draw(&self, model: &Model, diffusion: &Diffusion) -> Result<Vec<String>> {
        let den = ModelDenoiser::new(model.backbone(), diffusion);
        let mut uniforms = TorchUniforms { kind: self.kind };
        let mut texts = Vec::with_capacity(self.rows);
        while texts.len() < self.rows {
            let out = sample::sample(
                &den,
                diffusion,
                &self.spec,
                model.vs.device(),
                &mut uniforms,
                false,
                &mut || {},
            )
            .context("drawing samples at validation (eval.generate_samples=false skips them)")?;
            let batch = Vec::<Vec<i64>>::try_from(out.tokens.to_device(Device::Cpu))?;
            for row in batch.into_iter().take(self.rows - texts.len()) {
                let ids: Vec<u32> = row.iter().map(|&t| t as u32).collect();
                texts.push(self.tokenizer.decode(&ids)?);
            }
        }
        Ok(texts)
    }
}
