//! OmegaConf-style interpolation over a composed YAML tree, resolved once after all overrides:
//! `${a.b.c}` (absolute), `${.x}` / `${..x}` (relative to the node holding the key, then its
//! parent), and the resolvers `${now:FORMAT}` (local time, strftime), `${cwd:}` and
//! `${oc.env:VAR}` / `${oc.env:VAR,default}`. A value that is exactly one interpolation keeps the
//! referenced value's type; inside a longer string the value is formatted the way OmegaConf
//! (Python) prints it (`None`, `True`), so e.g. `wandb.id` reads `None_1` as in the reference.
//! `\${` is a literal `${`.

use anyhow::{Context, Result, anyhow, bail};
use serde_yaml::{Mapping, Value};

use super::suggest;
use super::yaml_text::{key_str, python_str};

const MAX_DEPTH: usize = 32;

pub(crate) struct Resolver<'a> {
    root: &'a Value,
    /// Seconds since the epoch, fixed once per composition so every `${now:}` agrees.
    now: i64,
}

enum Piece {
    Lit(String),
    Interp(String),
}

impl<'a> Resolver<'a> {
    pub(crate) fn new(root: &'a Value, now: i64) -> Self {
        Resolver { root, now }
    }

    /// Returns a copy of the whole tree with every interpolation resolved.
    pub(crate) fn resolve_all(&self) -> Result<Value> {
        let mut path = Vec::new();
        self.resolve_node(self.root, &mut path, 0)
    }

    fn resolve_node(&self, v: &Value, path: &mut Vec<String>, depth: usize) -> Result<Value> {
        Ok(match v {
            Value::String(s) if s.contains("${") => self.resolve_string(s, path, depth)?,
            Value::String(s) if s.contains("\\$") => Value::String(s.replace("\\${", "${")),
            Value::Mapping(m) => {
                let mut out = Mapping::new();
                for (k, child) in m {
                    path.push(key_str(k));
                    let r = self.resolve_node(child, path, depth);
                    path.pop();
                    out.insert(k.clone(), r?);
                }
                Value::Mapping(out)
            }
            Value::Sequence(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, child) in items.iter().enumerate() {
                    path.push(i.to_string());
                    let r = self.resolve_node(child, path, depth);
                    path.pop();
                    out.push(r?);
                }
                Value::Sequence(out)
            }
            other => other.clone(),
        })
    }

    fn resolve_string(&self, s: &str, path: &[String], depth: usize) -> Result<Value> {
        let key = path.join(".");
        let pieces = split(s).with_context(|| format!("in config key '{key}' = '{s}'"))?;
        if let [Piece::Interp(expr)] = pieces.as_slice() {
            return self
                .eval(expr, path, depth)
                .with_context(|| format!("resolving config key '{key}' = '{s}'"));
        }
        let mut out = String::new();
        for p in &pieces {
            match p {
                Piece::Lit(l) => out.push_str(l),
                Piece::Interp(expr) => {
                    let v = self
                        .eval(expr, path, depth)
                        .with_context(|| format!("resolving config key '{key}' = '{s}'"))?;
                    out.push_str(&python_str(&v));
                }
            }
        }
        Ok(Value::String(out))
    }

    fn eval(&self, expr: &str, path: &[String], depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            bail!("interpolation '${{{expr}}}' nests too deeply (a cycle?)");
        }
        let expr = expr.trim();
        if let Some((name, args)) = resolver_call(expr) {
            // Arguments may hold interpolations themselves.
            let args = match self.resolve_string(args, path, depth + 1)? {
                Value::String(s) => s,
                other => python_str(&other),
            };
            return self.call(name, &args);
        }
        let target = absolute_path(expr, path)?;
        let parts: Vec<&str> = target.iter().map(String::as_str).collect();
        let node = lookup(self.root, &parts).ok_or_else(|| {
            let wanted = target.join(".");
            let known = suggest::paths(self.root);
            anyhow!(
                "interpolation '${{{expr}}}': key '{wanted}' not found{}",
                suggest::did_you_mean(&wanted, &known)
            )
        })?;
        let mut target_path = target.clone();
        self.resolve_node(node, &mut target_path, depth + 1)
    }

    fn call(&self, name: &str, args: &str) -> Result<Value> {
        match name {
            "now" => Ok(Value::String(strftime_local(self.now, args)?)),
            "cwd" => Ok(Value::String(
                std::env::current_dir()
                    .context("reading the current directory")?
                    .to_string_lossy()
                    .into_owned(),
            )),
            "oc.env" => {
                let (var, default) = match args.split_once(',') {
                    Some((v, d)) => (v.trim(), Some(d.trim())),
                    None => (args.trim(), None),
                };
                match (std::env::var(var), default) {
                    (Ok(v), _) => Ok(Value::String(v)),
                    (Err(_), Some(d)) => Ok(Value::String(unquote(d).to_string())),
                    (Err(_), None) => bail!("environment variable '{var}' is not set"),
                }
            }
            _ => bail!(
                "unsupported interpolation resolver '{name}' (supported: now, cwd, oc.env); \
                 the reference's `eval`, `div_up` and `device_count` values are computed in code \
                 (leave those keys null)"
            ),
        }
    }
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
        .unwrap_or(s)
}

/// `name:args` when `expr` is a resolver call (`now:%H`, `cwd:`, `oc.env:HOME`).
fn resolver_call(expr: &str) -> Option<(&str, &str)> {
    let (name, args) = expr.split_once(':')?;
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !name.starts_with('.');
    ok.then_some((name, args))
}

/// The absolute key path `expr` points to, from the path of the key that holds it.
fn absolute_path(expr: &str, key_path: &[String]) -> Result<Vec<String>> {
    let dots = expr.chars().take_while(|&c| c == '.').count();
    let rest = &expr[dots..];
    if rest.is_empty() {
        bail!("empty interpolation '${{{expr}}}'");
    }
    let mut base: Vec<String> = if dots == 0 {
        Vec::new()
    } else {
        // `.x`: sibling of the key, i.e. inside the node that holds it; each further dot climbs.
        let up = dots; // drop the key itself, then dots - 1 more levels
        if up > key_path.len() {
            bail!(
                "relative interpolation '${{{expr}}}' climbs above the root from '{}'",
                key_path.join(".")
            );
        }
        key_path[..key_path.len() - up].to_vec()
    };
    base.extend(rest.split('.').map(str::to_string));
    Ok(base)
}

/// Splits a string into literal text and `${...}` expressions (braces may nest).
fn split(s: &str) -> Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && s[i + 1..].starts_with("${") {
            lit.push_str("${");
            i += 3;
            continue;
        }
        if s[i..].starts_with("${") {
            let start = i + 2;
            let mut depth = 1;
            let mut j = start;
            while j < b.len() && depth > 0 {
                if s[j..].starts_with("${") {
                    depth += 1;
                    j += 2;
                    continue;
                }
                if b[j] == b'}' {
                    depth -= 1;
                }
                j += 1;
            }
            if depth != 0 {
                bail!("unterminated interpolation '{}'", &s[i..]);
            }
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Interp(s[start..j - 1].to_string()));
            i = j;
            continue;
        }
        let ch = s[i..].chars().next().unwrap();
        lit.push(ch);
        i += ch.len_utf8();
    }
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}

/// Looks up a dotted path; list items are addressed by their index.
pub(crate) fn lookup<'v>(root: &'v Value, path: &[&str]) -> Option<&'v Value> {
    let mut cur = root;
    for seg in path {
        cur = match cur {
            Value::Mapping(m) => m.get(*seg)?,
            Value::Sequence(items) => items.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// The variable through which the local launcher hands its clock to the ranks it starts, so
/// that `${now:}` (the default run directory) resolves alike in all of them.
pub const NOW_VAR: &str = "MDLM_NOW";

/// Seconds since the Unix epoch when this process first asked (or `$MDLM_NOW`): one instant
/// per process, so every config it composes (`data=a,b,c`) names the same run time.
pub fn now_epoch() -> i64 {
    static NOW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *NOW.get_or_init(|| {
        std::env::var(NOW_VAR)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0)
            })
    })
}

/// `strftime(format)` of `epoch` in the local time zone (libc `localtime_r`).
fn strftime_local(epoch: i64, format: &str) -> Result<String> {
    let fmt = std::ffi::CString::new(format)
        .map_err(|_| anyhow!("${{now:}} format contains a NUL byte"))?;
    let t: libc::time_t = epoch as libc::time_t;
    // SAFETY: `tm` is plain old data, fully written by localtime_r before it is read;
    // strftime writes at most `buf.len()` bytes and returns how many it wrote.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            bail!("localtime_r failed for {epoch}");
        }
        let mut buf = vec![0u8; 256 + format.len() * 8];
        let n = libc::strftime(buf.as_mut_ptr().cast(), buf.len(), fmt.as_ptr(), &tm);
        if n == 0 && !format.is_empty() {
            bail!("${{now:{format}}}: the formatted time is empty or too long");
        }
        buf.truncate(n);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn absolute_relative_typed_and_string() {
        let root = yaml(
            "a: {g: 512, e: '${.g}', s: 'x-${.g}-${b.n}'}\nb: {n: null, t: true, up: '${..a.g}'}\n",
        );
        let r = Resolver::new(&root, 0).resolve_all().unwrap();
        assert_eq!(lookup(&r, &["a", "e"]), Some(&yaml("512")));
        assert_eq!(lookup(&r, &["a", "s"]), Some(&yaml("x-512-None")));
        assert_eq!(lookup(&r, &["b", "up"]), Some(&yaml("512")));
    }

    #[test]
    fn chains_cycles_and_escapes() {
        let root = yaml("a: '${b}'\nb: '${c}/x'\nc: 'y'\nd: '\\${a}'\n");
        let r = Resolver::new(&root, 0).resolve_all().unwrap();
        assert_eq!(lookup(&r, &["a"]), Some(&yaml("y/x")));
        assert_eq!(lookup(&r, &["d"]), Some(&Value::String("${a}".into())));
        let cyc = yaml("a: '${b}'\nb: '${a}'\n");
        assert!(Resolver::new(&cyc, 0).resolve_all().is_err());
    }

    #[test]
    fn now_formats_local_time() {
        let s = strftime_local(0, "%Y").unwrap();
        assert!(s == "1970" || s == "1969", "{s}");
        let root = yaml("d: '${now:%Y.%m.%d}/${now:%H%M%S}'\n");
        let r = Resolver::new(&root, now_epoch()).resolve_all().unwrap();
        let d = lookup(&r, &["d"]).unwrap().as_str().unwrap().to_string();
        assert_eq!(d.len(), "2024.01.01/000000".len(), "{d}");
    }
}
