//! `mdlm export-hf --out DIR`: a checkpoint (EMA weights unless `eval.disable_ema`) as a Hugging
//! Face MDLM folder — `config.json` + `model.safetensors` with `backbone.` names — the layout of
//! `kuleshov-group/mdlm-owt`, which `backbone=hf_dit` reads back.

use super::setup::{self, Run};
use crate::checkpoint::hf::{HfMdlmConfig, export_hf};
use crate::config::Config;
use crate::model::Net;
use anyhow::{Result, bail};
use std::path::Path;

pub fn run(cfg: Config, out: &Path) -> Result<()> {
    let Run { cfg, device, .. } = setup::start(cfg, None)?;
    let tokenizer = crate::data::tokenizer_by_name(&cfg.data.tokenizer_name_or_path)?;
    let setup::EvalModel {
        model,
        diffusion,
        source,
        ..
    } = setup::eval_model(&cfg, tokenizer.as_ref(), device)?;
    if !matches!(model.net, Net::Dit(_)) {
        bail!(
            "export-hf writes the MDLM (DiT) layout; backbone={} has none",
            cfg.backbone
        );
    }
    let config = HfMdlmConfig {
        vocab_size: diffusion.vocab_size,
        model_length: cfg.model.length as i64,
        hidden_dim: cfg.model.hidden_size as i64,
        cond_dim: cfg.model.cond_dim as i64,
        n_blocks: cfg.model.n_blocks as i64,
        n_heads: cfg.model.n_heads as i64,
        dropout: cfg.model.dropout,
        time_conditioning: diffusion.time_conditioning,
    };
    let mut tensors: Vec<(String, tch::Tensor)> = model.vs.variables().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    export_hf(out, &config, &tensors)?;
    println!(
        "exported {source} to {} ({} tensors)",
        out.display(),
        tensors.len()
    );
    Ok(())
}
