//! The training charts: one per logged quantity, one curve per run, so a sweep compares at a
//! glance. The train loss is drawn raw (faint) under its smoothed curve, as TensorBoard does.

use super::html::escape;
use super::runs::{Run, TrainPoint, ValPoint};
use super::svg::{Chart, Series, Style};

/// The train loss's smoothing: an exponential moving average with this weight on the past,
/// debiased as TensorBoard's smoothing slider does (its default is 0.6; a diffusion loss, whose
/// noise level is drawn per batch, is noisier than most, hence more).
pub const SMOOTHING: f64 = 0.9;

/// Tableau 10: distinguishable, and readable on white.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// What a chart plots from a run.
enum Source {
    /// The train loss, raw and smoothed.
    Loss,
    Train(fn(&TrainPoint) -> Option<f64>),
    Val(fn(&ValPoint) -> Option<f64>),
}

struct Spec {
    id: &'static str,
    title: &'static str,
    y_label: &'static str,
    note: &'static str,
    source: Source,
}

/// Every chart of the training section, in page order; each is one `<svg>` (or a line saying
/// that nothing was logged yet).
const CHARTS: [Spec; 6] = [
    Spec {
        id: "train-loss",
        title: "Training loss",
        y_label: "train/loss",
        note: "Faint: as logged; solid: smoothed (EMA, weight 0.9, debiased as in TensorBoard).",
        source: Source::Loss,
    },
    Spec {
        id: "lr",
        title: "Learning rate",
        y_label: "lr",
        note: "",
        source: Source::Train(|p| p.lr),
    },
    Spec {
        id: "grad-norm",
        title: "Gradient norm (before clipping)",
        y_label: "grad_norm",
        note: "",
        source: Source::Train(|p| p.grad_norm),
    },
    Spec {
        id: "tokens-per-s",
        title: "Throughput",
        y_label: "tokens/s",
        note: "Tokens per second of all ranks, averaged since the process started (a resumed run starts again).",
        source: Source::Train(|p| p.tokens_per_s),
    },
    Spec {
        id: "val-nll",
        title: "Validation NLL (EMA weights)",
        y_label: "val/nll (nats/token)",
        note: "",
        source: Source::Val(|p| Some(p.nll)),
    },
    Spec {
        id: "val-bpd",
        title: "Validation bits per token",
        y_label: "val/bpd",
        note: "",
        source: Source::Val(|p| p.bpd),
    },
];

/// TensorBoard's smoothing: `last = w·last + (1-w)·v`, divided by `1 - w^n` so that the first
/// points are not pulled toward zero.
pub fn ema(values: &[f64], weight: f64) -> Vec<f64> {
    let mut last = 0.0;
    let mut out = Vec::with_capacity(values.len());
    for (n, v) in values.iter().enumerate() {
        last = last * weight + (1.0 - weight) * v;
        out.push(last / (1.0 - weight.powi(n as i32 + 1)));
    }
    out
}

/// A run's training curves as the legend names them.
pub struct Labeled<'a> {
    pub run: &'a Run,
    pub label: String,
}

/// The training section's charts, each under its heading.
pub fn training_charts(runs: &[Labeled]) -> String {
    let mut html = String::new();
    for spec in &CHARTS {
        html.push_str(&format!("<h3>{}</h3>\n", escape(spec.title)));
        if !spec.note.is_empty() {
            html.push_str(&format!("<p class=\"note\">{}</p>\n", escape(spec.note)));
        }
        let chart = Chart {
            id: spec.id,
            title: spec.title,
            x_label: "step",
            y_label: spec.y_label,
            series: runs
                .iter()
                .enumerate()
                .flat_map(|(i, r)| series(spec, r, PALETTE[i % PALETTE.len()]))
                .collect(),
        };
        match chart.render() {
            Some(svg) => {
                html.push_str(&svg);
                html.push('\n');
            }
            None => html.push_str("<p class=\"note\">Nothing logged yet.</p>\n"),
        }
    }
    html
}

fn series(spec: &Spec, r: &Labeled, color: &'static str) -> Vec<Series> {
    let m = &r.run.metrics;
    let solid = |style, points: Vec<(f64, f64)>| Series {
        run: r.run.rel.clone(),
        legend: Some(r.label.clone()),
        color,
        style,
        points,
    };
    match spec.source {
        Source::Loss => {
            let steps: Vec<f64> = m.train.iter().map(|p| p.step as f64).collect();
            let raw: Vec<f64> = m.train.iter().map(|p| p.loss).collect();
            let smooth = ema(&raw, SMOOTHING);
            vec![
                Series {
                    legend: None,
                    ..solid(Style::Raw, steps.iter().copied().zip(raw).collect())
                },
                solid(Style::Solid, steps.into_iter().zip(smooth).collect()),
            ]
        }
        Source::Train(f) => vec![solid(Style::Solid, points(&m.train, |p| p.step, f))],
        Source::Val(f) => vec![solid(Style::Dots, points(&m.val, |p| p.step, f))],
    }
}

fn points<T>(
    rows: &[T],
    step: impl Fn(&T) -> u64,
    value: impl Fn(&T) -> Option<f64>,
) -> Vec<(f64, f64)> {
    rows.iter()
        .filter_map(|r| value(r).map(|v| (step(r) as f64, v)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_matches_tensorboard_by_hand() {
        // Debiased, point n is the mean of points 0..=n weighted by w^(n-i): with w = 0.5,
        // (1), (0.5·1 + 3) / 1.5 and (0.25·1 + 0.5·3 + 4) / 1.75.
        let s = ema(&[1.0, 3.0, 4.0], 0.5);
        let want = [1.0, 3.5 / 1.5, 5.75 / 1.75];
        for (a, b) in s.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{s:?}");
        }
        // A constant stays itself from the first point on.
        assert!(ema(&[2.5; 4], 0.9).iter().all(|v| (v - 2.5).abs() < 1e-12));
    }
}
