//! `mdlm ppl-eval`: NELBO-based NLL / BPD / PPL of a checkpoint on a validation split; with
//! `data=a,b,c`, one row per data group — the paper's zero-shot table. Each result is also a
//! TensorBoard scalar `eval/<data>/<split>/{nll,bpd,ppl}` at the checkpoint's training step.
//!
//! With `trainer.devices=N` (or a launcher) N processes score their rows of the same global
//! eval batches (`loader.eval_global_batch_size`) and add up token-weighted sums: the result is
//! the one-process result, in a fraction of the time.

use super::ranks::{self, Role};
use super::setup::{self, Run};
use crate::config::Config;
use crate::data::{Loader, Split, prepare::prepare_one};
use crate::dist::{Launch, ProcessGroup};
use crate::tb::EventWriter;
use crate::train::trainer;
use anyhow::{Context, Result, bail};
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

/// One data group scored on this process's rows of the global eval batches (all of them
/// alone); the row on rank 0, `None` on the others.
fn run(
    cfg: Config,
    launch: Option<&Launch>,
    pg: &mut Option<ProcessGroup>,
    job: usize,
) -> Result<Option<PplRow>> {
    let Run {
        cfg,
        device,
        run_dir,
    } = setup::start(cfg, launch)?;
    match pg {
        None => *pg = ranks::join(&cfg, launch, device)?,
        Some(pg) => ranks::same_run(pg, &cfg, &format!("ppl-eval/{job}"))?,
    }
    let pg = pg.as_ref();
    let (rank, world) = pg.map_or((0, 1), |p| (p.rank(), p.world()));
    // Only the scored split: evaluation corpora often ship no training split.
    let split = Split::parse(&cfg.eval.split).context("eval.split")?;
    let (valid, loaded) = ranks::rank_zero_first(pg, "preparing the data and model", || {
        let spec = setup::data_spec(&cfg)?;
        let (valid, _, tokenizer) = prepare_one(&spec, &cfg.data.valid, split)?;
        let loaded = setup::eval_model(&cfg, tokenizer.as_ref(), device)?;
        Ok((valid, loaded))
    })?;
    let setup::EvalModel {
        model,
        diffusion,
        source,
        step,
    } = loaded;
    let eval_batch = cfg
        .loader
        .eval_batch_size
        .context("loader.eval_batch_size unresolved")?;
    let mut loader = Loader::eval(Arc::new(valid), eval_batch)?
        .shard(rank, world)?
        .with_device(device);
    // Counted in global batches, so every rank stops at the same one.
    let n = cfg
        .trainer
        .limit_val_batches
        .of(loader.global_batches() as u64) as usize;
    let m = trainer::validate(&model, &diffusion, &mut loader, n, cfg.seed, pg)?;
    if rank != 0 {
        return Ok(None);
    }
    println!(
        "{source} on {} {} ({n} batches of {}, {} tokens{}): nll {:.4} | bpd {:.4} | ppl {:.3}",
        cfg.data.valid,
        split.as_str(),
        eval_batch * world,
        m.tokens,
        if world > 1 {
            format!(", {world} processes")
        } else {
            String::new()
        },
        m.nll(),
        m.bpd(),
        m.ppl()
    );
    let path = run_dir.join("metrics.jsonl");
    let line = json!({"checkpoint": source, "data": cfg.data.valid, "split": split.as_str(), "val/nll": m.nll(), "val/bpd": m.bpd(), "val/ppl": m.ppl(), "tokens": m.tokens, "batches": n, "processes": world});
    std::fs::write(&path, format!("{line}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    // One tag per data group and split: the zero-shot table's rows share the run directory.
    let mut tb = EventWriter::create(&run_dir.join("tb"))?;
    let tag = format!("eval/{}/{}", cfg.data.valid, split.as_str());
    let step = step.unwrap_or(0);
    tb.scalar(&format!("{tag}/nll"), step, m.nll())?;
    tb.scalar(&format!("{tag}/bpd"), step, m.bpd())?;
    tb.scalar(&format!("{tag}/ppl"), step, m.ppl())?;
    tb.flush()?;
    Ok(Some(PplRow {
        data: cfg.data.valid.clone(),
        checkpoint: source,
        batches: n,
        tokens: m.tokens,
        nll: m.nll(),
        bpd: m.bpd(),
        ppl: m.ppl(),
        run_dir,
    }))
}

/// Every config in turn — alone, as one rank (one process group for all of them), or as the
/// local launcher of `trainer.devices` ranks; with more than one config, rank 0 prints the table
/// and writes it as CSV and JSON beside the first run's directory (`zero_shot.csv`,
/// `zero_shot.json`). Returns rank 0's rows (none on other ranks and on the launcher).
pub fn run_all(cfgs: Vec<Config>) -> Result<Vec<PplRow>> {
    let Some(first) = cfgs.first() else {
        bail!("ppl-eval: no config to run");
    };
    let launch = match ranks::role(first)? {
        Role::Alone => None,
        Role::Rank(l) => Some(l),
        Role::Launched => return Ok(Vec::new()),
    };
    let many = cfgs.len() > 1;
    let mut pg = None;
    let mut rows = Vec::new();
    for (job, cfg) in cfgs.into_iter().enumerate() {
        rows.extend(run(cfg, launch.as_ref(), &mut pg, job)?);
    }
    if let Some(pg) = pg {
        pg.shutdown()?;
    }
    if !many || rows.is_empty() {
        return Ok(rows);
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
    Ok(rows)
}
