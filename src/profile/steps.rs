//! `trainer.profile=true`: a few steps of a run recorded after warm-up, written as a Chrome
//! trace next to the run's other outputs, with the ops-per-step table printed.

use super::Recorder;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Steps left out before recording: the first ones allocate and pick kernels.
const WARMUP: usize = 2;
/// Steps recorded: enough to average, few enough for a trace a viewer opens quickly.
const RECORDED: usize = 3;

/// Counts a loop's steps and records steps `WARMUP..WARMUP + RECORDED`.
pub struct StepProfile {
    trace: PathBuf,
    seen: usize,
    rec: Option<Recorder>,
    /// A failure inside a step callback, reported by [`StepProfile::finish`].
    failed: Option<anyhow::Error>,
}

impl StepProfile {
    /// Records into `trace` (`<run dir>/trace.json`).
    pub fn new(trace: PathBuf) -> StepProfile {
        StepProfile {
            trace,
            seen: 0,
            rec: None,
            failed: None,
        }
    }

    /// Runs one step, as a span when it falls in the recorded window.
    pub fn step<T>(&mut self, f: impl FnOnce() -> T) -> Result<T> {
        if self.seen == WARMUP && self.rec.is_none() {
            self.rec = Some(Recorder::start()?);
        }
        self.seen += 1;
        let out = match self.rec.as_mut() {
            Some(rec) => rec.span("step", f),
            None => f(),
        };
        if self.seen == WARMUP + RECORDED {
            self.write()?;
        }
        Ok(out)
    }

    /// Marks the end of a step of a loop that reports steps by callback (samplers): the step
    /// that ended is the span since the previous mark.
    pub fn tick(&mut self) {
        self.seen += 1;
        if let Some(rec) = self.rec.as_mut() {
            rec.lap("step");
            if self.seen == WARMUP + RECORDED
                && let Err(e) = self.write()
            {
                self.failed = Some(e);
            }
        } else if self.seen == WARMUP && self.failed.is_none() {
            match Recorder::start() {
                Ok(rec) => self.rec = Some(rec),
                Err(e) => self.failed = Some(e),
            }
        }
    }

    /// Writes a window the loop ended inside, and reports a failure from [`StepProfile::tick`].
    pub fn finish(mut self) -> Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.write()
    }

    fn write(&mut self) -> Result<()> {
        let Some(rec) = self.rec.take() else {
            return Ok(());
        };
        let recording = rec.stop();
        recording
            .write_chrome_trace(&self.trace)
            .with_context(|| format!("writing the profile {}", self.trace.display()))?;
        eprintln!(
            "profile: {} (open in https://ui.perfetto.dev or chrome://tracing)\n{}",
            self.trace.display(),
            recording.table("step", 25)
        );
        Ok(())
    }
}
