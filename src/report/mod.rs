//! `mdlm report`: one self-contained HTML page (inline SVG charts, no script, nothing fetched)
//! for a run folder, or for every run below a parent folder (a sweep, Hydra's
//! `outputs/<data>/<date>/<time>/` tree), drawn on shared charts.

mod charts;
mod html;
mod page;
mod runs;
mod svg;

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Writes `dir/report.html` and returns its path. The page replaces the old one in one rename,
/// so a browser (or a second `mdlm report`) never reads half a page, and a run still writing
/// its metrics is read as far as it got.
pub fn write(dir: &Path) -> Result<PathBuf> {
    let found = runs::collect(dir)?;
    let page = page::render(dir, &found);
    let path = dir.join("report.html");
    crate::atomic_file::write_atomically(&path, None, |w| {
        w.write_all(page.as_bytes()).map_err(Into::into)
    })
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
