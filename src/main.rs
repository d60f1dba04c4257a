//! `mdlm`: parse, set up logging, dispatch, and turn errors into one line and an exit code.

use clap::Parser;
use mdlm::cli::{Cli, Command};
use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MDLM_LOG").unwrap_or_else(|_| {
                // A terminal gets the progress bar; a log file (no bar there) gets the events.
                let quiet = std::io::stderr().is_terminal();
                tracing_subscriber::EnvFilter::new(if quiet { "warn" } else { "mdlm=info,warn" })
            }),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the cause chain joined by ": ".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Command::Report(r) = &cli.command {
        if cli.cfg {
            anyhow::bail!("--cfg prints a composed config; `mdlm report` composes none");
        }
        return mdlm::cmd::report::run(&r.run_dir);
    }
    if matches!(cli.command, Command::PplEval(_)) {
        let cfgs = cli.configs()?;
        if cli.cfg {
            cfgs.iter().for_each(|c| print!("{}", c.to_yaml()));
            return Ok(());
        }
        return mdlm::cmd::ppl_eval::run_all(cfgs).map(|_| ());
    }
    let cfg = cli.config()?;
    if cli.cfg {
        print!("{}", cfg.to_yaml());
        return Ok(());
    }
    match cli.command {
        Command::Train(_) => mdlm::cmd::train::main(cfg),
        Command::SampleEval(_) => mdlm::cmd::sample_eval::main(cfg),
        Command::ExportHf(ref e) => mdlm::cmd::export_hf::run(cfg, &e.out),
        Command::PplEval(_) | Command::Report(_) => unreachable!("handled above"),
    }
}
