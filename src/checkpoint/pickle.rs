//! The pickle virtual machine behind the Lightning `.ckpt` reader: it reads `data.pkl` without
//! executing anything. It knows exactly the opcodes `torch.save` writes under protocol 2;
//! `torch._utils._rebuild_tensor_v2` becomes a tch tensor, `collections.OrderedDict` /
//! `defaultdict` a dict, and every other global (omegaconf, transformers, tokenizers, ...) an
//! inert placeholder that is never called.

use anyhow::{Result, anyhow, bail};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use tch::{Kind, Tensor};

/// A value on the VM's stack. Containers are shared (`Rc`) because the memo hands out the same
/// object again; cycles through omegaconf's `_parent` back-references leak a few kilobytes per
/// read, which is accepted.
#[derive(Clone)]
#[allow(dead_code)] // payloads of inert values are kept for debugging, not read
pub(super) enum Value {
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
pub(super) struct Object {
    class: Rc<str>,
    args: Vec<Value>,
    state: Option<Value>,
}

/// A storage copied once out of the archive as a flat tensor; tensors are views of it, as in
/// PyTorch (several tensors may share one storage).
pub(super) struct Storage {
    flat: Tensor,
}

impl Value {
    pub(super) fn type_name(&self) -> &'static str {
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

    pub(super) fn as_int(&self) -> Result<i64> {
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

/// Where the VM finds the bytes of a persistent storage (`data/<key>` of the archive).
pub(super) trait StorageBytes {
    /// The raw little-endian bytes of storage `key`; an error names the missing entry.
    fn storage_bytes(&mut self, key: &str) -> Result<&[u8]>;
}

pub(super) struct Vm<S> {
    source: S,
    /// Storages already copied out of the archive, by key: tensors sharing one stay views of it.
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

impl<S: StorageBytes> Vm<S> {
    pub(super) fn new(source: S) -> Vm<S> {
        Vm {
            source,
            storages: HashMap::new(),
        }
    }

    /// Runs `code` to its STOP and returns the value it leaves. The opcode dispatch is one long
    /// match on purpose: each arm is a few lines and reads like the pickle specification.
    pub(super) fn run(&mut self, code: &[u8]) -> Result<Value> {
        let mut stack: Vec<Slot> = Vec::new();
        let mut memo: HashMap<usize, Value> = HashMap::new();
        let mut pc = 0usize;
        let take = |pc: &mut usize, n: usize| -> Result<&[u8]> {
            let s = code
                .get(*pc..*pc + n)
                .ok_or_else(|| anyhow!("pickle ends inside an opcode argument"))?;
            *pc += n;
            Ok(s)
        };
        // Opcodes come in pairs whose argument (a length or a memo index) is one byte or a
        // four-byte little-endian integer.
        let arg = |pc: &mut usize, wide: bool| -> Result<usize> {
            Ok(if wide {
                u32::from_le_bytes(take(pc, 4)?.try_into().unwrap()) as usize
            } else {
                take(pc, 1)?[0] as usize
            })
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
                    let n = arg(&mut pc, op == b'X')?;
                    let s = std::str::from_utf8(take(&mut pc, n)?)
                        .map_err(|_| anyhow!("invalid UTF-8 in a pickled string"))?;
                    push(&mut stack, Value::Str(s.into()));
                }
                b'B' | b'C' => {
                    // BINBYTES / SHORT_BINBYTES
                    let n = arg(&mut pc, op == b'B')?;
                    let b = take(&mut pc, n)?;
                    push(&mut stack, Value::Bytes(b.into()));
                }
                b'}' => push(&mut stack, Value::Dict(Rc::default())),
                b']' => push(&mut stack, Value::List(Rc::default())),
                b')' => push(&mut stack, Value::Tuple(Rc::default())),
                b'a' | b'e' => {
                    // APPEND (one item) / APPENDS (the items above the mark)
                    let (items, name) = if op == b'a' {
                        (vec![pop(&mut stack)?], "APPEND")
                    } else {
                        (pop_mark(&mut stack)?, "APPENDS")
                    };
                    match top(&mut stack)? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        Value::Object(_) => {}
                        other => bail!("{name} on a {}", other.type_name()),
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
                    let i = arg(&mut pc, op == b'j')?;
                    let v = memo
                        .get(&i)
                        .cloned()
                        .ok_or_else(|| anyhow!("pickle memo has no entry {i}"))?;
                    push(&mut stack, v);
                }
                b'q' | b'r' => {
                    let i = arg(&mut pc, op == b'r')?;
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
        let bytes = self.source.storage_bytes(key)?;
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

    struct NoStorages;

    impl StorageBytes for NoStorages {
        fn storage_bytes(&mut self, key: &str) -> Result<&[u8]> {
            bail!("storage {key} is missing from the archive")
        }
    }

    #[test]
    fn unknown_opcode_is_an_error() {
        let mut vm = Vm::new(NoStorages);
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
}
