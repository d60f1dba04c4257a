//! The report's sections, top to bottom: a summary row per training run, the training charts,
//! the samples and their sampler table, the perplexity evaluations (the zero-shot table among
//! them), then every run's resolved config.

use super::charts::{self, Labeled, SMOOTHING};
use super::html::{self, escape};
use super::runs::Run;
use super::svg::fmt_value;
use std::collections::BTreeMap;
use std::path::Path;

/// Samples shown per sample-eval run; the rest are in its `samples.txt`.
const SHOWN_SAMPLES: usize = 16;

/// The whole page for the runs found in `root`.
pub fn render(root: &Path, runs: &[Run]) -> String {
    let mut body = format!(
        "<h1>mdlm report</h1>\n<p class=\"note\">{} — {} run folder(s). Regenerate with <code>mdlm report {}</code>.</p>\n",
        escape(&root.display().to_string()),
        runs.len(),
        escape(&root.display().to_string())
    );
    let training: Vec<Labeled> = runs
        .iter()
        .filter(|r| !r.metrics.train.is_empty() || !r.metrics.val.is_empty())
        .map(|r| Labeled {
            run: r,
            label: label(r),
        })
        .collect();
    if !training.is_empty() {
        body.push_str("<h2>Training</h2>\n");
        body.push_str(&summary(&training));
        body.push_str(&charts::training_charts(&training));
    }
    let sampled: Vec<&Run> = runs.iter().filter(|r| !r.samples.is_empty()).collect();
    if !sampled.is_empty() {
        body.push_str("<h2>Samples</h2>\n");
        body.push_str(&sampler_table(&sampled));
        for r in &sampled {
            body.push_str(&samples(r));
        }
    }
    body.push_str(&evaluations(runs));
    body.push_str("<h2>Configs</h2>\n");
    for r in runs {
        let text = match &r.config_text {
            Some(t) => html::pre("config", t),
            None => "<p class=\"note\">No config.yaml.</p>".to_string(),
        };
        body.push_str(&html::details(
            &format!("{} config.yaml", r.rel),
            runs.len() == 1,
            &text,
        ));
    }
    let notes: Vec<String> = runs
        .iter()
        .flat_map(|r| r.notes.iter().map(move |n| format!("{}: {n}", r.rel)))
        .collect();
    if !notes.is_empty() {
        body.push_str("<h2>Notes</h2>\n<ul>");
        for n in notes {
            body.push_str(&format!("<li>{}</li>", escape(&n)));
        }
        body.push_str("</ul>\n");
    }
    html::document(&format!("mdlm report: {}", root.display()), &body)
}

/// The run's folder, with the model and objective when its config reads.
fn label(r: &Run) -> String {
    match &r.config {
        Some(c) => format!(
            "{} ({}, {}, {})",
            r.rel, c.model.name, c.backbone, c.parameterization
        ),
        None => r.rel.clone(),
    }
}

fn opt(v: Option<f64>) -> String {
    v.filter(|v| v.is_finite())
        .map_or_else(|| "–".to_string(), fmt_value)
}

/// One row per training run: how far it got and where it stands.
fn summary(runs: &[Labeled]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|l| {
            let m = &l.run.metrics;
            let last_step = m
                .train
                .last()
                .map(|p| p.step)
                .max(m.val.last().map(|p| p.step));
            let steps = match (last_step, l.run.config.as_ref()) {
                (Some(s), Some(c)) => format!("{s} of {}", c.trainer.max_steps),
                (Some(s), None) => s.to_string(),
                (None, _) => "–".to_string(),
            };
            let losses: Vec<f64> = m.train.iter().map(|p| p.loss).collect();
            let best = m.val.iter().min_by(|a, b| a.nll.total_cmp(&b.nll));
            vec![
                l.label.clone(),
                steps,
                opt(losses.last().copied()),
                opt(charts::ema(&losses, SMOOTHING).last().copied()),
                best.map_or("–".to_string(), |b| {
                    format!("{} (step {})", fmt_value(b.nll), b.step)
                }),
                opt(m.val.last().and_then(|p| p.bpd)),
                opt(m.train.last().and_then(|p| p.tokens_per_s)),
            ]
        })
        .collect();
    html::table(
        "summary",
        &[
            "run",
            "step",
            "last loss",
            "smoothed loss",
            "best val nll",
            "last val bpd",
            "tokens/s",
        ],
        &rows,
    )
}

/// One row per sample-eval run: what `sample-eval` printed, from its files (its cost is per
/// batch, shared by the rows drawn together, so it is summed over distinct batches).
fn sampler_table(runs: &[&Run]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let mut batches: BTreeMap<usize, (usize, f64)> = BTreeMap::new();
            for s in &r.samples {
                batches.insert(s.batch, (s.batch_denoiser_calls, s.batch_seconds));
            }
            let calls: usize = batches.values().map(|b| b.0).sum();
            let seconds: f64 = batches.values().map(|b| b.1).sum();
            let n = r.samples.len();
            let first = &r.samples[0];
            let scored = r.metrics.gen_ppl.as_ref();
            vec![
                r.rel.clone(),
                first.sampler.clone(),
                first.steps.to_string(),
                n.to_string(),
                format!("{seconds:.2}"),
                format!("{:.3}", seconds / n as f64),
                calls.to_string(),
                scored
                    .and_then(|g| g.gen_ppl)
                    .map_or("–".to_string(), |v| format!("{v:.3}")),
                scored
                    .and_then(|g| g.evaluator.clone())
                    .unwrap_or_else(|| "–".to_string()),
                scored
                    .and_then(|g| g.unigram_entropy)
                    .map_or("–".to_string(), |v| format!("{v:.3}")),
            ]
        })
        .collect();
    html::table(
        "samplers",
        &[
            "run",
            "sampler",
            "steps",
            "samples",
            "seconds",
            "s/sample",
            "denoiser calls",
            "gen ppl",
            "evaluator",
            "unigram entropy (nats)",
        ],
        &rows,
    )
}

fn samples(r: &Run) -> String {
    let mut body = String::new();
    for s in r.samples.iter().take(SHOWN_SAMPLES) {
        body.push_str(&format!("<p class=\"note\">sample {}</p>", s.index));
        body.push_str(&html::pre("sample", &s.text));
    }
    if r.samples.len() > SHOWN_SAMPLES {
        body.push_str(&format!(
            "<p class=\"note\">{} more in {}</p>",
            r.samples.len() - SHOWN_SAMPLES,
            escape(&r.dir.join("samples.txt").display().to_string())
        ));
    }
    html::details(
        &format!("{} — {} samples", r.rel, r.samples.len()),
        true,
        &body,
    )
}

/// ppl-eval's results: a zero-shot table per `data=a,b,c` run, and one row per single run.
fn evaluations(runs: &[Run]) -> String {
    let mut s = String::new();
    for r in runs {
        let Some(rows) = &r.zero_shot else { continue };
        s.push_str(&format!(
            "<h3>Zero-shot perplexity — {}</h3>\n",
            escape(&r.rel)
        ));
        if let Some(ck) = rows.first().map(|z| &z.checkpoint) {
            s.push_str(&format!("<p class=\"note\">{}</p>\n", escape(ck)));
        }
        // The precision ppl-eval prints its table with.
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|z| {
                vec![
                    z.data.clone(),
                    format!("{}", z.tokens),
                    format!("{:.4}", z.nll),
                    format!("{:.4}", z.bpd),
                    format!("{:.3}", z.ppl),
                ]
            })
            .collect();
        s.push_str(&html::table(
            "zero-shot",
            &["dataset", "tokens", "nll", "bpd", "ppl"],
            &cells,
        ));
    }
    // A zero-shot run's metrics.jsonl repeats its last row: not listed again.
    let single: Vec<Vec<String>> = runs
        .iter()
        .filter(|r| r.zero_shot.is_none())
        .filter_map(|r| r.metrics.ppl_eval.as_ref().map(|m| (r, m)))
        .map(|(r, m)| {
            let f = |v: Option<f64>, d: usize| v.map_or("–".to_string(), |v| format!("{v:.d$}"));
            vec![
                r.rel.clone(),
                m.checkpoint.clone().unwrap_or_default(),
                m.data.clone().unwrap_or_default(),
                m.split.clone().unwrap_or_default(),
                m.tokens.map_or("–".to_string(), |t| t.to_string()),
                f(m.val_nll, 4),
                f(m.val_bpd, 4),
                f(m.val_ppl, 3),
            ]
        })
        .collect();
    if !single.is_empty() {
        s.push_str("<h3>Perplexity evaluations</h3>\n");
        s.push_str(&html::table(
            "ppl-eval",
            &[
                "run",
                "checkpoint",
                "data",
                "split",
                "tokens",
                "nll",
                "bpd",
                "ppl",
            ],
            &single,
        ));
    }
    if s.is_empty() {
        s
    } else {
        format!("<h2>Perplexity</h2>\n{s}")
    }
}
