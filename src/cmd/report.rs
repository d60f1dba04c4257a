//! `mdlm report RUN_DIR`: writes `RUN_DIR/report.html` for the run (or the runs below it).

use anyhow::{Context, Result};
use std::path::Path;

pub fn run(dir: &Path) -> Result<()> {
    let path = crate::report::write(dir).context("report")?;
    println!("report written to {}", path.display());
    Ok(())
}
