//! mdlm's training checkpoint: ONE safetensors file holding every tensor of a run, with the run
//! state and the config in the header's `__metadata__`.
//!
//! Tensor names: the model's own (`backbone.…`), the EMA's `ema.backbone.…` (+ `ema.num_updates`),
//! the optimizer's `optim.…`. Metadata keys: `format` = `"mdlm-checkpoint"`, `version`, `state`
//! (JSON: global step, epoch, loader position, whatever the caller keeps) and `config` (the resolved
//! YAML), so every checkpoint carries the config that made it.

use crate::atomic_file::write_atomically;
use anyhow::{Context, Result, anyhow, bail};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub const FORMAT: &str = "mdlm-checkpoint";
/// Bumped whenever a reader of the previous version would misread a new file.
pub const VERSION: u32 = 1;

/// A loaded checkpoint; tensors are on the CPU.
pub struct Checkpoint {
    pub tensors: BTreeMap<String, Tensor>,
    pub state: Value,
    pub config_yaml: String,
}

impl Checkpoint {
    /// Every tensor as (name, tensor) sharing storage, the shape `AdamW::load_state` and
    /// `Ema::load_state` take.
    pub fn tensor_list(&self) -> Vec<(String, Tensor)> {
        self.tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect()
    }
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        other => bail!("tensors of kind {other:?} cannot be stored in a checkpoint"),
    })
}

fn kind_of(dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        other => bail!("dtype {other:?} is not supported"),
    })
}

/// Writes a checkpoint atomically: an interrupted or failed save leaves an existing file at
/// `path` as it was. Tensors may live on any device; they are copied to the CPU one at a time, so
/// the extra host memory is that of the largest tensor.
pub fn save(
    path: &Path,
    tensors: &[(String, Tensor)],
    state: &Value,
    config_yaml: &str,
) -> Result<()> {
    save_impl(path, tensors, state, config_yaml, None)
}

/// `save` whose file write fails after `bytes` bytes, as a crash or a full disk would.
pub fn save_interrupted_after(
    path: &Path,
    tensors: &[(String, Tensor)],
    state: &Value,
    config_yaml: &str,
    bytes: u64,
) -> Result<()> {
    save_impl(path, tensors, state, config_yaml, Some(bytes))
}

fn save_impl(
    path: &Path,
    tensors: &[(String, Tensor)],
    state: &Value,
    config_yaml: &str,
    fail_after: Option<u64>,
) -> Result<()> {
    let context = || format!("saving checkpoint {}", path.display());
    // Our checkpoint format: safetensors with the state and config in the metadata.
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("version".to_string(), VERSION.to_string()),
        (
            "state".to_string(),
            serde_json::to_string(state).with_context(context)?,
        ),
        ("config".to_string(), config_yaml.to_string()),
    ]);
    write_safetensors(path, tensors, metadata, fail_after).with_context(context)
}

/// `tensors` as one safetensors file with `metadata`, written atomically (`fail_after`: see
/// [`write_atomically`]).
pub(super) fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
    fail_after: Option<u64>,
) -> Result<()> {
    let (header, order) = safetensors_header(tensors, metadata)?;
    write_atomically(path, fail_after, |out| {
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        for i in order {
            let (name, t) = &tensors[i];
            write_tensor(out, t).with_context(|| format!("writing tensor {name}"))?;
        }
        Ok(())
    })
}

/// A safetensors header (padded to 8 bytes) with `metadata`, and the order in which tensor data
/// must follow: largest element size first, then by name, as the safetensors crate lays them out,
/// so every tensor's data starts aligned to its element size.
fn safetensors_header(
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<(Vec<u8>, Vec<usize>)> {
    let mut seen = HashSet::new();
    for (name, _) in tensors {
        if !seen.insert(name.as_str()) {
            bail!("tensor name {name} appears twice");
        }
    }
    let dtypes = tensors
        .iter()
        .map(|(name, t)| dtype_of(t.kind()).with_context(|| format!("tensor {name}")))
        .collect::<Result<Vec<_>>>()?;
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        dtypes[b]
            .cmp(&dtypes[a])
            .then_with(|| tensors[a].0.cmp(&tensors[b].0))
    });
    let mut offset = 0usize;
    let mut infos = Vec::with_capacity(tensors.len());
    for &i in &order {
        let (name, t) = &tensors[i];
        let n = t.numel() * t.kind().elt_size_in_bytes();
        infos.push((
            name.clone(),
            TensorInfo {
                dtype: dtypes[i],
                shape: t.size().iter().map(|&d| d as usize).collect(),
                data_offsets: (offset, offset + n),
            },
        ));
        offset += n;
    }
    let metadata = Metadata::new(Some(metadata), infos).map_err(|e| anyhow!("{e}"))?;
    let mut header = serde_json::to_vec(&metadata)?;
    header.resize(header.len().next_multiple_of(8), b' ');
    Ok((header, order))
}

fn write_tensor(out: &mut dyn Write, t: &Tensor) -> Result<()> {
    let cpu = t.detach().to_device(Device::Cpu).contiguous();
    let n = cpu.numel() * cpu.kind().elt_size_in_bytes();
    if n == 0 {
        return Ok(());
    }
    // SAFETY: `cpu` is a contiguous CPU tensor of exactly `n` bytes and outlives the slice.
    let bytes = unsafe { std::slice::from_raw_parts(cpu.data_ptr() as *const u8, n) };
    out.write_all(bytes)?;
    Ok(())
}

/// Reads a checkpoint written by `save` (memory-mapped; tensors are copied out to the CPU).
pub fn load(path: &Path) -> Result<Checkpoint> {
    let shown = path.display();
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("checkpoint {shown} does not exist"),
        _ => anyhow!("cannot open checkpoint {shown}: {e}"),
    })?;
    let len = file
        .metadata()
        .with_context(|| format!("reading checkpoint {shown}"))?
        .len();
    if len < 8 {
        bail!(
            "checkpoint {shown} is truncated or corrupt: {len} bytes, shorter than a safetensors header"
        );
    }
    // SAFETY: the file is only read; `save` never rewrites a checkpoint in place (it renames a new
    // file over it), so the mapping does not change under us.
    let mmap = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("memory-mapping checkpoint {shown}"))?;
    let (header_len, metadata) =
        SafeTensors::read_metadata(&mmap).map_err(|e| describe(path, e))?;
    let meta = metadata.metadata().clone().unwrap_or_default();
    match meta.get("format").map(String::as_str) {
        Some(FORMAT) => {}
        Some(other) => bail!(
            "{shown} is not an mdlm checkpoint (format tag \"{other}\", expected \"{FORMAT}\")"
        ),
        None => bail!(
            "{shown} is a safetensors file but not an mdlm checkpoint (no \"format\" tag in its metadata; model weights alone, e.g. a Hugging Face export, load through another path)"
        ),
    }
    let version: u32 = meta
        .get("version")
        .ok_or_else(|| anyhow!("checkpoint {shown} has no \"version\" in its metadata"))?
        .parse()
        .map_err(|e| anyhow!("checkpoint {shown}: version is not a number ({e})"))?;
    if version > VERSION {
        bail!(
            "checkpoint {shown} has format version {version}, newer than this build reads (up to {VERSION}); HINT: load it with the mdlm that wrote it or a newer one"
        );
    }
    let state: Value = serde_json::from_str(
        meta.get("state")
            .ok_or_else(|| anyhow!("checkpoint {shown} has no \"state\" in its metadata"))?,
    )
    .with_context(|| format!("checkpoint {shown}: state is not JSON"))?;
    let config_yaml = meta
        .get("config")
        .ok_or_else(|| anyhow!("checkpoint {shown} has no \"config\" in its metadata"))?
        .clone();

    let data = &mmap[8 + header_len..];
    let mut tensors = BTreeMap::new();
    for (name, info) in metadata.tensors() {
        let kind = kind_of(info.dtype).with_context(|| format!("checkpoint {shown}: {name}"))?;
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let (start, end) = info.data_offsets;
        let t = Tensor::f_from_data_size(&data[start..end], &shape, kind)
            .with_context(|| format!("checkpoint {shown}: reading tensor {name}"))?;
        tensors.insert(name, t);
    }
    Ok(Checkpoint {
        tensors,
        state,
        config_yaml,
    })
}

fn describe(path: &Path, e: SafeTensorError) -> anyhow::Error {
    let shown = path.display();
    let why = match &e {
        SafeTensorError::HeaderTooSmall
        | SafeTensorError::InvalidHeaderLength
        | SafeTensorError::MetadataIncompleteBuffer => {
            "its size does not match what its header promises; was the write interrupted?"
        }
        SafeTensorError::HeaderTooLarge
        | SafeTensorError::InvalidHeader(_)
        | SafeTensorError::InvalidHeaderDeserialization(_) => {
            "its header is unreadable; is it a safetensors file?"
        }
        _ => "its header is inconsistent",
    };
    anyhow!("checkpoint {shown} is truncated or corrupt: {why} ({e})")
}

/// Copies `prefix + name` from the checkpoint into each of `params` (under no_grad, onto their
/// device and dtype). Fails, before copying anything, on a missing key, a shape mismatch, or an
/// unexpected key: a checkpoint key under `prefix` + one of the params' top-level modules
/// (`backbone.`) that no parameter claims. tch's own loader ignores those; here they mean the
/// checkpoint was made by a different model. The scope stops at the top-level modules because
/// other stores share the namespace: `ema.` and `optim.` at the root, `ema.num_updates` under
/// `ema.`.
pub fn load_into(params: &[(String, Tensor)], prefix: &str, ckpt: &Checkpoint) -> Result<()> {
    let mut problems = Vec::new();
    let mut sources = Vec::with_capacity(params.len());
    for (name, p) in params {
        let key = format!("{prefix}{name}");
        match ckpt.tensors.get(&key) {
            None => problems.push(format!("missing key {key}")),
            Some(t) if t.size() != p.size() => problems.push(format!(
                "shape mismatch for {key}: checkpoint {:?}, model {:?}",
                t.size(),
                p.size()
            )),
            Some(t) => sources.push(t),
        }
    }
    let wanted: HashSet<String> = params.iter().map(|(n, _)| format!("{prefix}{n}")).collect();
    let modules: HashSet<&str> = params
        .iter()
        .map(|(n, _)| n.split('.').next().unwrap_or(n))
        .collect();
    let in_scope = |key: &str| {
        key.strip_prefix(prefix).is_some_and(|rest| {
            let top = rest.split('.').next().unwrap_or(rest);
            modules.contains(top)
        })
    };
    for k in ckpt.tensors.keys() {
        if in_scope(k) && !wanted.contains(k) {
            problems.push(format!("unexpected key {k}"));
        }
    }
    if !problems.is_empty() {
        let total = problems.len();
        let shown: Vec<String> = problems.into_iter().take(8).collect();
        let more = if total > shown.len() {
            format!("; and {} more", total - shown.len())
        } else {
            String::new()
        };
        bail!(
            "checkpoint does not fit the model (prefix \"{prefix}\"): {}{more}",
            shown.join("; ")
        );
    }
    tch::no_grad(|| {
        for ((_, p), src) in params.iter().zip(sources) {
            p.shallow_clone().copy_(src);
        }
    });
    Ok(())
}
