//! Hydra-style composition: the primary `config.yaml` and its defaults list, group files merged
//! at their package, config-level `override /group: option` (from an experiment file),
//! command-line `group=option`, `a.b=value`, `+a.b=value`, `++a.b=value`, `~a.b`, then
//! interpolation, then the typed [`Config`].
//!
//! Semantics follow Hydra 1.1+ where this subset overlaps it: `_self_` is implicitly last when a
//! defaults list does not name it; command-line group choices win over config-level overrides;
//! a group option file merges under the group's name unless its header says
//! `# @package _global_`. One convenience beyond Hydra: `group=option` for a group missing from
//! the defaults list (e.g. `experiment=shakespeare`) appends it, as `+group=option` does.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde_yaml::{Mapping, Value};

use super::interp::{Resolver, lookup, now_epoch};
use super::schema::Config;
use super::yaml_text::key_str;
use super::{embedded, suggest};

const PRIMARY: &str = "config.yaml";
const CMDLINE: &str = "the command line";

/// Where config files come from: the embedded copy of `configs/`, or a folder.
pub(crate) enum Source<'a> {
    Embedded,
    Dir(&'a Path),
}

impl Source<'_> {
    fn read(&self, rel: &str) -> Result<Option<String>> {
        match self {
            Source::Embedded => Ok(embedded::FILES
                .iter()
                .find(|(p, _)| *p == rel)
                .map(|(_, t)| t.to_string())),
            Source::Dir(dir) => {
                let path = dir.join(rel);
                if !path.is_file() {
                    return Ok(None);
                }
                std::fs::read_to_string(&path)
                    .map(Some)
                    .with_context(|| format!("reading {}", path.display()))
            }
        }
    }

    fn is_group(&self, group: &str) -> bool {
        match self {
            Source::Embedded => {
                let prefix = format!("{group}/");
                embedded::FILES.iter().any(|(p, _)| p.starts_with(&prefix))
            }
            Source::Dir(dir) => !group.is_empty() && dir.join(group).is_dir(),
        }
    }

    /// Option names of a group (file stems), sorted.
    fn options(&self, group: &str) -> Vec<String> {
        let mut out: Vec<String> = match self {
            Source::Embedded => {
                let prefix = format!("{group}/");
                embedded::FILES
                    .iter()
                    .filter_map(|(p, _)| p.strip_prefix(&prefix))
                    .filter(|rest| !rest.contains('/'))
                    .filter_map(|rest| rest.strip_suffix(".yaml"))
                    .map(str::to_string)
                    .collect()
            }
            Source::Dir(dir) => std::fs::read_dir(dir.join(group))
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| e.path().is_file())
                        .filter_map(|e| {
                            e.file_name()
                                .to_str()
                                .and_then(|n| n.strip_suffix(".yaml"))
                                .map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        out.sort();
        out
    }

    /// Top-level group names, sorted.
    fn groups(&self) -> Vec<String> {
        let mut out: Vec<String> = match self {
            Source::Embedded => embedded::FILES
                .iter()
                .filter_map(|(p, _)| p.split_once('/').map(|(g, _)| g.to_string()))
                .collect(),
            Source::Dir(dir) => std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| e.path().is_dir())
                        .filter_map(|e| e.file_name().to_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        };
        out.sort();
        out.dedup();
        out
    }

    fn describe(&self, rel: &str) -> String {
        match self {
            Source::Embedded => rel.to_string(),
            Source::Dir(dir) => dir.join(rel).display().to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Defaults lists and config files

#[derive(Debug, Clone)]
enum Entry {
    SelfRef,
    Group {
        group: String,
        /// `None`: the group is listed without a selection (`/group: null`).
        options: Option<Vec<String>>,
        is_override: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Package {
    Global,
    At(Vec<String>),
}

struct ConfigFile {
    rel: String,
    package: Option<Package>,
    defaults: Vec<Entry>,
    body: Mapping,
}

fn option_names(v: &Value, what: &str) -> Result<Option<Vec<String>>> {
    Ok(match v {
        Value::Null => None,
        Value::String(s) => Some(vec![s.clone()]),
        Value::Sequence(items) => Some(
            items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(anyhow!("{what}: expected an option name, found {other:?}")),
                })
                .collect::<Result<_>>()?,
        ),
        other => bail!("{what}: expected an option name or a list, found {other:?}"),
    })
}

/// Resolves a group name written in a defaults list: `/g` is absolute, `g` is relative to the
/// group of the file that holds the list.
fn group_path(written: &str, parent_group: &str) -> String {
    match written.strip_prefix('/') {
        Some(abs) => abs.to_string(),
        None if parent_group.is_empty() => written.to_string(),
        None => format!("{parent_group}/{written}"),
    }
}

fn parse_defaults(v: &Value, rel: &str, parent_group: &str) -> Result<Vec<Entry>> {
    let Value::Sequence(items) = v else {
        bail!("{rel}: `defaults` must be a list");
    };
    let mut out = Vec::new();
    for item in items {
        match item {
            Value::String(s) if s == "_self_" => out.push(Entry::SelfRef),
            Value::Mapping(m) if m.len() == 1 => {
                let (k, v) = m.iter().next().unwrap();
                let mut key = key_str(k);
                let mut is_override = false;
                loop {
                    if let Some(rest) = key.strip_prefix("override ") {
                        is_override = true;
                        key = rest.trim().to_string();
                    } else if let Some(rest) = key.strip_prefix("optional ") {
                        key = rest.trim().to_string();
                    } else {
                        break;
                    }
                }
                if key.contains('@') {
                    bail!("{rel}: package-relocating defaults (`{key}`) are not supported");
                }
                out.push(Entry::Group {
                    group: group_path(&key, parent_group),
                    options: option_names(v, &format!("{rel}: defaults entry '{key}'"))?,
                    is_override,
                });
            }
            other => bail!(
                "{rel}: unsupported defaults entry {other:?} (supported: `_self_`, \
                 `group: option`, `group: [a, b]`, `override group: option`)"
            ),
        }
    }
    Ok(out)
}

/// `# @package X` from the header comments of a file.
fn package_header(text: &str) -> Option<Package> {
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let c = t.strip_prefix('#')?;
        if let Some(p) = c.trim().strip_prefix("@package") {
            let p = p.trim();
            return Some(match p {
                "_global_" => Package::Global,
                _ => {
                    let p = p.strip_prefix("_global_.").unwrap_or(p);
                    Package::At(p.split('.').map(str::to_string).collect())
                }
            });
        }
    }
    None
}

/// Hydra reads YAML 1.1, where `1_000_000` is an int; serde_yaml reads YAML 1.2, where it is a
/// string. Convert such strings back.
fn normalize(v: &mut Value) {
    match v {
        Value::String(s) => {
            let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
            if s.contains('_')
                && !digits.starts_with('_')
                && !digits.ends_with('_')
                && !digits.contains("__")
                && digits.chars().all(|c| c.is_ascii_digit() || c == '_')
                && let Ok(n) = s.replace('_', "").parse::<i64>()
            {
                *v = Value::from(n);
            }
        }
        Value::Mapping(m) => m.iter_mut().for_each(|(_, c)| normalize(c)),
        Value::Sequence(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn parse_yaml(text: &str, what: &str) -> Result<Value> {
    let mut v: Value = serde_yaml::from_str(text).with_context(|| format!("parsing {what}"))?;
    normalize(&mut v);
    Ok(v)
}

fn load(src: &Source, rel: &str, group: &str) -> Result<ConfigFile> {
    let text = src
        .read(rel)?
        .ok_or_else(|| anyhow!("config file {} not found", src.describe(rel)))?;
    let doc = parse_yaml(&text, &src.describe(rel))?;
    let mut body = match doc {
        Value::Null => Mapping::new(),
        Value::Mapping(m) => m,
        _ => bail!("{}: the top level must be a mapping", src.describe(rel)),
    };
    let defaults = match body.remove("defaults") {
        Some(d) => parse_defaults(&d, rel, group)?,
        None => Vec::new(),
    };
    Ok(ConfigFile {
        rel: rel.to_string(),
        package: package_header(&text),
        defaults,
        body,
    })
}

fn load_option(src: &Source, group: &str, option: &str) -> Result<ConfigFile> {
    let rel = format!("{group}/{option}.yaml");
    if src.read(&rel)?.is_none() {
        let available = src.options(group);
        if available.is_empty() {
            let groups = src.groups();
            bail!(
                "unknown config group '{group}'{} (groups: {})",
                suggest::did_you_mean(group, &groups),
                groups.join(", ")
            );
        }
        let hint = suggest::closest(option, &available);
        let hint = match hint.first() {
            Some(h) => format!("; did you mean '{h}'?"),
            None => String::new(),
        };
        bail!(
            "unknown option '{option}' for group '{group}' (available: {}){hint}",
            available.join(", ")
        );
    }
    load(src, &rel, group)
}

/// The entries in merge order, with `_self_` appended when the list does not name it.
fn with_self(defaults: &[Entry]) -> Vec<Entry> {
    let mut v = defaults.to_vec();
    if !v.iter().any(|e| matches!(e, Entry::SelfRef)) {
        v.push(Entry::SelfRef);
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Merging, with a record of which file set each key

struct Tree {
    root: Value,
    /// Dotted key path -> the file (or the command line) that last set it.
    origin: BTreeMap<String, String>,
}

impl Tree {
    fn merge_at(&mut self, at: &[String], body: &Mapping, from: &str) {
        let mut node = &mut self.root;
        for seg in at {
            node = ensure_mapping(node)
                .entry(Value::from(seg.as_str()))
                .or_insert(Value::Null);
        }
        let prefix = at.join(".");
        merge_value(
            node,
            &Value::Mapping(body.clone()),
            &prefix,
            from,
            &mut self.origin,
        );
    }
}

fn ensure_mapping(v: &mut Value) -> &mut Mapping {
    if !v.is_mapping() {
        *v = Value::Mapping(Mapping::new());
    }
    v.as_mapping_mut().unwrap()
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

fn merge_value(
    dst: &mut Value,
    src: &Value,
    prefix: &str,
    from: &str,
    origin: &mut BTreeMap<String, String>,
) {
    match src {
        Value::Mapping(sm) => {
            let dm = ensure_mapping(dst);
            for (k, sv) in sm {
                let path = join(prefix, &key_str(k));
                let dv = dm.entry(k.clone()).or_insert(Value::Null);
                if sv.is_mapping() {
                    origin
                        .entry(path.clone())
                        .or_insert_with(|| from.to_string());
                    merge_value(dv, sv, &path, from, origin);
                } else {
                    *dv = sv.clone();
                    origin.insert(path, from.to_string());
                }
            }
        }
        other => *dst = other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Command-line overrides

#[derive(Debug)]
enum Op {
    /// `group=option`, `group=[a,b]` or `+group=option`.
    Group {
        group: String,
        options: Option<Vec<String>>,
        append: bool,
    },
    /// `~group`: drop the group from the defaults list.
    DropGroup(String),
    /// `a.b=value`: the key must exist.
    Set(String, Value),
    /// `+a.b=value`: the key must not exist.
    Add(String, Value),
    /// `++a.b=value`: set or add.
    Force(String, Value),
    /// `~a.b`: the key must exist.
    Delete(String),
}

/// Parses a command-line value the way YAML types it: `16` is an int, `3e-4` a float, `true` a
/// bool, `null` null, `[1,2]` a list, anything else a string.
fn parse_value(raw: &str) -> Value {
    if raw.is_empty() {
        return Value::String(String::new());
    }
    match serde_yaml::from_str::<Value>(raw) {
        Ok(Value::Mapping(_)) | Ok(Value::Tagged(_)) | Err(_) => Value::String(raw.to_string()),
        Ok(mut v) => {
            normalize(&mut v);
            v
        }
    }
}

fn parse_ops(src: &Source, overrides: &[String]) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    for raw in overrides {
        let s = raw.trim();
        let (prefix, rest) = if let Some(r) = s.strip_prefix("++") {
            ("++", r)
        } else if let Some(r) = s.strip_prefix('+') {
            ("+", r)
        } else if let Some(r) = s.strip_prefix('~') {
            ("~", r)
        } else {
            ("", s)
        };
        let (key, value) = match rest.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (rest.trim(), None),
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            bail!("bad override '{raw}': expected key=value, +key=value, ++key=value or ~key");
        }
        let group = key.trim_start_matches('/');
        let is_group = !key.contains('.') && src.is_group(group);
        let op = match (prefix, value) {
            ("~", _) if is_group => Op::DropGroup(group.to_string()),
            ("~", _) => Op::Delete(key.to_string()),
            (_, None) => bail!("bad override '{raw}': missing '=value'"),
            (p, Some(v)) if is_group => Op::Group {
                group: group.to_string(),
                options: option_names(&parse_value(v), &format!("override '{raw}'"))?,
                append: p == "+",
            },
            ("++", Some(v)) => Op::Force(key.to_string(), parse_value(v)),
            ("+", Some(v)) => Op::Add(key.to_string(), parse_value(v)),
            (_, Some(v)) => Op::Set(key.to_string(), parse_value(v)),
        };
        ops.push(op);
    }
    Ok(ops)
}

fn unknown_key(key: &str, tree: &Value, src: &Source) -> anyhow::Error {
    let mut known = suggest::paths(tree);
    known.extend(src.groups());
    anyhow!(
        "unknown config key '{key}'{}; to add a new key use '+{key}=...'",
        suggest::did_you_mean(key, &known)
    )
}

fn apply_key_op(tree: &mut Tree, op: &Op, src: &Source) -> Result<()> {
    let (key, value) = match op {
        Op::Set(k, v) | Op::Add(k, v) | Op::Force(k, v) => (k.as_str(), Some(v)),
        Op::Delete(k) => (k.as_str(), None),
        Op::Group { .. } | Op::DropGroup(_) => return Ok(()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let exists = lookup(&tree.root, &parts).is_some();
    match op {
        Op::Set(..) | Op::Delete(..) if !exists => return Err(unknown_key(key, &tree.root, src)),
        Op::Add(..) if exists => bail!(
            "cannot add config key '{key}': it already exists; override it with '{key}=...' \
             (or force with '++{key}=...')"
        ),
        _ => {}
    }
    let (last, parents) = parts.split_last().unwrap();
    let mut node = &mut tree.root;
    for (i, seg) in parents.iter().enumerate() {
        let m = match node {
            Value::Mapping(m) => m,
            Value::Null => ensure_mapping(node),
            _ => bail!(
                "cannot set '{key}': '{}' is not a mapping",
                parts[..=i].join(".")
            ),
        };
        node = m.entry(Value::from(*seg)).or_insert(Value::Null);
    }
    let m = match node {
        Value::Mapping(m) => m,
        Value::Null => ensure_mapping(node),
        _ => bail!(
            "cannot set '{key}': '{}' is not a mapping",
            parents.join(".")
        ),
    };
    match value {
        Some(v) => {
            m.insert(Value::from(*last), v.clone());
            tree.origin.insert(key.to_string(), CMDLINE.to_string());
        }
        None => {
            m.remove(*last);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Composition

pub(crate) fn compose(src: &Source, overrides: &[String]) -> Result<Config> {
    compose_at(src, overrides, now_epoch())
}

fn compose_at(src: &Source, overrides: &[String], now: i64) -> Result<Config> {
    let ops = parse_ops(src, overrides)?;
    let primary = load(src, PRIMARY, "")?;
    let mut entries = with_self(&primary.defaults);
    if entries.iter().any(|e| {
        matches!(
            e,
            Entry::Group {
                is_override: true,
                ..
            }
        )
    }) {
        bail!("{PRIMARY}: `override` entries belong in the files it selects, not in {PRIMARY}");
    }
    let chosen_on_cmdline = choose_groups(&mut entries, &ops)?;
    apply_config_overrides(src, &mut entries, &chosen_on_cmdline)?;

    let mut tree = merge_defaults(src, &entries, &primary)?;
    for op in &ops {
        apply_key_op(&mut tree, op, src)?;
    }
    save_dir_defaults_to_run_dir(&mut tree.root);

    let resolved = Resolver::new(&tree.root, now).resolve_all()?;
    let mut cfg = typed(&resolved, &tree.origin)?;
    cfg.fill_derived();
    cfg.validate()?;
    Ok(cfg)
}

/// Applies the command-line group choices (`group=option`, `+group=option`, `~group`) to the
/// defaults list; returns the groups the command line chose, which config-level overrides must
/// leave alone.
fn choose_groups(entries: &mut Vec<Entry>, ops: &[Op]) -> Result<HashSet<String>> {
    let mut chosen = HashSet::new();
    for op in ops {
        match op {
            Op::Group {
                group,
                options,
                append,
            } => {
                choose_group(entries, group, options, *append)?;
                chosen.insert(group.clone());
            }
            Op::DropGroup(group) => {
                let before = entries.len();
                entries.retain(|e| !matches!(e, Entry::Group { group: g, .. } if g == group));
                if entries.len() == before {
                    bail!("cannot remove group '{group}': it is not in the defaults list");
                }
                chosen.insert(group.clone());
            }
            _ => {}
        }
    }
    Ok(chosen)
}

fn choose_group(
    entries: &mut Vec<Entry>,
    group: &str,
    options: &Option<Vec<String>>,
    append: bool,
) -> Result<()> {
    let pos = entries
        .iter()
        .position(|e| matches!(e, Entry::Group { group: g, .. } if g == group));
    match (pos, append) {
        (Some(_), true) => bail!(
            "cannot add group '{group}': it is already in the defaults list; \
             use '{group}=...' to change its option"
        ),
        (Some(i), false) => {
            if let Entry::Group { options: o, .. } = &mut entries[i] {
                *o = options.clone();
            }
        }
        (None, _) => entries.push(Entry::Group {
            group: group.to_string(),
            options: options.clone(),
            is_override: false,
        }),
    }
    Ok(())
}

/// An `override /group: option` entry of a selected option file.
struct ConfigOverride {
    group: String,
    options: Option<Vec<String>>,
    /// The file that holds it, for messages.
    from: String,
}

/// Config-level `override /group: option` entries (e.g. in an experiment file), unless the
/// command line chose that group.
fn apply_config_overrides(
    src: &Source,
    entries: &mut [Entry],
    chosen_on_cmdline: &HashSet<String>,
) -> Result<()> {
    for ConfigOverride {
        group: g,
        options,
        from,
    } in config_overrides(src, entries)?
    {
        let Some(target) = entries
            .iter_mut()
            .find(|e| matches!(e, Entry::Group { group, .. } if *group == g))
        else {
            bail!("{from}: cannot override '/{g}': no such group in the defaults list");
        };
        if !chosen_on_cmdline.contains(&g)
            && let Entry::Group { options: o, .. } = target
        {
            *o = options;
        }
    }
    Ok(())
}

/// The `override` entries of the selected option files, in order.
fn config_overrides(src: &Source, entries: &[Entry]) -> Result<Vec<ConfigOverride>> {
    let mut found = Vec::new();
    for e in entries {
        let Entry::Group {
            group,
            options: Some(opts),
            ..
        } = e
        else {
            continue;
        };
        for opt in opts {
            let f = load_option(src, group, opt)?;
            for d in &f.defaults {
                if let Entry::Group {
                    group: g,
                    options,
                    is_override: true,
                } = d
                {
                    found.push(ConfigOverride {
                        group: g.clone(),
                        options: options.clone(),
                        from: f.rel.clone(),
                    });
                }
            }
        }
    }
    Ok(found)
}

/// Merges the primary file and the selected options in defaults-list order.
fn merge_defaults(src: &Source, entries: &[Entry], primary: &ConfigFile) -> Result<Tree> {
    let mut tree = Tree {
        root: Value::Mapping(Mapping::new()),
        origin: BTreeMap::new(),
    };
    for e in entries {
        match e {
            Entry::SelfRef => tree.merge_at(&[], &primary.body, PRIMARY),
            Entry::Group {
                group,
                options: Some(opts),
                ..
            } => {
                for opt in opts {
                    include(src, group, opt, &mut tree, 0)?;
                }
            }
            Entry::Group { options: None, .. } => {}
        }
    }
    Ok(tree)
}

/// `checkpointing.save_dir: null` means the run folder (the reference's `${cwd:}` after Hydra
/// changed into it).
fn save_dir_defaults_to_run_dir(root: &mut Value) {
    if let Some(Value::Mapping(ck)) = root.get_mut("checkpointing")
        && matches!(ck.get("save_dir"), Some(Value::Null))
    {
        ck.insert("save_dir".into(), "${hydra.run.dir}".into());
    }
}

fn include(src: &Source, group: &str, option: &str, tree: &mut Tree, depth: usize) -> Result<()> {
    if depth > 8 {
        bail!("defaults lists nest too deeply at {group}/{option}.yaml (a cycle?)");
    }
    let f = load_option(src, group, option)?;
    let package = match &f.package {
        Some(Package::Global) => Vec::new(),
        Some(Package::At(p)) => p.clone(),
        None => group.split('/').map(str::to_string).collect(),
    };
    for e in with_self(&f.defaults) {
        match e {
            Entry::SelfRef => tree.merge_at(&package, &f.body, &f.rel),
            Entry::Group {
                is_override: true, ..
            } => {}
            Entry::Group {
                group: g,
                options: Some(opts),
                ..
            } => {
                for o in opts {
                    include(src, &g, &o, tree, depth + 1)?;
                }
            }
            Entry::Group { options: None, .. } => {}
        }
    }
    Ok(())
}

/// Deserializes the resolved tree, turning serde's messages into ones that name the key, the
/// file that set it and the closest known keys.
fn typed(resolved: &Value, origin: &BTreeMap<String, String>) -> Result<Config> {
    // Going through text makes serde_yaml report the path of a bad value.
    let text = serde_yaml::to_string(resolved).context("serializing the composed config")?;
    serde_yaml::from_str::<Config>(&text).map_err(|e| explain(&e.to_string(), origin))
}

fn set_by(origin: &BTreeMap<String, String>, path: &str) -> String {
    origin
        .get(path)
        .map(|f| format!(" in {f}"))
        .unwrap_or_default()
}

fn explain(msg: &str, origin: &BTreeMap<String, String>) -> anyhow::Error {
    // serde_yaml: "[path: ]message[ at line L column C]"
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    let (path, body) = match msg.split_once(": ") {
        Some((p, b)) if !p.contains(' ') && !p.contains('`') => (p.trim_matches('.'), b),
        _ => ("", msg),
    };
    let ticks: Vec<&str> = body.split('`').skip(1).step_by(2).collect();
    if body.starts_with("unknown field") && !ticks.is_empty() {
        let field = ticks[0];
        let key = join(path, field);
        let known: Vec<String> = ticks[1..].iter().map(|k| join(path, k)).collect();
        let hint = match suggest::did_you_mean(&key, &known) {
            h if h.is_empty() => format!(" (known keys here: {})", known.join(", ")),
            h => h,
        };
        return anyhow!("unknown config key '{key}'{}{hint}", set_by(origin, &key));
    }
    if body.starts_with("missing field") && !ticks.is_empty() {
        let key = join(path, ticks[0]);
        return anyhow!(
            "config key '{key}' is missing{}",
            match path {
                "" => String::new(),
                p => format!(" (section '{p}'{})", set_by(origin, p)),
            }
        );
    }
    if !path.is_empty() {
        let from = origin
            .get(path)
            .map(|f| format!(" (set in {f})"))
            .unwrap_or_default();
        return anyhow!("invalid value for config key '{path}'{from}: {body}");
    }
    anyhow!("invalid config: {body}")
}

// ---------------------------------------------------------------------------------------------
// Entry points used by mod.rs

pub(crate) fn compose_embedded(overrides: &[String]) -> Result<Config> {
    compose(&Source::Embedded, overrides)
}

pub(crate) fn compose_dir(dir: &Path, overrides: &[String]) -> Result<Config> {
    if !dir.join(PRIMARY).is_file() {
        bail!(
            "--config-dir {}: no {PRIMARY} there",
            PathBuf::from(dir).display()
        );
    }
    compose(&Source::Dir(dir), overrides)
}

/// Option names of a group in the embedded configs (for `--help` texts and messages).
pub(crate) fn embedded_options(group: &str) -> Vec<String> {
    Source::Embedded.options(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ov(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn values_parse_like_yaml() {
        assert_eq!(parse_value("16"), Value::from(16));
        assert_eq!(parse_value("3e-4"), Value::from(3e-4));
        assert_eq!(parse_value("true"), Value::from(true));
        assert_eq!(parse_value("null"), Value::Null);
        assert_eq!(parse_value("1_000"), Value::from(1000));
        assert_eq!(parse_value(""), Value::from(""));
        assert_eq!(
            parse_value("[1,2]"),
            Value::Sequence(vec![1.into(), 2.into()])
        );
        assert_eq!(parse_value("gpt2"), Value::from("gpt2"));
        assert_eq!(parse_value("a: b"), Value::from("a: b"));
    }

    #[test]
    fn headers_and_defaults() {
        assert_eq!(
            package_header("# @package _global_\nx: 1"),
            Some(Package::Global)
        );
        assert_eq!(package_header("x: 1\n# @package _global_"), None);
        let d: Value = serde_yaml::from_str("[_self_, {/a: x}, {override /b: [y, z]}]").unwrap();
        let e = parse_defaults(&d, "t", "").unwrap();
        assert!(matches!(e[0], Entry::SelfRef));
        assert!(
            matches!(&e[2], Entry::Group { group, options: Some(o), is_override: true } if group == "b" && o.len() == 2)
        );
    }

    #[test]
    fn now_is_fixed_per_composition() {
        let cfg = compose_at(&Source::Embedded, &ov(&[]), 0).unwrap();
        assert!(cfg.hydra.run.dir.starts_with("./outputs/openwebtext/19"));
        assert_eq!(
            cfg.checkpointing.save_dir.as_deref(),
            Some(cfg.hydra.run.dir.as_str())
        );
    }
}
