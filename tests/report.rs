//! `mdlm report`: the page for a real tiny run (train, then sample-eval and a two-row ppl-eval
//! written into it) shows what those commands wrote — checked against their own files, not
//! against the report's code — and a parent of two runs draws one curve per run.

mod support;

use serde_json::Value;
use std::path::Path;
use support::*;

/// The charts the page promises, one `<svg>` each, in page order.
const CHARTS: [&str; 6] = [
    "train-loss",
    "lr",
    "grad-norm",
    "tokens-per-s",
    "val-nll",
    "val-bpd",
];

/// The y-axis label format the report documents: four significant digits, fixed-point for
/// 0.01 <= |v| < 1e5, otherwise `{:.3e}`.
fn axis_label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if (1e-2..1e5).contains(&a) {
        let d = (3 - a.log10().floor() as i32).max(0) as usize;
        format!("{v:.d$}")
    } else {
        format!("{v:.3e}")
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// (min, max) of `key` over the records that have it.
fn extremes(rows: &[Value], key: &str) -> (f64, f64) {
    let v: Vec<f64> = rows.iter().filter_map(|r| r[key].as_f64()).collect();
    assert!(!v.is_empty(), "no {key} in metrics");
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// The `<svg id="{id}" ...>...</svg>` element of the page.
fn svg<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page
        .find(&format!("<svg id=\"{id}\""))
        .unwrap_or_else(|| panic!("no chart {id}"));
    let end = start + page[start..].find("</svg>").unwrap();
    &page[start..end]
}

/// The `<table class="{class}">` element of the page.
fn table<'a>(page: &'a str, class: &str) -> &'a str {
    let start = page
        .find(&format!("<table class=\"{class}\""))
        .unwrap_or_else(|| panic!("no {class} table"));
    let end = start + page[start..].find("</table>").unwrap();
    &page[start..end]
}

fn report(cache: &Path, dir: &Path) -> String {
    let o = mdlm(
        cache,
        &args(&["report", &dir.display().to_string()], vec![]),
    );
    assert!(o.status.success(), "report failed:\n{}", stderr(&o));
    let path = dir.join("report.html");
    assert!(
        stdout(&o).contains(&path.display().to_string()),
        "{}",
        stdout(&o)
    );
    std::fs::read_to_string(&path).unwrap()
}

fn train(cache: &Path, run: &Path, steps: u64, val_every: u64, extra: &[&str]) {
    let mut a = args(&["train"], tiny_overrides(run));
    a.extend([
        format!("trainer.max_steps={steps}"),
        format!("trainer.val_check_interval={val_every}"),
        "trainer.limit_val_batches=2".to_string(),
    ]);
    a.extend(extra.iter().map(|s| s.to_string()));
    let o = mdlm(cache, &a);
    assert!(o.status.success(), "train failed:\n{}", stderr(&o));
}

#[test]
fn one_run_shows_its_curves_samples_zero_shot_table_and_config() {
    let tmp = TempDir::new("report");
    let root = tmp.path();
    shakespeare_cache(root);
    let run = root.join("run");
    train(root, &run, 6, 3, &[]);
    let ck = format!(
        "eval.checkpoint_path={}",
        run.join("checkpoints/last.safetensors").display()
    );
    // Where scripts/run-default.sh puts them: inside the run.
    let mut s = args(&["sample-eval"], tiny_overrides(&run.join("samples")));
    s.extend([
        ck.clone(),
        "sampling.steps=8".into(),
        "sampling.num_sample_batches=2".into(),
        "loader.eval_global_batch_size=2".into(),
    ]);
    let o = mdlm(root, &s);
    assert!(o.status.success(), "sample-eval failed:\n{}", stderr(&o));
    let mut p = args(
        &[
            "ppl-eval",
            "data=shakespeare,shakespeare",
            "trainer.limit_val_batches=2",
        ],
        tiny_overrides(&run.join("zero-shot")),
    );
    p.push(ck);
    let o = mdlm(root, &p);
    assert!(o.status.success(), "ppl-eval failed:\n{}", stderr(&o));

    let page = report(root, &run);
    assert_eq!(page.matches("<svg").count(), CHARTS.len());
    for id in CHARTS {
        svg(&page, id);
    }
    assert!(!page.contains("<script"), "the page must need no script");

    // The extremes of what train logged label the axes of their charts.
    let metrics = jsonl(&run.join("metrics.jsonl"));
    for (id, key) in [("train-loss", "train/loss"), ("val-nll", "val/nll")] {
        let (lo, hi) = extremes(&metrics, key);
        let chart = svg(&page, id);
        for v in [lo, hi] {
            let label = format!(">{}</text>", axis_label(v));
            assert!(chart.contains(&label), "{id}: no {label} in\n{chart}");
        }
    }
    // One raw and one smoothed loss curve; validation has its two points.
    let loss = svg(&page, "train-loss");
    assert_eq!(loss.matches("<polyline").count(), 2);
    assert_eq!(svg(&page, "val-nll").matches("<circle").count(), 2);

    let config = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(
        page.contains(&html_escape(&config)),
        "config.yaml not shown"
    );

    // Samples and the sampler table, from sample-eval's own file.
    let samples = jsonl(&run.join("samples/samples.jsonl"));
    assert_eq!(samples.len(), 4);
    for s in &samples {
        let text = html_escape(s["text"].as_str().unwrap());
        assert!(page.contains(&format!("<pre class=\"sample\">{text}</pre>")));
    }
    let samplers = table(&page, "samplers");
    let sampler = html_escape(samples[0]["sampler"].as_str().unwrap());
    // Two batches: the denoiser calls of each, once.
    let calls: u64 = [0, 2]
        .iter()
        .map(|&i| samples[i]["batch_denoiser_calls"].as_u64().unwrap())
        .sum();
    for cell in [sampler, "8".to_string(), "4".to_string(), calls.to_string()] {
        assert!(
            samplers.contains(&format!("<td>{cell}</td>")),
            "no {cell} in {samplers}"
        );
    }

    // ppl-eval's zero-shot table, at the precision it prints.
    let zs: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(run.join("zero-shot/zero_shot.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(zs.len(), 2);
    let zero_shot = table(&page, "zero-shot");
    assert_eq!(zero_shot.matches("<td>shakespeare</td>").count(), 2);
    for r in &zs {
        for (key, d) in [("nll", 4), ("bpd", 4), ("ppl", 3)] {
            let cell = format!("<td>{:.d$}</td>", r[key].as_f64().unwrap());
            assert!(zero_shot.contains(&cell), "no {cell} in {zero_shot}");
        }
    }

    // A run in progress: a cut last line is skipped, said so, and changes nothing else.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(run.join("metrics.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut f, br#"{"step": 7, "train/lo"#).unwrap();
    let again = report(root, &run);
    assert_eq!(again.matches("<svg").count(), CHARTS.len());
    assert_eq!(svg(&again, "train-loss"), loss);
    assert!(again.contains("1 unreadable line(s) skipped"));
}

#[test]
fn a_parent_folder_draws_one_curve_per_run() {
    let tmp = TempDir::new("report-sweep");
    let root = tmp.path();
    shakespeare_cache(root);
    let outputs = root.join("outputs");
    // Laid out as hydra.run.dir's default lays runs out: <data>/<date>/<time>.
    let runs = [
        "shakespeare/2024.01.01/120000",
        "shakespeare/2024.01.01/130000",
    ];
    train(root, &outputs.join(runs[0]), 3, 3, &[]);
    train(root, &outputs.join(runs[1]), 4, 2, &["optim.lr=3e-3"]);

    let page = report(root, &outputs);
    assert_eq!(page.matches("<svg").count(), CHARTS.len());
    let loss = svg(&page, "train-loss");
    for run in runs {
        for style in ["raw", "solid"] {
            let line = format!("<polyline class=\"line {style}\" data-run=\"{run}\"");
            assert_eq!(loss.matches(&line).count(), 1, "{line} in\n{loss}");
        }
        // The legend names the run and its model.
        assert!(loss.contains(&format!(">{run} (tiny-char, dit, subs)</text>")));
    }
    assert_eq!(loss.matches("<polyline").count(), 4);
    // The axes span both runs.
    let all: Vec<Value> = runs
        .iter()
        .flat_map(|r| jsonl(&outputs.join(r).join("metrics.jsonl")))
        .collect();
    let (lo, hi) = extremes(&all, "train/loss");
    for v in [lo, hi] {
        assert!(loss.contains(&format!(">{}</text>", axis_label(v))));
    }
    // x: from the first logged step to the longest run's last.
    assert!(loss.contains(">1</text>") && loss.contains(">4</text>"));
    let val = svg(&page, "val-nll");
    assert_eq!(val.matches("<polyline").count(), 2);
    assert_eq!(val.matches("<circle").count(), 1 + 2);
}

#[test]
fn a_missing_or_empty_folder_fails_with_one_line() {
    let tmp = TempDir::new("report-bad");
    let missing = tmp.path().join("nope");
    for (dir, says) in [
        (missing.clone(), "does not exist"),
        (tmp.path().to_path_buf(), "holds no mdlm run"),
    ] {
        let o = mdlm(
            tmp.path(),
            &args(&["report", &dir.display().to_string()], vec![]),
        );
        let line = error_line(&o);
        assert!(
            line.contains(&dir.display().to_string()) && line.contains(says),
            "{line}"
        );
        assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    }
    assert!(!missing.exists());
}
