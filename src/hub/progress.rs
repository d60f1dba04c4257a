//! One bar per downloaded file (bytes, rate, time left), and what the transfer said about the
//! file's size, which the download is checked against once it ends.

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Files smaller than this get no bar: a flash of `config.json` tells nobody anything.
const BAR_FROM_BYTES: u64 = 1 << 20;

/// A handle hf-hub moves bytes through; clones share one bar and one size.
#[derive(Clone)]
pub struct DownloadBar {
    bar: ProgressBar,
    visible: bool,
    /// The file's full size, from the Hub's `Content-Range`.
    size: Arc<AtomicU64>,
}

impl DownloadBar {
    /// `visible`: draw on stderr when it is a terminal (indicatif stays silent elsewhere).
    pub fn new(file: &str, visible: bool) -> DownloadBar {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>24} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        // The tail of the name: the file is what a user watches for.
        let tail: String = {
            let chars: Vec<char> = file.chars().collect();
            let keep = chars.len().min(24);
            chars[chars.len() - keep..].iter().collect()
        };
        bar.set_message(tail);
        DownloadBar {
            bar,
            visible,
            size: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The size the transfer announced (0 before it started).
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::SeqCst)
    }

    /// Bytes received so far, a resumed part included.
    pub fn position(&self) -> u64 {
        self.bar.position()
    }

    /// Clears the bar; returns the bytes a second it moved over its whole life.
    pub fn done(&self) -> f64 {
        let secs = self.bar.elapsed().as_secs_f64();
        self.bar.finish_and_clear();
        self.position() as f64 / secs.max(1e-3)
    }

    pub fn human(bytes: u64) -> String {
        HumanBytes(bytes).to_string()
    }
}

impl hf_hub::api::Progress for DownloadBar {
    /// hf-hub calls this at the start of every attempt; a resumed attempt then reports the bytes
    /// already on disk through `update`, so the position starts over here.
    fn init(&mut self, size: usize, _filename: &str) {
        self.size.store(size as u64, Ordering::SeqCst);
        self.bar.set_length(size as u64);
        self.bar.set_position(0);
        if self.visible && size as u64 >= BAR_FROM_BYTES && self.bar.is_hidden() {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }

    fn update(&mut self, size: usize) {
        self.bar.inc(size as u64);
    }

    /// Called after each attempt, failed or not; the caller clears the bar once it knows.
    fn finish(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use hf_hub::api::Progress;

    #[test]
    fn a_resumed_attempt_counts_the_bytes_on_disk_once() {
        let mut b = DownloadBar::new("model.safetensors", false);
        b.init(1000, "model.safetensors");
        b.update(300);
        // The transfer broke off; hf-hub starts again from byte 300.
        b.init(1000, "model.safetensors");
        b.update(300);
        b.update(700);
        assert_eq!((b.size(), b.position()), (1000, 1000));
        assert!(b.done() > 0.0);
    }
}
