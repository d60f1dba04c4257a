//! The Hugging Face layout of an MDLM checkpoint (the `kuleshov-group/mdlm-owt` repo): a folder
//! with `config.json` (`model_type: "mdlm"`) and `model.safetensors` holding the DiT under
//! `backbone.` names. Reading goes through hf-hub's offline cache only (no download): a repo id is
//! looked up in the local hub cache, a path is used as it is.

use super::atomic::write_atomically;
use super::native::write_safetensors;
use crate::backbone::load::load_strict;
use crate::backbone::{Dit, DitConfig, Precision};
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Tensor, nn};

pub const CONFIG_FILE: &str = "config.json";
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

/// The hub cache folder, as huggingface_hub finds it: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HF_HUB_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("HF_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache").join("huggingface").join("hub")
}

/// The folder that holds the model: `repo_or_dir` itself when it is an existing directory, else
/// the `refs/main` snapshot of that repo id in the hub cache (`hub_cache_dir()`).
pub fn resolve(repo_or_dir: &str) -> Result<PathBuf> {
    let p = Path::new(repo_or_dir);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    resolve_in(&hub_cache_dir(), repo_or_dir)
}

/// Looks `repo_id` up in the hub cache at `cache_dir` without touching the network. Both files
/// must be in the snapshot. `owner/name@revision` picks a branch or tag (`refs/<revision>`) or a
/// commit (`snapshots/<revision>`); without it, `main`.
pub fn resolve_in(cache_dir: &Path, repo_id: &str) -> Result<PathBuf> {
    let (repo_id, revision) = match repo_id.split_once('@') {
        Some((r, v)) if !v.is_empty() => (r, Some(v)),
        _ => (repo_id, None),
    };
    // Legacy ids have no owner (`gpt2-large`); anything else is `owner/name`.
    if repo_id.split('/').count() > 2 || repo_id.split('/').any(str::is_empty) {
        bail!("'{repo_id}' is neither an existing folder nor a Hugging Face repo id (owner/name)");
    }
    let cache = hf_hub::Cache::new(cache_dir.to_path_buf());
    let repo = match revision {
        Some(rev) => cache.repo(hf_hub::Repo::with_revision(
            repo_id.to_string(),
            hf_hub::RepoType::Model,
            rev.to_string(),
        )),
        None => cache.model(repo_id.to_string()),
    };
    // A commit hash has no `refs/` entry; its snapshot folder is named after it.
    let by_commit = |file: &str| -> Option<PathBuf> {
        let rev = revision?;
        let p = cache_dir
            .join(format!("models--{}", repo_id.replace('/', "--")))
            .join("snapshots")
            .join(rev)
            .join(file);
        p.is_file().then_some(p)
    };
    let shown = match revision {
        Some(rev) => format!("{repo_id}@{rev}"),
        None => repo_id.to_string(),
    };
    let mut dir = None;
    for file in [CONFIG_FILE, WEIGHTS_FILE] {
        let Some(path) = repo.get(file).or_else(|| by_commit(file)) else {
            bail!(
                "{file} of '{shown}' is not in the Hugging Face cache {} (offline lookup; download it first, e.g. `huggingface-cli download {repo_id}`, or pass a local folder)",
                cache_dir.display()
            );
        };
        dir = path.parent().map(Path::to_path_buf);
    }
    dir.ok_or_else(|| anyhow!("'{shown}': snapshot path has no parent"))
}

/// Reads `config.json` + `model.safetensors` from a folder.
pub fn load_dir(dir: &Path) -> Result<HfMdlm> {
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path)
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
    let config: HfMdlmConfig = serde_json::from_value(raw)
        .with_context(|| format!("{}: not an MDLM config", config_path.display()))?;
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

/// `resolve` then `load_dir`: a repo id (from the offline cache) or a local folder.
pub fn load(repo_or_dir: &str) -> Result<HfMdlm> {
    load_dir(&resolve(repo_or_dir)?)
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
