//! Command line: a subcommand plus Hydra-style overrides (`group=option`, `a.b=value`,
//! `+a.b=value`), resolved and validated once before any work.

use crate::config::{self, Config};
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "mdlm",
    version,
    about = "Masked Diffusion Language Models (MDLM) on libtorch"
)]
pub struct Cli {
    /// Read the config tree from this directory instead of the one built into the binary.
    #[arg(long, global = true, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Print the composed config and exit (Hydra's `--cfg job`).
    #[arg(long, global = true)]
    pub cfg: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (mode=train).
    Train(Overrides),
    /// Perplexity of a checkpoint on the validation split (mode=ppl_eval).
    PplEval(Overrides),
    /// Sample from a checkpoint (mode=sample_eval).
    SampleEval(Overrides),
    /// Write `eval.checkpoint_path` as a Hugging Face MDLM folder (config.json + model.safetensors).
    ExportHf(ExportArgs),
    /// Write RUN_DIR/report.html: curves, samples, evaluations and configs of its runs.
    ///
    /// RUN_DIR is one run, or a folder with runs below it (a sweep, `outputs/`), whose curves
    /// share the charts. No config is composed.
    Report(ReportArgs),
}

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// A run directory, or a folder with runs below it (e.g. `outputs/`).
    #[arg(value_name = "RUN_DIR")]
    pub run_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The folder to write.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(clap::Args, Debug)]
pub struct Overrides {
    /// Overrides in Hydra syntax, e.g. `model=small data=openwebtext-split loader.batch_size=16`.
    #[arg(value_name = "OVERRIDE", allow_hyphen_values = false)]
    pub overrides: Vec<String>,
}

impl Cli {
    /// The `mode` the subcommand sets; `None` for `report`, which composes no config.
    pub fn mode(&self) -> Option<&'static str> {
        match self.command {
            Command::Train(_) => Some("train"),
            Command::PplEval(_) => Some("ppl_eval"),
            Command::SampleEval(_) => Some("sample_eval"),
            // Not a mode of the reference: it loads a checkpoint the way sample-eval does.
            Command::ExportHf(_) => Some("sample_eval"),
            Command::Report(_) => None,
        }
    }

    /// One config per value of a comma-separated `data=a,b,c` (ppl-eval only: the zero-shot
    /// table, like Hydra's multirun over the data group); otherwise exactly [`Cli::config`].
    pub fn configs(&self) -> Result<Vec<Config>> {
        let Command::PplEval(o) = &self.command else {
            return Ok(vec![self.config()?]);
        };
        let Some(pos) = o
            .overrides
            .iter()
            .position(|s| s.starts_with("data=") && s.contains(','))
        else {
            return Ok(vec![self.config()?]);
        };
        let options: Vec<String> = o.overrides[pos]["data=".len()..]
            .split(',')
            .map(str::to_string)
            .collect();
        options
            .iter()
            .map(|d| {
                let mut overrides = o.overrides.clone();
                overrides[pos] = format!("data={d}");
                self.config_with(&overrides)
            })
            .collect()
    }

    /// The subcommand selects `mode`; an explicit `mode=` that disagrees is an error.
    pub fn config(&self) -> Result<Config> {
        let user = match &self.command {
            Command::Train(o) | Command::PplEval(o) | Command::SampleEval(o) => &o.overrides,
            Command::ExportHf(e) => &e.overrides.overrides,
            Command::Report(_) => return self.config_with(&[]),
        };
        self.config_with(user)
    }

    fn config_with(&self, user: &[String]) -> Result<Config> {
        let Some(mode) = self.mode() else {
            anyhow::bail!("`mdlm report` reads a run directory and composes no config");
        };
        if let Some(m) = user.iter().find_map(|o| o.strip_prefix("mode="))
            && m != mode
        {
            anyhow::bail!("mode={m} conflicts with the subcommand, which sets mode={mode}");
        }
        let mut all = vec![format!("mode={mode}")];
        all.extend(user.iter().cloned());
        match &self.config_dir {
            Some(dir) => config::compose_from_dir(dir, &all),
            None => config::compose(&all),
        }
    }
}
