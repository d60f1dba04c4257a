//! Reading the reference's PyTorch Lightning checkpoint (`Trainer.save_checkpoint` of its
//! `Diffusion` module, `diffusion.py`) without executing anything. The file is a `torch.save` zip
//! archive (`checkpoint/torch_zip.rs`) whose `data.pkl` is run by a VM that only builds data
//! (`checkpoint/pickle.rs`).
//!
//! What a run needs is `state_dict` (`backbone.*`) and `ema` (`decay`, `num_updates`,
//! `shadow_params`: a list in the module's `parameters()` order, see [`dit_parameter_order`]).

use super::pickle::{Value, Vm};
use super::torch_zip::TorchZip;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

/// What mdlm uses from a Lightning checkpoint; tensors are on the CPU.
pub struct LightningCheckpoint {
    /// `checkpoint["state_dict"]`: every entry of the module's state dict (`backbone.*`, plus
    /// buffers such as `backbone.rotary_emb.inv_freq`).
    pub state_dict: BTreeMap<String, Tensor>,
    pub ema: Option<EmaState>,
    pub epoch: Option<i64>,
    pub global_step: Option<i64>,
}

/// `checkpoint["ema"]`, the reference's `ExponentialMovingAverage.state_dict()`.
pub struct EmaState {
    pub decay: f64,
    pub num_updates: Option<i64>,
    /// In the order of the module's trainable parameters (buffers excluded).
    pub shadow_params: Vec<Tensor>,
}

impl LightningCheckpoint {
    /// The EMA weights by name: shadow `i` is named `order[i]` (see [`dit_parameter_order`]); the
    /// state-dict entries that are not parameters (buffers) are carried over, so the result
    /// loads strictly like `state_dict`. Shapes are checked against `state_dict`.
    pub fn ema_state_dict(&self, order: &[String]) -> Result<BTreeMap<String, Tensor>> {
        let ema = self
            .ema
            .as_ref()
            .ok_or_else(|| anyhow!("the checkpoint has no \"ema\" entry"))?;
        if ema.shadow_params.len() != order.len() {
            bail!(
                "the checkpoint's EMA has {} shadow parameters, the model has {} parameters: is the model configured as the run that wrote it?",
                ema.shadow_params.len(),
                order.len()
            );
        }
        let mut out: BTreeMap<String, Tensor> = self
            .state_dict
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        for (name, shadow) in order.iter().zip(&ema.shadow_params) {
            let Some(raw) = self.state_dict.get(name) else {
                bail!("EMA parameter '{name}' is not in the checkpoint's state_dict");
            };
            if raw.size() != shadow.size() {
                bail!(
                    "EMA parameter '{name}': shadow has shape {:?}, state_dict {:?}",
                    shadow.size(),
                    raw.size()
                );
            }
            out.insert(name.clone(), shadow.shallow_clone());
        }
        Ok(out)
    }
}

/// The reference DiT's trainable parameters in `backbone.parameters()` order, which is the
/// order `models/dit.py` registers them in `__init__` (modules and parameters in assignment
/// order, recursively): `vocab_embed`, `sigma_map.mlp.{0,2}`, (`rotary_emb` has only a buffer),
/// each block's `norm1`, `attn_qkv`, `attn_out`, `norm2`, `mlp.{0,2}`, `adaLN_modulation`, then
/// `output_layer`'s `norm_final`, `linear`, `adaLN_modulation`. Only `n_blocks` varies with the
/// model size. The log-linear noise that follows in the EMA list has no parameters.
pub fn dit_parameter_order(n_blocks: i64) -> Vec<String> {
    let mut names: Vec<String> = [
        "vocab_embed.embedding",
        "sigma_map.mlp.0.weight",
        "sigma_map.mlp.0.bias",
        "sigma_map.mlp.2.weight",
        "sigma_map.mlp.2.bias",
    ]
    .iter()
    .map(|s| format!("backbone.{s}"))
    .collect();
    for i in 0..n_blocks {
        for s in [
            "norm1.weight",
            "attn_qkv.weight",
            "attn_out.weight",
            "norm2.weight",
            "mlp.0.weight",
            "mlp.0.bias",
            "mlp.2.weight",
            "mlp.2.bias",
            "adaLN_modulation.weight",
            "adaLN_modulation.bias",
        ] {
            names.push(format!("backbone.blocks.{i}.{s}"));
        }
    }
    for s in [
        "norm_final.weight",
        "linear.weight",
        "linear.bias",
        "adaLN_modulation.weight",
        "adaLN_modulation.bias",
    ] {
        names.push(format!("backbone.output_layer.{s}"));
    }
    names
}

/// The AR baseline's parameter order: the DiT's layers in the same order, without the
/// conditioning (`sigma_map`, `adaLN_modulation`) its causal blocks lack — the registration
/// order of the reference's `models/autoregressive.py` (`vocab_embed`, `blocks.i.{norm1,
/// attn_qkv, attn_out, norm2, mlp}`, `output_layer.{norm_final, linear}`). No fixture pins it;
/// [`LightningCheckpoint::ema_state_dict`] also checks every shape against the state dict.
pub fn ar_parameter_order(n_blocks: i64) -> Vec<String> {
    dit_parameter_order(n_blocks)
        .into_iter()
        .filter(|n| !n.contains("sigma_map") && !n.contains("adaLN_modulation"))
        .collect()
}

/// Reads a `.ckpt` file (memory-mapped; only `data.pkl` and the storages it names are touched).
pub fn read(path: &Path) -> Result<LightningCheckpoint> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the map is read-only and dropped before returning; a concurrent truncation of the
    // file by another process would be a usage error, as for any reader.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping {}", path.display()))?;
    read_bytes(&map).with_context(|| format!("reading Lightning checkpoint {}", path.display()))
}

/// Reads a `.ckpt` held in memory.
pub fn read_bytes(bytes: &[u8]) -> Result<LightningCheckpoint> {
    let mut zip = TorchZip::open(bytes)?;
    let pickle = zip.pickle()?;
    let top = Vm::new(zip).run(pickle).context("unpickling data.pkl")?;
    extract(&top)
}

fn extract(top: &Value) -> Result<LightningCheckpoint> {
    let Value::Dict(d) = top else {
        bail!("data.pkl does not hold a dict (got {})", top.type_name());
    };
    let d = d.borrow();
    let sd = dict_get(&d, "state_dict")
        .ok_or_else(|| anyhow!("the checkpoint has no \"state_dict\""))?;
    let Value::Dict(sd) = sd else {
        bail!("\"state_dict\" is a {}, not a dict", sd.type_name());
    };
    let mut state_dict = BTreeMap::new();
    for (k, v) in sd.borrow().iter() {
        let (Value::Str(k), Value::Tensor(t)) = (k, v) else {
            bail!(
                "state_dict entry is {} -> {}, expected str -> tensor",
                k.type_name(),
                v.type_name()
            );
        };
        state_dict.insert(k.to_string(), t.shallow_clone());
    }
    let ema = match dict_get(&d, "ema") {
        None | Some(Value::None) => None,
        Some(Value::Dict(e)) => Some(extract_ema(&e.borrow())?),
        Some(other) => bail!("\"ema\" is a {}, not a dict", other.type_name()),
    };
    let int = |k: &str| match dict_get(&d, k) {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    };
    Ok(LightningCheckpoint {
        state_dict,
        ema,
        epoch: int("epoch"),
        global_step: int("global_step"),
    })
}

/// `checkpoint["ema"]`'s entries.
fn extract_ema(e: &[(Value, Value)]) -> Result<EmaState> {
    let decay = match dict_get(e, "decay") {
        Some(Value::Float(x)) => *x,
        Some(Value::Int(x)) => *x as f64,
        other => bail!(
            "ema.decay is {}, expected a number",
            other.map_or("missing", |v| v.type_name())
        ),
    };
    let num_updates = match dict_get(e, "num_updates") {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    };
    let shadow_params = match dict_get(e, "shadow_params") {
        Some(Value::List(l)) => l
            .borrow()
            .iter()
            .map(|v| match v {
                Value::Tensor(t) => Ok(t.shallow_clone()),
                other => Err(anyhow!(
                    "ema.shadow_params holds a {}, expected tensors",
                    other.type_name()
                )),
            })
            .collect::<Result<Vec<_>>>()?,
        other => bail!(
            "ema.shadow_params is {}, expected a list",
            other.map_or("missing", |v| v.type_name())
        ),
    };
    Ok(EmaState {
        decay,
        num_updates,
        shadow_params,
    })
}

fn dict_get<'a>(d: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    d.iter()
        .find(|(k, _)| matches!(k, Value::Str(s) if &**s == key))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage_and_empty() {
        assert!(read_bytes(b"").is_err());
        assert!(read_bytes(&[0u8; 100]).is_err());
    }

    #[test]
    fn order_has_ten_per_block() {
        assert_eq!(dit_parameter_order(12).len(), 5 + 12 * 10 + 5);
    }
}
