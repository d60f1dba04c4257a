//! A profiler users get too: libtorch's RecordFunction hook (the one `torch.profiler` rides on)
//! records every op of a few steps, with its thread and times. From that come a Chrome trace
//! (`trace.json`, opens in Perfetto or chrome://tracing) and the op count per step — `aten::` ops
//! not nested in another `aten::` op, the rule of `torch.profiler`-based counts and, on a GPU,
//! roughly the kernel launches a step pays.
//!
//! One recording at a time per process: the hook is global, so it sees every thread's ops; a
//! helper thread whose work is not part of the steps calls [`ignore_this_thread`].

mod steps;

pub use steps::StepProfile;

use anyhow::{Context, Result, bail};
use serde_json::json;
use std::collections::BTreeMap;
use std::ffi::{CStr, c_char, c_int};
use std::path::Path;

unsafe extern "C" {
    fn mdlm_prof_start() -> c_int;
    fn mdlm_prof_stop() -> i64;
    fn mdlm_prof_now_ns() -> i64;
    fn mdlm_prof_ignore_this_thread();
    fn mdlm_prof_event(
        i: i64,
        name: *mut *const c_char,
        thread: *mut u32,
        t0_ns: *mut i64,
        t1_ns: *mut i64,
        top: *mut c_int,
    ) -> c_int;
}

/// One recorded op or span.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub thread: u32,
    pub t0_ns: i64,
    pub t1_ns: i64,
    /// An `aten::` op no other `aten::` op encloses.
    pub top: bool,
}

/// A named stretch of the caller's own (a step, a phase), on the recorder's clock.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    pub t0_ns: i64,
    pub t1_ns: i64,
}

/// Keeps the calling thread's ops out of every recording, for good.
pub fn ignore_this_thread() {
    // SAFETY: flips a thread-local switch of libtorch's.
    unsafe { mdlm_prof_ignore_this_thread() }
}

/// Recording in progress; [`Recorder::stop`] ends it. Dropping it stops too, discarding.
pub struct Recorder {
    spans: Vec<Span>,
    live: bool,
    /// Where the next [`Recorder::lap`] starts.
    lap_ns: i64,
}

impl Recorder {
    pub fn start() -> Result<Recorder> {
        // SAFETY: no arguments; the bridge guards its own state.
        if unsafe { mdlm_prof_start() } != 0 {
            bail!("a profile is already being recorded in this process");
        }
        Ok(Recorder {
            spans: Vec::new(),
            live: true,
            lap_ns: now_ns(),
        })
    }

    /// Ends a span named `name` that began at the previous lap (or the start): for loops whose
    /// steps are not one closure, such as a sampler's per-step callback.
    pub fn lap(&mut self, name: &str) {
        let t1_ns = now_ns();
        self.spans.push(Span {
            name: name.to_string(),
            t0_ns: self.lap_ns,
            t1_ns,
        });
        self.lap_ns = t1_ns;
    }

    /// Runs `f` as a span named `name` (a step, or a phase of one).
    pub fn span<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let t0_ns = now_ns();
        let out = f();
        let t1_ns = now_ns();
        self.spans.push(Span {
            name: name.to_string(),
            t0_ns,
            t1_ns,
        });
        self.lap_ns = t1_ns;
        out
    }

    pub fn stop(mut self) -> Recording {
        self.live = false;
        // SAFETY: as in `start`; events are read by index below, before any new start.
        let n = unsafe { mdlm_prof_stop() };
        let events = (0..n).filter_map(read_event).collect();
        Recording {
            events,
            spans: std::mem::take(&mut self.spans),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.live {
            // SAFETY: as in `start`.
            unsafe { mdlm_prof_stop() };
        }
    }
}

fn now_ns() -> i64 {
    // SAFETY: reads a clock.
    unsafe { mdlm_prof_now_ns() }
}

fn read_event(i: i64) -> Option<Event> {
    let mut name: *const c_char = std::ptr::null();
    let (mut thread, mut t0_ns, mut t1_ns, mut top) = (0u32, 0i64, 0i64, 0 as c_int);
    // SAFETY: the out-pointers are valid locals; the name lives until the next start, and is
    // copied at once.
    let rc =
        unsafe { mdlm_prof_event(i, &mut name, &mut thread, &mut t0_ns, &mut t1_ns, &mut top) };
    if rc != 0 || name.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string owned by the bridge, checked non-null above.
    let name = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    Some(Event {
        name,
        thread,
        t0_ns,
        t1_ns,
        top: top != 0,
    })
}

/// One op name's share of a span.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpStat {
    pub count: f64,
    pub ms: f64,
}

/// What a recording kept.
pub struct Recording {
    pub events: Vec<Event>,
    pub spans: Vec<Span>,
}

impl Recording {
    /// Top-level ops that started inside the spans named `name`, by op name: how many and how
    /// many milliseconds, each divided by the number of such spans (per step when each step is a
    /// span). Also returns that number of spans.
    pub fn ops_per(&self, name: &str) -> (usize, BTreeMap<String, OpStat>) {
        let spans: Vec<&Span> = self.spans.iter().filter(|s| s.name == name).collect();
        let mut out: BTreeMap<String, OpStat> = BTreeMap::new();
        let n = spans.len().max(1) as f64;
        for e in self.events.iter().filter(|e| e.top) {
            if spans
                .iter()
                .any(|s| s.t0_ns <= e.t0_ns && e.t0_ns < s.t1_ns)
            {
                let row = out.entry(e.name.clone()).or_default();
                row.count += 1.0 / n;
                row.ms += (e.t1_ns - e.t0_ns) as f64 / 1e6 / n;
            }
        }
        (spans.len(), out)
    }

    /// A table of the ops per `span`: the total, then the `most` names that took longest, with
    /// their count and milliseconds.
    pub fn table(&self, span: &str, most: usize) -> String {
        let (n, per) = self.ops_per(span);
        let total: f64 = per.values().map(|v| v.count).sum();
        let ms: f64 = per.values().map(|v| v.ms).sum();
        let mut rows: Vec<(&String, &OpStat)> = per.iter().collect();
        rows.sort_by(|a, b| b.1.ms.total_cmp(&a.1.ms).then(a.0.cmp(b.0)));
        let mut out = format!("ops per {span} ({n} recorded): {total:.0}, {ms:.1} ms in them\n");
        for (name, OpStat { count, ms }) in rows.into_iter().take(most) {
            out.push_str(&format!("  {count:>8.1}  {ms:>8.2} ms  {name}\n"));
        }
        out
    }

    /// Chrome's trace-event format: one complete ("X") event per op and per span, times in
    /// microseconds from the first event; spans on their own track.
    pub fn write_chrome_trace(&self, path: &Path) -> Result<()> {
        let origin = self
            .events
            .iter()
            .map(|e| e.t0_ns)
            .chain(self.spans.iter().map(|s| s.t0_ns))
            .min()
            .unwrap_or(0);
        let us = |ns: i64| (ns - origin) as f64 / 1e3;
        let mut trace: Vec<serde_json::Value> = Vec::with_capacity(self.events.len() + 8);
        for s in &self.spans {
            trace.push(
                json!({"name": s.name, "cat": "step", "ph": "X", "pid": 0, "tid": "steps",
                "ts": us(s.t0_ns), "dur": us(s.t1_ns) - us(s.t0_ns)}),
            );
        }
        for e in &self.events {
            let cat = if e.top { "op" } else { "nested" };
            trace.push(
                json!({"name": e.name, "cat": cat, "ph": "X", "pid": 0, "tid": e.thread,
                "ts": us(e.t0_ns), "dur": us(e.t1_ns) - us(e.t0_ns)}),
            );
        }
        let doc = json!({"traceEvents": trace, "displayTimeUnit": "ms"});
        crate::atomic_file::write_atomically(path, None, |w| Ok(serde_json::to_writer(w, &doc)?))
            .with_context(|| format!("writing the trace {}", path.display()))
    }
}
