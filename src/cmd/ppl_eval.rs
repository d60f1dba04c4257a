//! `mdlm ppl-eval`: NELBO-based NLL / BPD / PPL of a checkpoint on the validation split.

use super::setup::{self, Run};
use crate::config::Config;
use crate::data::Loader;
use crate::eval::metrics::NllMeter;
use crate::train::trainer;
use anyhow::{Context, Result};
use serde_json::json;

pub fn run(cfg: Config) -> Result<NllMeter> {
    let Run {
        cfg,
        device,
        run_dir,
    } = setup::start(cfg)?;
    let data = setup::prepare_data(&cfg)?;
    let setup::EvalModel {
        model,
        diffusion,
        source,
    } = setup::eval_model(&cfg, data.tokenizer.as_ref(), device)?;
    let eval_batch = cfg
        .loader
        .eval_batch_size
        .context("loader.eval_batch_size unresolved")?;
    let mut valid = Loader::eval(data.valid.clone(), eval_batch)?.with_device(device);
    let n = cfg.trainer.limit_val_batches.of(valid.num_batches() as u64) as usize;
    let m = trainer::validate(&model, &diffusion, &mut valid, n, cfg.seed)?;
    println!(
        "{} on {} ({} batches, {} tokens): nll {:.4} | bpd {:.4} | ppl {:.3}",
        source,
        cfg.data.valid,
        n,
        m.tokens,
        m.nll(),
        m.bpd(),
        m.ppl()
    );
    let path = run_dir.join("metrics.jsonl");
    std::fs::write(&path, format!("{}\n", json!({"checkpoint": source, "val/nll": m.nll(), "val/bpd": m.bpd(), "val/ppl": m.ppl(), "tokens": m.tokens})))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(m)
}
