//! Replacing a file so that a crash at any point leaves either the old file or the new one,
//! never a mix: write a sibling temp file, fsync it, rename it over the target, fsync the folder.

use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Temp files are named `.<target name>.partial-<pid>-<n>` so they are hidden, easy to recognise
/// as leftovers, and never collide between two saves of one process.
fn temp_prefix(target: &Path) -> String {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.partial-")
}

fn parent_dir(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Partial files left by a save that was killed. Only one process is expected to write a given
/// checkpoint path at a time, so any such file is stale; removing them keeps a crash loop from
/// filling the disk with multi-gigabyte fragments.
fn remove_leftovers(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            tracing::warn!(path = %entry.path().display(), "removing a partial checkpoint left by an interrupted save");
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// A writer that fails once `left` bytes have gone through: how tests simulate a crash or a full
/// disk in the middle of a save.
pub(crate) struct Limited<W> {
    pub inner: W,
    pub left: Option<u64>,
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match self.left {
            None => buf.len(),
            Some(0) => {
                return Err(io::Error::other(
                    "simulated failure part way through the write",
                ));
            }
            Some(left) => buf.len().min(left as usize),
        };
        let written = self.inner.write(&buf[..n])?;
        if let Some(left) = &mut self.left {
            *left -= written as u64;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Calls `write` on a buffered temp file next to `target`, then makes it `target` atomically.
/// On any error the temp file is removed and `target` is untouched.
pub(crate) fn write_atomically(
    target: &Path,
    fail_after: Option<u64>,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent_dir(target);
    let prefix = temp_prefix(target);
    remove_leftovers(&dir, &prefix);
    let temp = dir.join(format!(
        "{prefix}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> Result<()> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&temp)
            .with_context(|| format!("creating temp file {}", temp.display()))?;
        let mut out = BufWriter::with_capacity(
            8 << 20,
            Limited {
                inner: file,
                left: fail_after,
            },
        );
        write(&mut out).with_context(|| format!("writing {}", temp.display()))?;
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", temp.display()))?
            .inner;
        file.sync_all()
            .with_context(|| format!("syncing {}", temp.display()))?;
        drop(file);
        fs::rename(&temp, target)
            .with_context(|| format!("renaming {} to {}", temp.display(), target.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
        return result;
    }
    sync_parent(target)
}

/// Makes a rename into `target`'s folder durable: the rename lives in the folder's metadata, and
/// without this a power cut could undo it.
pub(crate) fn sync_parent(target: &Path) -> Result<()> {
    let dir = parent_dir(target);
    #[cfg(unix)]
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing folder {}", dir.display()))?;
    Ok(())
}
