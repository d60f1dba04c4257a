//! `mdlm ppl-eval`: NELBO-based NLL / BPD / PPL of a checkpoint on a validation split; with
//! `data=a,b,c`, one row per data group — the paper's zero-shot table. Each result is also a
//! TensorBoard scalar `eval/<data>/<split>/{nll,bpd,ppl}` at the checkpoint's training step.

use super::setup::{self, Run};
use crate::config::Config;
use crate::data::{Loader, Split, prepare::prepare_one};
use crate::tb::EventWriter;
use crate::train::trainer;
use anyhow::{Context, Result};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

/// One row of the table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PplRow {
    pub data: String,
    pub checkpoint: String,
    pub batches: usize,
    pub tokens: f64,
    pub nll: f64,
    pub bpd: f64,
    pub ppl: f64,
    pub run_dir: PathBuf,
}

pub fn run(cfg: Config) -> Result<PplRow> {
    let Run {
        cfg,
        device,
        run_dir,
    } = setup::start(cfg, None)?;
    let mut tb = EventWriter::create(&run_dir.join("tb"))?;
    // Only the scored split: evaluation corpora often ship no training split.
    let split = Split::parse(&cfg.eval.split).context("eval.split")?;
    let spec = setup::data_spec(&cfg)?;
    let (valid, _, tokenizer) = prepare_one(&spec, &cfg.data.valid, split)?;
    let setup::EvalModel {
        model,
        diffusion,
        source,
        step,
    } = setup::eval_model(&cfg, tokenizer.as_ref(), device)?;
    let eval_batch = cfg
        .loader
        .eval_batch_size
        .context("loader.eval_batch_size unresolved")?;
    let mut loader = Loader::eval(Arc::new(valid), eval_batch)?.with_device(device);
    let n = cfg
        .trainer
        .limit_val_batches
        .of(loader.num_batches() as u64) as usize;
    let m = trainer::validate(&model, &diffusion, &mut loader, n, cfg.seed, None)?;
    println!(
        "{source} on {} {} ({n} batches, {} tokens): nll {:.4} | bpd {:.4} | ppl {:.3}",
        cfg.data.valid,
        split.as_str(),
        m.tokens,
        m.nll(),
        m.bpd(),
        m.ppl()
    );
    let path = run_dir.join("metrics.jsonl");
    let line = json!({"checkpoint": source, "data": cfg.data.valid, "split": split.as_str(), "val/nll": m.nll(), "val/bpd": m.bpd(), "val/ppl": m.ppl(), "tokens": m.tokens});
    std::fs::write(&path, format!("{line}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    // One tag per data group and split: the zero-shot table's rows share the run directory.
    let tag = format!("eval/{}/{}", cfg.data.valid, split.as_str());
    let step = step.unwrap_or(0);
    tb.scalar(&format!("{tag}/nll"), step, m.nll())?;
    tb.scalar(&format!("{tag}/bpd"), step, m.bpd())?;
    tb.scalar(&format!("{tag}/ppl"), step, m.ppl())?;
    tb.flush()?;
    Ok(PplRow {
        data: cfg.data.valid.clone(),
        checkpoint: source,
        batches: n,
        tokens: m.tokens,
        nll: m.nll(),
        bpd: m.bpd(),
        ppl: m.ppl(),
        run_dir,
    })
}

/// Every config in turn; with more than one, prints the table and writes it as CSV and JSON
/// beside the first run's directory (`zero_shot.csv`, `zero_shot.json`).
pub fn run_all(cfgs: Vec<Config>) -> Result<()> {
    let many = cfgs.len() > 1;
    let mut rows = Vec::new();
    for cfg in cfgs {
        rows.push(run(cfg)?);
    }
    if !many {
        return Ok(());
    }
    println!(
        "\n{:<16} {:>10} {:>8} {:>8} {:>10}",
        "dataset", "tokens", "nll", "bpd", "ppl"
    );
    let mut csv = String::from("dataset,tokens,nll,bpd,ppl\n");
    for r in &rows {
        println!(
            "{:<16} {:>10} {:>8.4} {:>8.4} {:>10.3}",
            r.data, r.tokens, r.nll, r.bpd, r.ppl
        );
        csv.push_str(&format!(
            "{},{},{},{},{}\n",
            r.data, r.tokens, r.nll, r.bpd, r.ppl
        ));
    }
    let dir = &rows[0].run_dir;
    std::fs::write(dir.join("zero_shot.csv"), csv)
        .with_context(|| format!("writing {}", dir.display()))?;
    std::fs::write(
        dir.join("zero_shot.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    println!("table written to {}", dir.join("zero_shot.csv").display());
    Ok(())
}
