//! Reading parity fixtures (`$MDLM_PARITY_DIR`, default `../shared/parity`) and comparing tensors at
//! the tolerances each case's JSON gives. Format: `../shared/parity/README.md`.
#![allow(dead_code)]

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub fn parity_dir() -> PathBuf {
    match std::env::var_os("MDLM_PARITY_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/parity"),
    }
}

/// One fixture case: its JSON and its tensors by name.
pub struct Case {
    pub name: String,
    pub kind: String,
    pub dir: PathBuf,
    pub json: Value,
    pub tensors: BTreeMap<String, Tensor>,
}

impl Case {
    pub fn load(dir: &Path, name: &str) -> Result<Case> {
        let json_path = dir.join(format!("{name}.json"));
        let text = std::fs::read_to_string(&json_path)
            .with_context(|| format!("reading {}", json_path.display()))?;
        let json: Value = serde_json::from_str(&python_json(&text))
            .with_context(|| format!("parsing {}", json_path.display()))?;
        let kind = json["kind"]
            .as_str()
            .ok_or_else(|| anyhow!("{name}: no kind"))?
            .to_string();
        let st_path = dir.join(format!("{name}.safetensors"));
        let mut tensors = BTreeMap::new();
        if st_path.exists() && std::fs::metadata(&st_path)?.len() > 16 {
            for (k, t) in Tensor::read_safetensors(&st_path)
                .with_context(|| format!("reading {}", st_path.display()))?
            {
                tensors.insert(k, t);
            }
        }
        Ok(Case {
            name: name.to_string(),
            kind,
            dir: dir.to_path_buf(),
            json,
            tensors,
        })
    }

    pub fn t(&self, name: &str) -> Result<Tensor> {
        self.tensors
            .get(name)
            .map(|t| t.shallow_clone())
            .ok_or_else(|| anyhow!("{}: tensor {name} missing", self.name))
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Every tensor whose name starts with `backbone.`, as (name, tensor).
    pub fn backbone_weights(&self) -> Vec<(String, Tensor)> {
        self.tensors
            .iter()
            .filter(|(k, _)| k.starts_with("backbone."))
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect()
    }

    pub fn f64(&self, path: &str) -> Result<f64> {
        pointer(&self.json, path)?
            .as_f64()
            .ok_or_else(|| anyhow!("{}: {path} not a number", self.name))
    }

    pub fn i64(&self, path: &str) -> Result<i64> {
        pointer(&self.json, path)?
            .as_i64()
            .ok_or_else(|| anyhow!("{}: {path} not an integer", self.name))
    }

    pub fn bool(&self, path: &str) -> Result<bool> {
        pointer(&self.json, path)?
            .as_bool()
            .ok_or_else(|| anyhow!("{}: {path} not a bool", self.name))
    }

    pub fn str(&self, path: &str) -> Result<String> {
        Ok(pointer(&self.json, path)?
            .as_str()
            .ok_or_else(|| anyhow!("{}: {path} not a string", self.name))?
            .to_string())
    }

    pub fn value(&self, path: &str) -> Result<&Value> {
        pointer(&self.json, path)
    }

    /// (atol, rtol) for a tensor: its own entry in `tolerances`, else `default`.
    pub fn tolerance(&self, tensor: &str) -> (f64, f64) {
        let tol = &self.json["tolerances"];
        let entry = if tol.get(tensor).is_some() {
            &tol[tensor]
        } else {
            &tol["default"]
        };
        (
            entry["atol"].as_f64().unwrap_or(0.0),
            entry["rtol"].as_f64().unwrap_or(0.0),
        )
    }

    /// Compares `got` with the stored tensor `name` at that tensor's tolerance.
    pub fn check(&self, name: &str, got: &Tensor) -> Result<()> {
        let expected = self.t(name)?;
        let (atol, rtol) = self.tolerance(name);
        compare(
            &format!("{}::{name}", self.name),
            got,
            &expected,
            atol,
            rtol,
        )
    }

    /// Compares a value with a stored tensor at an explicit tolerance (for JSON numbers etc.).
    pub fn check_with(
        &self,
        label: &str,
        got: &Tensor,
        expected: &Tensor,
        atol: f64,
        rtol: f64,
    ) -> Result<()> {
        compare(
            &format!("{}::{label}", self.name),
            got,
            expected,
            atol,
            rtol,
        )
    }
}

/// Python's json module writes `Infinity`, `-Infinity` and `NaN` (e.g. in `margins`), which strict
/// JSON lacks: outside strings they become 1e308 / -1e308 / null.
fn python_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_str, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let mut replaced = false;
        for (word, with) in [
            ("-Infinity", "-1e308"),
            ("Infinity", "1e308"),
            ("NaN", "null"),
        ] {
            if rest.starts_with(word) {
                out.push_str(with);
                rest = &rest[word.len()..];
                replaced = true;
                break;
            }
        }
        if replaced {
            continue;
        }
        if c == '"' {
            in_str = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// `path` is dotted (`config.model.hidden_size`).
pub fn pointer<'a>(json: &'a Value, path: &str) -> Result<&'a Value> {
    let mut v = json;
    for part in path.split('.') {
        v = v
            .get(part)
            .ok_or_else(|| anyhow!("json field {path} missing (at {part})"))?;
    }
    Ok(v)
}

/// Elementwise `|got - expected| <= atol + rtol |expected|`; integer tensors must match exactly.
/// The error names the worst element, llm.c style.
pub fn compare(label: &str, got: &Tensor, expected: &Tensor, atol: f64, rtol: f64) -> Result<()> {
    let got = got.to_device(tch::Device::Cpu);
    if got.size() != expected.size() {
        // A (B,1) against (B,) style difference is a real mismatch of what is passed around,
        // but the numbers are what the fixture pins; compare flattened when counts agree.
        if got.numel() != expected.numel() {
            bail!(
                "{label}: shape {:?}, expected {:?}",
                got.size(),
                expected.size()
            );
        }
    }
    let integer = matches!(
        expected.kind(),
        Kind::Int64 | Kind::Int | Kind::Bool | Kind::Uint8
    );
    if integer {
        let g = got.to_kind(Kind::Int64).flatten(0, -1);
        let e = expected.to_kind(Kind::Int64).flatten(0, -1);
        let diff = g.ne_tensor(&e);
        let n = i64::try_from(diff.sum(Kind::Int64))?;
        if n > 0 {
            let idx = i64::try_from(diff.to_kind(Kind::Int64).argmax(0, false))?;
            bail!(
                "{label}: {n} of {} integers differ; first at flat index {idx}: got {}, expected {}",
                e.numel(),
                i64::try_from(g.get(idx))?,
                i64::try_from(e.get(idx))?
            );
        }
        return Ok(());
    }
    let g = got.to_kind(Kind::Double).flatten(0, -1);
    let e = expected.to_kind(Kind::Double).flatten(0, -1);
    let bound = e.abs() * rtol + atol;
    let err = (&g - &e).abs();
    // NaN in got never passes; equal infinities do.
    let same_inf = g.isinf().logical_and(&g.eq_tensor(&e));
    let ok = err.le_tensor(&bound).logical_or(&same_inf);
    let bad = ok.logical_not();
    let n = i64::try_from(bad.sum(Kind::Int64))?;
    if n > 0 {
        let excess = (&err - &bound).nan_to_num(1e300, 1e300, -1e300);
        let idx = i64::try_from(excess.argmax(0, false))?;
        bail!(
            "{label}: {n} of {} elements outside atol {atol} rtol {rtol}; worst at flat index {idx}: got {}, expected {} (max abs err {})",
            e.numel(),
            f64::try_from(g.get(idx))?,
            f64::try_from(e.get(idx))?,
            f64::try_from(err.nan_to_num(1e300, 1e300, 1e300).max())?
        );
    }
    Ok(())
}

/// A case (or part of one) this port does not cover yet: reported as skipped by name, never passed.
#[derive(Debug)]
pub struct Skip(pub String);

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

pub fn skip<T>(why: impl Into<String>) -> Result<T> {
    Err(anyhow::Error::new(Skip(why.into())))
}

/// A scalar stored in the JSON, as a 0-d double tensor, for `check_with`.
pub fn scalar(x: f64) -> Tensor {
    Tensor::from(x)
}

/// The gradient part of a loss case, after `loss.backward()`: every trainable parameter's norm
/// against `grad_norms` (and no parameter missing or extra), the total `grad_norm` (tensor and
/// JSON value), and the full `grad.<name>` tensors the case stores.
pub fn check_gradients(
    case: &Case,
    vars: &std::collections::HashMap<String, Tensor>,
) -> Result<()> {
    let norms = case
        .value("grad_norms")?
        .as_object()
        .cloned()
        .ok_or_else(|| anyhow!("grad_norms is not an object"))?;
    let mut sq = 0.0f64;
    let mut trainable = 0;
    for (name, var) in vars {
        if !var.requires_grad() {
            continue;
        }
        trainable += 1;
        let g = var.grad();
        let n = if g.defined() {
            f64::try_from(g.to_kind(Kind::Double).norm())?
        } else {
            0.0
        };
        sq += n * n;
        let expected = norms
            .get(name)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| anyhow!("grad_norms lacks {name}"))?;
        let key = format!("grad.{name}");
        let (atol, rtol) = match case.json["tolerances"].get(&key) {
            Some(_) => case.tolerance(&key),
            None => (1e-5, 1e-3),
        };
        case.check_with(
            &format!("grad_norms.{name}"),
            &scalar(n),
            &scalar(expected),
            atol,
            rtol,
        )?;
    }
    if trainable != norms.len() {
        bail!(
            "{trainable} trainable parameters, grad_norms lists {}",
            norms.len()
        );
    }
    case.check("grad_norm", &scalar(sq.sqrt()))?;
    let (atol, rtol) = case.tolerance("grad_norm");
    case.check_with(
        "grad_norm (json)",
        &scalar(sq.sqrt()),
        &scalar(case.f64("grad_norm")?),
        atol,
        rtol,
    )?;
    for k in case
        .tensors
        .keys()
        .filter(|k| k.starts_with("grad.backbone."))
    {
        let name = &k["grad.".len()..];
        let var = vars
            .get(name)
            .ok_or_else(|| anyhow!("no parameter {name}"))?;
        case.check(k, &var.grad())?;
    }
    Ok(())
}
