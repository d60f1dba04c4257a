//! Copying named tensors into a built model, strictly: every model variable must be provided with
//! its exact shape, and nothing under the model's prefix may be left over (tch's own loader
//! silently ignores extra keys, which hides misnamed parameters).

use anyhow::{Result, bail};
use std::collections::BTreeMap;
use tch::{Tensor, nn};

/// `tensors` are keyed by full names (`backbone.blocks.0.attn_qkv.weight`); `prefix` selects
/// which of them belong to this store (e.g. `backbone.`).
pub fn load_strict(
    vs: &nn::VarStore,
    tensors: &BTreeMap<String, Tensor>,
    prefix: &str,
) -> Result<()> {
    let vars = vs.variables();
    for (name, var) in &vars {
        let Some(src) = tensors.get(name) else {
            bail!(
                "checkpoint lacks parameter '{name}' (shape {:?})",
                var.size()
            );
        };
        if src.size() != var.size() {
            bail!(
                "parameter '{name}': checkpoint has shape {:?}, model expects {:?}",
                src.size(),
                var.size()
            );
        }
        tch::no_grad(|| var.shallow_clone().copy_(src));
    }
    let extra: Vec<&String> = tensors
        .keys()
        .filter(|k| k.starts_with(prefix) && !vars.contains_key(*k))
        .collect();
    if !extra.is_empty() {
        bail!(
            "checkpoint has {} parameter(s) the model does not: {}",
            extra.len(),
            extra
                .iter()
                .take(5)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// (name, shape) of every variable, sorted: the key manifest a checkpoint must match.
pub fn manifest(vs: &nn::VarStore) -> Vec<(String, Vec<i64>)> {
    let mut m: Vec<_> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.size()))
        .collect();
    m.sort();
    m
}
