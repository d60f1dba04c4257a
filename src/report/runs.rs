//! Finding the runs under a folder and reading what each left behind: `metrics.jsonl` (written
//! by train's `RunLog`, or one record by ppl-eval / sample-eval), `samples.jsonl` (sample-eval),
//! `zero_shot.json` (ppl-eval over several data groups) and the resolved `config.yaml`.
//! Every file may belong to a run still in progress: an unreadable line is skipped and counted,
//! never fatal.

use crate::config::Config;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// The files that make a folder a run (a `checkpoints/` folder too: a training run before its
/// first logged step).
const RUN_FILES: [&str; 3] = ["metrics.jsonl", "samples.jsonl", "zero_shot.json"];

/// How deep below the report's folder runs are looked for (`outputs/<data>/<date>/<time>/samples`
/// is 5 deep).
const MAX_DEPTH: usize = 8;

pub struct Run {
    /// The folder relative to the report's folder; the folder itself goes by its own name.
    pub rel: String,
    pub dir: PathBuf,
    pub config_text: Option<String>,
    /// `None` when `config.yaml` is missing or does not parse as this version's config.
    pub config: Option<Config>,
    pub metrics: Metrics,
    pub samples: Vec<SampleLine>,
    pub zero_shot: Option<Vec<ZeroShotRow>>,
    /// What could not be read (a line being written, a crash's remnant), for the page to say.
    pub notes: Vec<String>,
}

/// One line of `metrics.jsonl`: the union of every writer's keys (unknown ones are ignored, and a
/// `null` — how JSON spells a NaN grad norm — reads as `None`).
#[derive(Deserialize, Default, Debug, Clone)]
pub struct MetricsLine {
    pub step: Option<u64>,
    #[serde(rename = "train/loss")]
    pub train_loss: Option<f64>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tokens_per_s: Option<f64>,
    #[serde(rename = "val/nll")]
    pub val_nll: Option<f64>,
    #[serde(rename = "val/bpd")]
    pub val_bpd: Option<f64>,
    #[serde(rename = "val/ppl")]
    pub val_ppl: Option<f64>,
    // sample-eval's generative perplexity record.
    pub gen_ppl: Option<f64>,
    pub evaluator: Option<String>,
    pub unigram_entropy: Option<f64>,
    // ppl-eval's record.
    pub checkpoint: Option<String>,
    pub data: Option<String>,
    pub split: Option<String>,
    pub tokens: Option<f64>,
}

/// A training step's logged values.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainPoint {
    pub step: u64,
    pub loss: f64,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tokens_per_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValPoint {
    pub step: u64,
    pub nll: f64,
    pub bpd: Option<f64>,
    pub ppl: Option<f64>,
}

#[derive(Default, Debug)]
pub struct Metrics {
    /// By step; a step logged twice (a resumed run repeats the steps after its checkpoint) keeps
    /// its last record.
    pub train: Vec<TrainPoint>,
    pub val: Vec<ValPoint>,
    /// sample-eval's record, when it scored its samples.
    pub gen_ppl: Option<MetricsLine>,
    /// ppl-eval's record (a validation without a step).
    pub ppl_eval: Option<MetricsLine>,
}

/// One line of `samples.jsonl` as sample-eval writes it (the token ids are not read).
#[derive(Deserialize, Debug, Clone)]
pub struct SampleLine {
    pub index: usize,
    pub batch: usize,
    pub text: String,
    pub sampler: String,
    pub steps: usize,
    pub batch_denoiser_calls: usize,
    pub batch_seconds: f64,
}

/// One row of `zero_shot.json` (ppl-eval's `PplRow`).
#[derive(Deserialize, Debug, Clone)]
pub struct ZeroShotRow {
    pub data: String,
    pub checkpoint: String,
    pub tokens: f64,
    pub nll: f64,
    pub bpd: f64,
    pub ppl: f64,
}

/// Every run in `root` or below it, in path order (Hydra's `<date>/<time>` folders sort by time).
pub fn collect(root: &Path) -> Result<Vec<Run>> {
    if !root.exists() {
        bail!("{} does not exist", root.display());
    }
    if !root.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let mut dirs = Vec::new();
    find_runs(root, 0, &mut dirs)?;
    if dirs.is_empty() {
        bail!(
            "{} holds no mdlm run (no {} in it or in its subfolders)",
            root.display(),
            RUN_FILES.join(", ")
        );
    }
    dirs.sort();
    dirs.into_iter().map(|d| read_run(root, d)).collect()
}

fn is_run(dir: &Path) -> bool {
    RUN_FILES.iter().any(|f| dir.join(f).is_file()) || dir.join("checkpoints").is_dir()
}

fn find_runs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if is_run(dir) {
        out.push(dir.to_path_buf());
    }
    if depth == MAX_DEPTH {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let name = e.file_name();
        // Not followed: links (a cycle would never end), hidden folders and checkpoints.
        let skip = name.to_string_lossy().starts_with('.') || name == "checkpoints";
        if !skip && e.file_type().is_ok_and(|t| t.is_dir()) {
            find_runs(&e.path(), depth + 1, out)?;
        }
    }
    Ok(())
}

fn read_run(root: &Path, dir: PathBuf) -> Result<Run> {
    let rel = match dir.strip_prefix(root) {
        Ok(p) if !p.as_os_str().is_empty() => p.display().to_string(),
        // The folder itself goes by its name (a Hydra run's time of day), not as `.`.
        _ => std::fs::canonicalize(root)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| ".".to_string()),
    };
    let config_text = read_optional(&dir.join("config.yaml"))?;
    let config = config_text
        .as_deref()
        .and_then(|t| Config::from_yaml(t).ok());
    let mut notes = Vec::new();
    let metrics = read_jsonl::<MetricsLine>(&dir, "metrics.jsonl", &mut notes)?
        .map(Metrics::from_lines)
        .unwrap_or_default();
    let samples = read_jsonl::<SampleLine>(&dir, "samples.jsonl", &mut notes)?.unwrap_or_default();
    // ppl-eval writes it in one go at its end; one that does not parse is reported, not fatal.
    let zero_shot = match read_optional(&dir.join("zero_shot.json"))? {
        Some(text) => match serde_json::from_str(&text) {
            Ok(rows) => Some(rows),
            Err(e) => {
                notes.push(format!("zero_shot.json unreadable: {e}"));
                None
            }
        },
        None => None,
    };
    Ok(Run {
        rel,
        dir,
        config_text,
        config,
        metrics,
        samples,
        zero_shot,
        notes,
    })
}

/// The file's text, or `None` when there is no such file.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read(path) {
        // Lossy: a line cut inside a multi-byte character must not hide the lines before it.
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The records of `dir/name` (`None` without the file); skipped lines are noted.
fn read_jsonl<T: DeserializeOwned>(
    dir: &Path,
    name: &str,
    notes: &mut Vec<String>,
) -> Result<Option<Vec<T>>> {
    let Some(text) = read_optional(&dir.join(name))? else {
        return Ok(None);
    };
    let (rows, skipped) = parse_jsonl(&text);
    if skipped > 0 {
        notes.push(format!(
            "{name}: {skipped} unreadable line(s) skipped (a line still being written, or left by a crash)"
        ));
    }
    Ok(Some(rows))
}

/// Every line that parses, and how many did not (blank lines are neither).
pub fn parse_jsonl<T: DeserializeOwned>(text: &str) -> (Vec<T>, usize) {
    let mut rows = Vec::new();
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(r) => rows.push(r),
            Err(_) => skipped += 1,
        }
    }
    (rows, skipped)
}

impl Metrics {
    pub fn from_lines(lines: Vec<MetricsLine>) -> Metrics {
        let mut m = Metrics::default();
        for l in lines {
            match (l.step, l.train_loss, l.val_nll) {
                (Some(step), Some(loss), _) => m.train.push(TrainPoint {
                    step,
                    loss,
                    lr: l.lr,
                    grad_norm: l.grad_norm,
                    tokens_per_s: l.tokens_per_s,
                }),
                (Some(step), None, Some(nll)) => m.val.push(ValPoint {
                    step,
                    nll,
                    bpd: l.val_bpd,
                    ppl: l.val_ppl,
                }),
                (None, _, Some(_)) => m.ppl_eval = Some(l),
                _ if l.gen_ppl.is_some() => m.gen_ppl = Some(l),
                _ => {}
            }
        }
        m.train = last_per_step(m.train, |p| p.step);
        m.val = last_per_step(m.val, |p| p.step);
        m
    }
}

/// Sorted by step, keeping the last record of a repeated step.
fn last_per_step<T>(mut v: Vec<T>, step: impl Fn(&T) -> u64) -> Vec<T> {
    // A stable sort keeps the file order among equal steps; the last of each run of equals wins.
    v.sort_by_key(&step);
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for p in v {
        if out.last().is_some_and(|q| step(q) == step(&p)) {
            out.pop();
        }
        out.push(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_split_by_writer_and_a_cut_last_line_is_skipped() {
        let text = concat!(
            r#"{"step":1,"train/loss":5.0,"lr":1e-5,"grad_norm":null,"tokens_per_s":100.0}"#,
            "\n",
            r#"{"step":2,"train/loss":4.0,"lr":2e-5,"grad_norm":1.5,"tokens_per_s":120.0}"#,
            "\n",
            r#"{"step":2,"val/nll":3.5,"val/bpd":5.05,"val/ppl":33.1}"#,
            "\n",
            r#"{"step":3,"train/lo"#
        );
        let (lines, skipped) = parse_jsonl::<MetricsLine>(text);
        assert_eq!(skipped, 1);
        let m = Metrics::from_lines(lines);
        assert_eq!(m.train.len(), 2);
        assert_eq!(m.train[0].grad_norm, None, "null reads as none");
        assert_eq!(m.train[1].grad_norm, Some(1.5));
        assert_eq!(
            m.val,
            [ValPoint {
                step: 2,
                nll: 3.5,
                bpd: Some(5.05),
                ppl: Some(33.1)
            }]
        );
        assert!(m.gen_ppl.is_none() && m.ppl_eval.is_none());
    }

    #[test]
    fn a_resumed_run_keeps_the_last_record_of_a_repeated_step() {
        let text = [
            r#"{"step":1,"train/loss":5.0}"#,
            r#"{"step":2,"train/loss":4.0}"#,
            r#"{"step":3,"train/loss":3.0}"#,
            // Resumed from the step-2 checkpoint.
            r#"{"step":3,"train/loss":3.25}"#,
            r#"{"step":4,"train/loss":2.0}"#,
        ]
        .join("\n");
        let (lines, _) = parse_jsonl::<MetricsLine>(&text);
        let m = Metrics::from_lines(lines);
        let got: Vec<(u64, f64)> = m.train.iter().map(|p| (p.step, p.loss)).collect();
        assert_eq!(got, [(1, 5.0), (2, 4.0), (3, 3.25), (4, 2.0)]);
    }

    #[test]
    fn eval_records_are_told_apart() {
        let text = [
            r#"{"checkpoint":"c","data":"ptb","split":"validation","val/nll":4.0,"val/bpd":5.7,"val/ppl":54.6,"tokens":100.0}"#,
            r#"{"gen_ppl":80.5,"evaluator":"gpt2-large","samples_scored":4,"unigram_entropy":4.2,"sampler":"ddpm_cache","steps":128}"#,
        ]
        .join("\n");
        let (lines, skipped) = parse_jsonl::<MetricsLine>(&text);
        assert_eq!(skipped, 0);
        let m = Metrics::from_lines(lines);
        assert!(m.train.is_empty() && m.val.is_empty());
        assert_eq!(m.ppl_eval.unwrap().data.as_deref(), Some("ptb"));
        assert_eq!(m.gen_ppl.unwrap().gen_ppl, Some(80.5));
    }

    #[test]
    fn runs_are_found_below_a_parent_and_an_empty_folder_is_an_error() {
        let root = std::env::temp_dir().join(format!("mdlm-report-runs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let a = root.join("x/2024.01.01/120000");
        let b = root.join("x/2024.01.01/130000");
        std::fs::create_dir_all(a.join("checkpoints")).unwrap();
        std::fs::create_dir_all(b.join("samples")).unwrap();
        std::fs::write(b.join("metrics.jsonl"), "").unwrap();
        std::fs::write(b.join("samples/samples.jsonl"), "").unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        let runs = collect(&root).unwrap();
        let rels: Vec<&str> = runs.iter().map(|r| r.rel.as_str()).collect();
        assert_eq!(
            rels,
            [
                "x/2024.01.01/120000",
                "x/2024.01.01/130000",
                "x/2024.01.01/130000/samples"
            ]
        );
        assert_eq!(collect(&b).unwrap()[0].rel, "130000");
        let err = format!("{:#}", collect(&root.join("empty")).err().unwrap());
        assert!(err.contains("holds no mdlm run"), "{err}");
        let err = format!("{:#}", collect(&root.join("nope")).err().unwrap());
        assert!(err.contains("does not exist"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
