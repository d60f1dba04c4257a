//! Reading the reference's PyTorch Lightning checkpoint (`Trainer.save_checkpoint` of its
//! `Diffusion` module, `diffusion.py`) without executing anything. The file is a `torch.save` zip
//! archive: `<prefix>/data.pkl` (a protocol-2 pickle) and `<prefix>/data/<key>` (raw
//! little-endian storages, stored uncompressed). The pickle is run by a small VM that knows
//! exactly the opcodes such files use; `torch._utils._rebuild_tensor_v2` becomes a tch tensor,
//! `collections.OrderedDict` / `defaultdict` a dict, and every other global (omegaconf,
//! transformers, tokenizers, ...) an inert placeholder that is never called.
//!
//! What a run needs is `state_dict` (`backbone.*`) and `ema` (`decay`, `num_updates`,
//! `shadow_params`: a list in the module's `parameters()` order, see [`dit_parameter_order`]).

use anyhow::{Context, Result, anyhow, bail};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;
use tch::{Kind, Tensor};

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
    let zip = Zip::parse(bytes)?;
    let pkl_name = zip
        .names()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .ok_or_else(|| anyhow!("the archive has no data.pkl: not a torch.save checkpoint"))?
        .to_string();
    let prefix = pkl_name.strip_suffix("data.pkl").unwrap_or("").to_string();
    if let Some(order) = zip.get(&format!("{prefix}byteorder"))
        && order? != b"little"
    {
        bail!("the checkpoint's storages are not little-endian");
    }
    let pickle = zip.get(&pkl_name).expect("listed")?;
    let mut vm = Vm {
        zip: &zip,
        prefix,
        storages: HashMap::new(),
    };
    let top = vm.run(pickle).context("unpickling data.pkl")?;
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
        Some(Value::Dict(e)) => {
            let e = e.borrow();
            let decay = match dict_get(&e, "decay") {
                Some(Value::Float(x)) => *x,
                Some(Value::Int(x)) => *x as f64,
                other => bail!(
                    "ema.decay is {}, expected a number",
                    other.map_or("missing", |v| v.type_name())
                ),
            };
            let num_updates = match dict_get(&e, "num_updates") {
                Some(Value::Int(n)) => Some(*n),
                _ => None,
            };
            let shadow_params = match dict_get(&e, "shadow_params") {
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
            Some(EmaState {
                decay,
                num_updates,
                shadow_params,
            })
        }
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

fn dict_get<'a>(d: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    d.iter()
        .find(|(k, _)| matches!(k, Value::Str(s) if &**s == key))
        .map(|(_, v)| v)
}

// ---------------------------------------------------------------------------------------------
// The zip container: only what torch.save writes (stored entries, optionally zip64).

struct Zip<'a> {
    bytes: &'a [u8],
    /// name -> (offset of the local header, stored size, compression method)
    entries: Vec<(String, u64, u64, u16)>,
}

fn le16(b: &[u8], at: usize) -> Result<u16> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| anyhow!("zip record cut short"))
}

fn le32(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap()))
        .ok_or_else(|| anyhow!("zip record cut short"))
}

fn le64(b: &[u8], at: usize) -> Result<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
        .ok_or_else(|| anyhow!("zip record cut short"))
}

impl<'a> Zip<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Zip<'a>> {
        const EOCD: u32 = 0x0605_4b50;
        let not_zip = || {
            anyhow!(
                "not a complete zip archive (no end-of-central-directory record): truncated, or not a torch.save checkpoint"
            )
        };
        if bytes.len() < 22 {
            return Err(not_zip());
        }
        // The end record is the last 22 bytes plus a comment of at most 64 KiB.
        let lowest = bytes.len().saturating_sub(22 + 0xffff);
        let eocd = (lowest..=bytes.len() - 22)
            .rev()
            .find(|&i| le32(bytes, i).ok() == Some(EOCD))
            .ok_or_else(not_zip)?;
        let mut count = le16(bytes, eocd + 10)? as u64;
        let mut cd_size = le32(bytes, eocd + 12)? as u64;
        let mut cd_offset = le32(bytes, eocd + 16)? as u64;
        if count == 0xffff || cd_size == 0xffff_ffff || cd_offset == 0xffff_ffff {
            // zip64: a locator sits just before the end record and points at the zip64 record.
            let loc = eocd
                .checked_sub(20)
                .ok_or_else(|| anyhow!("zip64 locator missing"))?;
            if le32(bytes, loc)? != 0x0706_4b50 {
                bail!("zip64 locator missing");
            }
            let rec = usize::try_from(le64(bytes, loc + 8)?)?;
            if le32(bytes, rec)? != 0x0606_4b50 {
                bail!("zip64 end record missing");
            }
            count = le64(bytes, rec + 32)?;
            cd_size = le64(bytes, rec + 40)?;
            cd_offset = le64(bytes, rec + 48)?;
        }
        let cd_end = cd_offset
            .checked_add(cd_size)
            .filter(|&e| e <= bytes.len() as u64)
            .ok_or_else(|| anyhow!("zip central directory lies outside the file"))?;
        let mut at = usize::try_from(cd_offset)?;
        let mut entries = Vec::new();
        for _ in 0..count {
            if at as u64 + 46 > cd_end || le32(bytes, at)? != 0x0201_4b50 {
                bail!("zip central directory is corrupt");
            }
            let method = le16(bytes, at + 10)?;
            let mut csize = le32(bytes, at + 20)? as u64;
            let mut usize_ = le32(bytes, at + 24)? as u64;
            let n_name = le16(bytes, at + 28)? as usize;
            let n_extra = le16(bytes, at + 30)? as usize;
            let n_comment = le16(bytes, at + 32)? as usize;
            let mut local = le32(bytes, at + 42)? as u64;
            let name = bytes
                .get(at + 46..at + 46 + n_name)
                .ok_or_else(|| anyhow!("zip central directory is corrupt"))?;
            let name = String::from_utf8_lossy(name).into_owned();
            let extra = bytes
                .get(at + 46 + n_name..at + 46 + n_name + n_extra)
                .ok_or_else(|| anyhow!("zip central directory is corrupt"))?;
            // zip64 extra field: the 8-byte values of whichever fields are 0xffffffff, in order.
            let mut e = 0;
            while e + 4 <= extra.len() {
                let (id, len) = (le16(extra, e)?, le16(extra, e + 2)? as usize);
                if id == 0x0001 {
                    let mut f = e + 4;
                    for field in [&mut usize_, &mut csize, &mut local] {
                        if *field == 0xffff_ffff {
                            *field = le64(extra, f)?;
                            f += 8;
                        }
                    }
                }
                e += 4 + len;
            }
            let _ = usize_;
            entries.push((name, local, csize, method));
            at += 46 + n_name + n_extra + n_comment;
        }
        Ok(Zip { bytes, entries })
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.0.as_str())
    }

    /// The bytes of an entry, if the archive has it.
    fn get(&self, name: &str) -> Option<Result<&'a [u8]>> {
        let (_, local, size, method) = self.entries.iter().find(|e| e.0 == name)?;
        Some((|| {
            if *method != 0 {
                bail!(
                    "zip entry {name} is compressed (method {method}); torch.save stores entries uncompressed"
                );
            }
            let local = usize::try_from(*local)?;
            if le32(self.bytes, local)? != 0x0403_4b50 {
                bail!("zip entry {name}: local header missing");
            }
            let start = local
                + 30
                + le16(self.bytes, local + 26)? as usize
                + le16(self.bytes, local + 28)? as usize;
            let end = start
                .checked_add(usize::try_from(*size)?)
                .ok_or_else(|| anyhow!("zip entry {name}: size overflows"))?;
            self.bytes
                .get(start..end)
                .ok_or_else(|| anyhow!("zip entry {name} extends past the end of the file"))
        })())
    }
}

// ---------------------------------------------------------------------------------------------
// The pickle VM.

/// A value on the VM's stack. Containers are shared (`Rc`) because the memo hands out the same
/// object again; cycles through omegaconf's `_parent` back-references leak a few kilobytes per
/// read, which is accepted.
#[derive(Clone)]
#[allow(dead_code)] // payloads of inert values are kept for debugging, not read
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits (LONG1 / LONG4), kept as its little-endian bytes.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    List(Rc<RefCell<Vec<Value>>>),
    Tuple(Rc<Vec<Value>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A `GLOBAL` reference, never resolved to code.
    Global(Rc<str>),
    /// An instance of an unknown class (NEWOBJ / REDUCE of an unknown global), inert.
    Object(Rc<RefCell<Object>>),
    Storage(Rc<Storage>),
    Tensor(Rc<Tensor>),
}

#[allow(dead_code)] // kept for debugging: what the placeholder stood for
struct Object {
    class: Rc<str>,
    args: Vec<Value>,
    state: Option<Value>,
}

/// A storage copied once out of the archive as a flat tensor; tensors are views of it, as in
/// PyTorch (several tensors may share one storage).
struct Storage {
    flat: Tensor,
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Object(_) => "object",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    fn as_int(&self) -> Result<i64> {
        match self {
            Value::Int(n) => Ok(*n),
            Value::Bool(b) => Ok(*b as i64),
            other => bail!("expected an int, got {}", other.type_name()),
        }
    }

    fn as_ints(&self) -> Result<Vec<i64>> {
        match self {
            Value::Tuple(t) => t.iter().map(Value::as_int).collect(),
            Value::List(l) => l.borrow().iter().map(Value::as_int).collect(),
            other => bail!("expected a tuple of ints, got {}", other.type_name()),
        }
    }
}

enum Slot {
    Mark,
    V(Value),
}

struct Vm<'z, 'a> {
    zip: &'z Zip<'a>,
    prefix: String,
    storages: HashMap<String, Rc<Storage>>,
}

fn storage_kind(class: &str) -> Result<Kind> {
    Ok(match class {
        "torch.FloatStorage" => Kind::Float,
        "torch.DoubleStorage" => Kind::Double,
        "torch.HalfStorage" => Kind::Half,
        "torch.BFloat16Storage" => Kind::BFloat16,
        "torch.LongStorage" => Kind::Int64,
        "torch.IntStorage" => Kind::Int,
        "torch.ShortStorage" => Kind::Int16,
        "torch.CharStorage" => Kind::Int8,
        "torch.ByteStorage" => Kind::Uint8,
        "torch.BoolStorage" => Kind::Bool,
        other => bail!("unsupported storage type {other}"),
    })
}

impl Vm<'_, '_> {
    fn run(&mut self, code: &[u8]) -> Result<Value> {
        let mut stack: Vec<Slot> = Vec::new();
        let mut memo: HashMap<u32, Value> = HashMap::new();
        let mut pc = 0usize;
        let take = |pc: &mut usize, n: usize| -> Result<&[u8]> {
            let s = code
                .get(*pc..*pc + n)
                .ok_or_else(|| anyhow!("pickle ends inside an opcode argument"))?;
            *pc += n;
            Ok(s)
        };
        fn pop(stack: &mut Vec<Slot>) -> Result<Value> {
            match stack.pop() {
                Some(Slot::V(v)) => Ok(v),
                Some(Slot::Mark) => bail!("unexpected MARK on the pickle stack"),
                None => bail!("pickle stack underflow"),
            }
        }
        fn pop_mark(stack: &mut Vec<Slot>) -> Result<Vec<Value>> {
            let mut items = Vec::new();
            loop {
                match stack.pop() {
                    Some(Slot::V(v)) => items.push(v),
                    Some(Slot::Mark) => break,
                    None => bail!("pickle stack has no MARK"),
                }
            }
            items.reverse();
            Ok(items)
        }
        fn top(stack: &mut [Slot]) -> Result<&Value> {
            match stack.last() {
                Some(Slot::V(v)) => Ok(v),
                _ => bail!("pickle stack underflow"),
            }
        }
        fn set_items(target: &Value, kv: Vec<Value>) -> Result<()> {
            let Value::Dict(d) = target else {
                // SETITEM(S) on a placeholder object (a dict subclass we do not know): ignore.
                if matches!(target, Value::Object(_)) {
                    return Ok(());
                }
                bail!("SETITEMS on a {}", target.type_name());
            };
            if !kv.len().is_multiple_of(2) {
                bail!("SETITEMS with an odd number of items");
            }
            let mut d = d.borrow_mut();
            let mut it = kv.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Value::Str(ks) = &k
                    && let Some(slot) = d
                        .iter_mut()
                        .find(|(k2, _)| matches!(k2, Value::Str(s) if s == ks))
                {
                    slot.1 = v;
                    continue;
                }
                d.push((k, v));
            }
            Ok(())
        }
        loop {
            let at = pc;
            let op = *code
                .get(pc)
                .ok_or_else(|| anyhow!("pickle ends without STOP"))?;
            pc += 1;
            let push = |stack: &mut Vec<Slot>, v: Value| stack.push(Slot::V(v));
            match op {
                0x80 => {
                    // PROTO
                    let p = take(&mut pc, 1)?[0];
                    if p > 5 {
                        bail!("pickle protocol {p} is not supported");
                    }
                }
                b'.' => return pop(&mut stack), // STOP
                b'(' => stack.push(Slot::Mark),
                b'N' => push(&mut stack, Value::None),
                0x88 => push(&mut stack, Value::Bool(true)),
                0x89 => push(&mut stack, Value::Bool(false)),
                b'J' => {
                    let b = take(&mut pc, 4)?;
                    push(
                        &mut stack,
                        Value::Int(i32::from_le_bytes(b.try_into().unwrap()) as i64),
                    );
                }
                b'K' => {
                    let b = take(&mut pc, 1)?[0];
                    push(&mut stack, Value::Int(b as i64));
                }
                b'M' => {
                    let b = take(&mut pc, 2)?;
                    push(
                        &mut stack,
                        Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64),
                    );
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4: two's complement, little-endian
                    let n = if op == 0x8a {
                        take(&mut pc, 1)?[0] as usize
                    } else {
                        let b = take(&mut pc, 4)?;
                        usize::try_from(i32::from_le_bytes(b.try_into().unwrap()))
                            .map_err(|_| anyhow!("negative LONG4 length"))?
                    };
                    let b = take(&mut pc, n)?;
                    if n <= 8 {
                        let neg = b.last().is_some_and(|&x| x & 0x80 != 0);
                        let mut full = [if neg { 0xff } else { 0 }; 8];
                        full[..n].copy_from_slice(b);
                        push(&mut stack, Value::Int(i64::from_le_bytes(full)));
                    } else {
                        push(&mut stack, Value::BigInt(b.into()));
                    }
                }
                b'G' => {
                    let b = take(&mut pc, 8)?;
                    push(
                        &mut stack,
                        Value::Float(f64::from_be_bytes(b.try_into().unwrap())),
                    );
                }
                b'X' | 0x8c => {
                    // BINUNICODE / SHORT_BINUNICODE
                    let n = if op == b'X' {
                        u32::from_le_bytes(take(&mut pc, 4)?.try_into().unwrap()) as usize
                    } else {
                        take(&mut pc, 1)?[0] as usize
                    };
                    let s = std::str::from_utf8(take(&mut pc, n)?)
                        .map_err(|_| anyhow!("invalid UTF-8 in a pickled string"))?;
                    push(&mut stack, Value::Str(s.into()));
                }
                b'B' | b'C' => {
                    // BINBYTES / SHORT_BINBYTES
                    let n = if op == b'B' {
                        u32::from_le_bytes(take(&mut pc, 4)?.try_into().unwrap()) as usize
                    } else {
                        take(&mut pc, 1)?[0] as usize
                    };
                    let b = take(&mut pc, n)?;
                    push(&mut stack, Value::Bytes(b.into()));
                }
                b'}' => push(&mut stack, Value::Dict(Rc::default())),
                b']' => push(&mut stack, Value::List(Rc::default())),
                b')' => push(&mut stack, Value::Tuple(Rc::default())),
                b'a' => {
                    let v = pop(&mut stack)?;
                    match top(&mut stack)? {
                        Value::List(l) => l.borrow_mut().push(v),
                        Value::Object(_) => {}
                        other => bail!("APPEND on a {}", other.type_name()),
                    }
                }
                b'e' => {
                    let items = pop_mark(&mut stack)?;
                    match top(&mut stack)? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        Value::Object(_) => {}
                        other => bail!("APPENDS on a {}", other.type_name()),
                    }
                }
                b's' => {
                    let v = pop(&mut stack)?;
                    let k = pop(&mut stack)?;
                    set_items(top(&mut stack)?, vec![k, v])?;
                }
                b'u' => {
                    let items = pop_mark(&mut stack)?;
                    set_items(top(&mut stack)?, items)?;
                }
                b't' => {
                    let items = pop_mark(&mut stack)?;
                    push(&mut stack, Value::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = (0..n)
                        .map(|_| pop(&mut stack))
                        .collect::<Result<Vec<_>>>()?;
                    items.reverse();
                    push(&mut stack, Value::Tuple(Rc::new(items)));
                }
                b'c' => {
                    let line = |pc: &mut usize| -> Result<String> {
                        let rest = code.get(*pc..).unwrap_or_default();
                        let n = rest
                            .iter()
                            .position(|&c| c == b'\n')
                            .ok_or_else(|| anyhow!("GLOBAL without a newline"))?;
                        *pc += n + 1;
                        Ok(String::from_utf8_lossy(&rest[..n]).into_owned())
                    };
                    let module = line(&mut pc)?;
                    let name = line(&mut pc)?;
                    push(&mut stack, Value::Global(format!("{module}.{name}").into()));
                }
                b'R' | 0x81 => {
                    // REDUCE (callable, args) / NEWOBJ (cls, args)
                    let args = pop(&mut stack)?;
                    let callable = pop(&mut stack)?;
                    let v = self.call(&callable, args, op == 0x81)?;
                    push(&mut stack, v);
                }
                b'b' => {
                    let state = pop(&mut stack)?;
                    match top(&mut stack)? {
                        Value::Object(o) => o.borrow_mut().state = Some(state),
                        // OrderedDict's state is its attribute dict (`_metadata`): not needed.
                        Value::Dict(_) => {}
                        other => bail!("BUILD on a {}", other.type_name()),
                    }
                }
                b'Q' => {
                    let pid = pop(&mut stack)?;
                    let v = self.persistent_load(&pid)?;
                    push(&mut stack, v);
                }
                b'h' | b'j' => {
                    let i = if op == b'h' {
                        take(&mut pc, 1)?[0] as u32
                    } else {
                        u32::from_le_bytes(take(&mut pc, 4)?.try_into().unwrap())
                    };
                    let v = memo
                        .get(&i)
                        .cloned()
                        .ok_or_else(|| anyhow!("pickle memo has no entry {i}"))?;
                    push(&mut stack, v);
                }
                b'q' | b'r' => {
                    let i = if op == b'q' {
                        take(&mut pc, 1)?[0] as u32
                    } else {
                        u32::from_le_bytes(take(&mut pc, 4)?.try_into().unwrap())
                    };
                    memo.insert(i, top(&mut stack)?.clone());
                }
                b'0' => {
                    stack
                        .pop()
                        .ok_or_else(|| anyhow!("POP on an empty stack"))?;
                }
                b'2' => {
                    let v = top(&mut stack)?.clone();
                    push(&mut stack, v);
                }
                other => bail!(
                    "unsupported pickle opcode 0x{other:02x} at byte {at} (this reader knows the opcodes torch.save writes under protocol 2)"
                ),
            }
        }
    }

    /// REDUCE / NEWOBJ: the handful of globals that build data are interpreted; every other
    /// callable yields an inert placeholder.
    fn call(&mut self, callable: &Value, args: Value, newobj: bool) -> Result<Value> {
        let Value::Global(name) = callable else {
            bail!("REDUCE on a {}, not a global", callable.type_name());
        };
        let args = match args {
            Value::Tuple(t) => t.as_ref().clone(),
            other => bail!("REDUCE arguments are a {}, not a tuple", other.type_name()),
        };
        Ok(match (&**name, newobj) {
            ("torch._utils._rebuild_tensor_v2", false) => {
                Value::Tensor(Rc::new(rebuild_tensor(&args)?))
            }
            ("collections.OrderedDict", _) | ("collections.defaultdict", _) => {
                Value::Dict(Rc::default())
            }
            ("_codecs.encode", false) => match args.first() {
                // protocol 2 writes bytes as encode(latin-1 text, "latin1")
                Some(Value::Str(s)) => Value::Bytes(s.chars().map(|c| c as u32 as u8).collect()),
                _ => Value::Bytes(Rc::from([])),
            },
            _ => Value::Object(Rc::new(RefCell::new(Object {
                class: name.clone(),
                args,
                state: None,
            }))),
        })
    }

    /// `('storage', torch.XStorage, key, location, numel)` → the storage's bytes.
    fn persistent_load(&mut self, pid: &Value) -> Result<Value> {
        let Value::Tuple(t) = pid else {
            bail!("persistent id is a {}, not a tuple", pid.type_name());
        };
        let (Some(Value::Str(tag)), Some(Value::Global(class)), Some(Value::Str(key))) =
            (t.first(), t.get(1), t.get(2))
        else {
            bail!("persistent id is not ('storage', <storage type>, key, ...)");
        };
        if &**tag != "storage" {
            bail!("unsupported persistent id type '{tag}'");
        }
        let numel = t.get(4).map(Value::as_int).transpose()?.unwrap_or(-1);
        if let Some(s) = self.storages.get(&**key) {
            return Ok(Value::Storage(s.clone()));
        }
        let kind = storage_kind(class)?;
        let entry = format!("{}data/{key}", self.prefix);
        let bytes = self
            .zip
            .get(&entry)
            .ok_or_else(|| anyhow!("storage {key} is missing from the archive ({entry})"))??;
        let elt = kind.elt_size_in_bytes();
        if numel >= 0 && (bytes.len() as u64) < numel as u64 * elt as u64 {
            bail!(
                "storage {key} holds {} bytes, fewer than its {numel} elements need",
                bytes.len()
            );
        }
        let n = bytes.len() / elt;
        let flat = Tensor::from_data_size(&bytes[..n * elt], &[n as i64], kind);
        let s = Rc::new(Storage { flat });
        self.storages.insert(key.to_string(), s.clone());
        Ok(Value::Storage(s))
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks)`,
/// with every index checked against the storage before any memory is touched.
fn rebuild_tensor(args: &[Value]) -> Result<Tensor> {
    let (Some(Value::Storage(s)), Some(offset), Some(size), Some(stride)) =
        (args.first(), args.get(1), args.get(2), args.get(3))
    else {
        bail!("_rebuild_tensor_v2 called without (storage, offset, size, stride)");
    };
    let offset = offset.as_int()?;
    let size = size.as_ints()?;
    let stride = stride.as_ints()?;
    if size.len() != stride.len() || offset < 0 || size.iter().chain(&stride).any(|&d| d < 0) {
        bail!(
            "_rebuild_tensor_v2: bad geometry (size {size:?}, stride {stride:?}, offset {offset})"
        );
    }
    let available = s.flat.numel() as i64;
    let numel: i64 = size.iter().product();
    if numel > 0 {
        let last = size
            .iter()
            .zip(&stride)
            .try_fold(offset, |acc, (&n, &st)| {
                (n - 1).checked_mul(st).and_then(|x| acc.checked_add(x))
            })
            .ok_or_else(|| anyhow!("_rebuild_tensor_v2: geometry overflows"))?;
        if last >= available {
            bail!(
                "tensor of size {size:?} (stride {stride:?}, offset {offset}) needs {} elements, its storage has {available}",
                last + 1
            );
        }
    }
    // A view (shared memory) when the geometry is contiguous, else a compact copy.
    Ok(s.flat.as_strided(&size, &stride, offset).contiguous())
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
    fn unknown_opcode_is_an_error() {
        let zip = Zip {
            bytes: &[],
            entries: vec![],
        };
        let mut vm = Vm {
            zip: &zip,
            prefix: String::new(),
            storages: HashMap::new(),
        };
        let e = vm.run(&[0x80, 2, 0xff]).err().unwrap();
        assert!(
            e.to_string().contains("unsupported pickle opcode 0xff"),
            "{e}"
        );
        assert!(vm.run(&[0x80, 2, b'N']).is_err()); // no STOP
        assert!(vm.run(&[0x80, 2, b'.']).is_err()); // empty stack
        let v = vm.run(&[0x80, 2, b'K', 7, b'.']).unwrap();
        assert_eq!(v.as_int().unwrap(), 7);
    }

    #[test]
    fn order_has_ten_per_block() {
        assert_eq!(dit_parameter_order(12).len(), 5 + 12 * 10 + 5);
    }
}
