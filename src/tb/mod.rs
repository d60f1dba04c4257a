//! TensorBoard event files, so `tensorboard --logdir <run dir>` shows a run without TensorFlow:
//! TFRecord-framed `Event` protobufs ([`record`], [`event`]), one file per process that writes,
//! in `<run dir>/tb/`.

mod event;
mod record;

use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// One event file being written. Buffered: [`EventWriter::flush`] at the points a watcher should
/// see (logging steps); dropping it flushes too.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` if needed and a new event file in it, named as TensorFlow names its own
    /// (`events.out.tfevents.<unix seconds>.<hostname>`): TensorBoard reads a directory's files
    /// in name order, which is then the order they were started in. A name already taken (two
    /// writers in one second) gets `.1`, `.2`, ... appended, which sorts after it.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating the TensorBoard directory {}", dir.display()))?;
        let now = wall_time();
        let base = format!("events.out.tfevents.{}.{}", now as u64, hostname());
        let (file, path) = create_new(dir, &base)?;
        let mut w = EventWriter {
            out: BufWriter::new(file),
            path,
        };
        w.write(&event::file_version(now))?;
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A scalar at `step`; TensorBoard stores it as f32.
    pub fn scalar(&mut self, tag: &str, step: u64, value: f64) -> Result<()> {
        self.write(&event::scalar(wall_time(), step, tag, value as f32))
    }

    /// Markdown text at `step` (TensorBoard's text dashboard).
    pub fn text(&mut self, tag: &str, step: u64, markdown: &str) -> Result<()> {
        self.write(&event::text(wall_time(), step, tag, markdown))
    }

    /// Marks a session's start at `step`. TensorBoard's Python loader takes the first start in a
    /// run as its beginning and each later one as a restart: it forgets what earlier files hold
    /// at `step` and later (steps a killed process logged after its last checkpoint, which the
    /// resumed run logs again). The Rust data server needs no marker: per tag, a step that goes
    /// back replaces the points after it.
    pub fn session_start(&mut self, step: u64) -> Result<()> {
        self.write(&event::session_start(wall_time(), step))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("writing {}", self.path.display()))
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        record::write_record(&mut self.out, data)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!("{e:#}");
        }
    }
}

/// `text` as a Markdown code block (indented, so no backtick or `#` in it can end or restyle it).
pub fn code_block(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// Samples for the text dashboard: a heading and a code block each, so their whitespace shows.
pub fn samples_markdown(texts: &[String]) -> String {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| format!("**sample {i}**\n\n{}\n", code_block(t)))
        .collect()
}

fn create_new(dir: &Path, base: &str) -> Result<(File, PathBuf)> {
    for n in 0u32.. {
        let name = match n {
            0 => base.to_string(),
            n => format!("{base}.{n}"),
        };
        let path = dir.join(name);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("creating event file {}", path.display()));
            }
        }
    }
    unreachable!("u32 names run out")
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// This machine's name, kept to characters safe in a file name.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL or the end either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name: String = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end])
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect()
    } else {
        String::new()
    };
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mdlm-tb-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_taken_name_gets_a_suffix_that_sorts_after_it() {
        let dir = scratch("names");
        let (_, a) = create_new(&dir, "events.out.tfevents.1.h").unwrap();
        let (_, b) = create_new(&dir, "events.out.tfevents.1.h").unwrap();
        assert_eq!(b.file_name().unwrap(), "events.out.tfevents.1.h.1");
        assert!(a < b);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_file_holds_the_file_version_record_at_once() {
        let dir = scratch("version");
        let w = EventWriter::create(&dir.join("tb")).unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        // Already on disk before any drop: 12 header bytes, 24 of event, 4 of CRC.
        assert_eq!(fs::read(w.path()).unwrap().len(), 40);
        drop(w);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_that_cannot_be_made_is_an_error_naming_it() {
        let dir = scratch("blocked");
        fs::write(dir.join("tb"), "a file where the directory should go").unwrap();
        let err = EventWriter::create(&dir.join("tb")).err().unwrap();
        assert!(
            format!("{err:#}").contains("creating the TensorBoard directory"),
            "{err:#}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn code_blocks_indent_every_line() {
        assert_eq!(code_block("a: 1\n```\n"), "    a: 1\n    ```\n");
    }
}
