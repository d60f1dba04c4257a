//! The Hugging Face layout of an MDLM checkpoint (the `kuleshov-group/mdlm-owt` repo): a folder
//! with `config.json` (`model_type: "mdlm"`) and `model.safetensors` holding the DiT under
//! `backbone.` names. A path is used as it is; a repo id goes through [`crate::hub`] (the cache
//! first, else a download into it).

use super::native::write_safetensors;
use crate::atomic_file::write_atomically;
use crate::backbone::load::load_strict;
use crate::backbone::{Dit, DitConfig, Precision};
use crate::hub::Hub;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Tensor, nn};

pub const CONFIG_FILE: &str = crate::hub::CONFIG_FILE;
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const MODEL_TYPE: &str = "mdlm";

/// The fields of the HF `config.json` that shape the model (the hub config's names; they map to
/// `model.*` of the training config: hidden_dim = hidden_size, model_length = length).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HfMdlmConfig {
    /// Including the mask token.
    pub vocab_size: i64,
    pub model_length: i64,
    pub hidden_dim: i64,
    pub cond_dim: i64,
    pub n_blocks: i64,
    pub n_heads: i64,
    pub dropout: f64,
    pub time_conditioning: bool,
}

impl HfMdlmConfig {
    /// The DiT this config describes. The hub config does not carry the MLP ratio, the frequency
    /// embedding size or the rotary base: the reference's `models/dit.py` fixes them (4, 256,
    /// 10000).
    pub fn dit_config(&self) -> DitConfig {
        DitConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_dim,
            cond_dim: self.cond_dim,
            n_blocks: self.n_blocks,
            n_heads: self.n_heads,
            dropout: self.dropout,
            mlp_ratio: 4,
            frequency_embedding_size: 256,
            rotary_base: 10_000.0,
        }
    }
}

/// A loaded HF MDLM folder; tensors are on the CPU, keyed by their full `backbone.` names.
pub struct HfMdlm {
    pub dir: PathBuf,
    pub config: HfMdlmConfig,
    pub tensors: BTreeMap<String, Tensor>,
}

/// The folder that holds the model: `repo_or_dir` itself when it is an existing directory, else
/// the snapshot of that repo id (`owner/name[@revision]`) in the Hugging Face cache, downloaded
/// there first unless offline (see [`crate::hub`]).
pub fn resolve(repo_or_dir: &str) -> Result<PathBuf> {
    Hub::model_dir_from_env(repo_or_dir, check_config, &[WEIGHTS_FILE])
}

/// As [`resolve`], in the hub cache at `cache_dir` without touching the network.
pub fn resolve_in(cache_dir: &Path, repo_id: &str) -> Result<PathBuf> {
    resolve_with(&Hub::offline(cache_dir), repo_id)
}

/// As [`resolve`], through `hub`. A `config.json` that is not an MDLM's is refused before the
/// weights are fetched.
pub fn resolve_with(hub: &Hub, repo_or_dir: &str) -> Result<PathBuf> {
    hub.model_dir(repo_or_dir, check_config, &[WEIGHTS_FILE])
}

fn check_config(config: &Path) -> Result<()> {
    read_config(config).map(|_| ())
}

/// An MDLM `config.json`; fields beyond ours (`auto_map`, `architectures`, `torch_dtype`, ...)
/// are ignored, a `model_type` other than `mdlm` is refused.
pub fn read_config(config_path: &Path) -> Result<HfMdlmConfig> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let raw: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", config_path.display()))?;
    match raw.get("model_type").and_then(|v| v.as_str()) {
        Some(MODEL_TYPE) => {}
        other => bail!(
            "{}: model_type is {}, expected \"{MODEL_TYPE}\" (is this an MDLM checkpoint?)",
            config_path.display(),
            other.map_or("missing".to_string(), |s| format!("\"{s}\""))
        ),
    }
    serde_json::from_value(raw)
        .with_context(|| format!("{}: not an MDLM config", config_path.display()))
}

/// Reads `config.json` + `model.safetensors` from a folder.
pub fn load_dir(dir: &Path) -> Result<HfMdlm> {
    let config = read_config(&dir.join(CONFIG_FILE))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    if !weights_path.is_file() {
        bail!("{} is missing", weights_path.display());
    }
    let tensors = Tensor::read_safetensors(&weights_path)
        .with_context(|| format!("reading {}", weights_path.display()))?
        .into_iter()
        .collect();
    Ok(HfMdlm {
        dir: dir.to_path_buf(),
        config,
        tensors,
    })
}

/// `resolve` then `load_dir`: a repo id (cache first, else downloaded) or a local folder.
pub fn load(repo_or_dir: &str) -> Result<HfMdlm> {
    load_dir(&resolve(repo_or_dir)?)
}

/// As [`load`], through `hub`.
pub fn load_with(hub: &Hub, repo_or_dir: &str) -> Result<HfMdlm> {
    load_dir(&resolve_with(hub, repo_or_dir)?)
}

/// Builds a DiT under `vs.root() / "backbone"` and copies `tensors` (full `backbone.` names) into
/// it strictly. `backbone.rotary_emb.inv_freq` is a deterministic buffer: when the checkpoint
/// lacks it the freshly computed one is kept.
pub fn load_dit(
    vs: &nn::VarStore,
    cfg: &DitConfig,
    tensors: &BTreeMap<String, Tensor>,
    precision: Precision,
) -> Result<Dit> {
    let dit = Dit::new(vs.root() / "backbone", cfg, precision);
    const INV_FREQ: &str = "backbone.rotary_emb.inv_freq";
    let mut all: BTreeMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    if !all.contains_key(INV_FREQ)
        && let Some(v) = vs.variables().get(INV_FREQ)
    {
        all.insert(INV_FREQ.to_string(), v.copy());
    }
    load_strict(vs, &all, "backbone.")?;
    Ok(dit)
}

/// Writes an HF MDLM folder (created if needed): `config.json` (with `architectures: ["MDLM"]`,
/// `model_type: "mdlm"`) and `model.safetensors` holding `tensors` under the names given (pass
/// full `backbone.` names). Each file is replaced atomically.
pub fn export_hf(dir: &Path, config: &HfMdlmConfig, tensors: &[(String, Tensor)]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut json = serde_json::to_value(config)?;
    let obj = json
        .as_object_mut()
        .expect("a struct serialises to an object");
    obj.insert("architectures".into(), serde_json::json!(["MDLM"]));
    obj.insert("model_type".into(), serde_json::json!(MODEL_TYPE));
    obj.insert("torch_dtype".into(), serde_json::json!("float32"));
    let text = serde_json::to_string_pretty(&json)? + "\n";

    // `{"format": "pt"}` metadata, as `save_pretrained` writes.
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&dir.join(WEIGHTS_FILE), tensors, metadata, None)?;
    // The config last: a folder whose config is present has its weights too.
    write_atomically(&dir.join(CONFIG_FILE), None, |out| {
        out.write_all(text.as_bytes())?;
        Ok(())
    })
}
