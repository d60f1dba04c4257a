//! Run configuration: the reference's Hydra tree (`configs/`, embedded in the binary) composed
//! with Hydra-syntax overrides into a typed, validated [`Config`]. No tch in here; every YAML
//! call of the crate lives in this module (serde_yaml is archived, so a swap stays local).
//!
//! ```no_run
//! let overrides = vec!["model=small".to_string(), "loader.batch_size=16".to_string()];
//! let mut cfg = mdlm::config::compose(&overrides)?;
//! cfg.resolve_devices(1);
//! cfg.validate()?;
//! # anyhow::Ok(())
//! ```

mod compose;
mod derived;
mod embedded;
mod interp;
mod schema;
mod suggest;
mod validate;
mod yaml_text;

use std::path::Path;

use anyhow::{Context, Result};

pub use interp::{NOW_VAR, now_epoch};
pub use schema::*;

/// Composes the embedded `configs/` with command-line overrides (`group=option`, `a.b=value`,
/// `+a.b=value`, `++a.b=value`, `~a.b`), resolves interpolations and validates.
/// The device-dependent values stay `None` until [`Config::resolve_devices`].
pub fn compose(overrides: &[String]) -> Result<Config> {
    compose::compose_embedded(overrides)
}

/// Like [`compose`], reading the config tree from `dir` (for `--config-dir`).
pub fn compose_from_dir(dir: &Path, overrides: &[String]) -> Result<Config> {
    compose::compose_dir(dir, overrides)
}

/// The options of a config group in the embedded tree, sorted (e.g. `model` -> `medium, small, ...`).
pub fn group_options(group: &str) -> Vec<String> {
    compose::embedded_options(group)
}

impl Config {
    /// The resolved config as YAML; [`Config::from_yaml`] reads it back to an equal `Config`.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a Config always serializes to YAML")
    }

    /// Reads a resolved config written by [`Config::to_yaml`] (e.g. from a checkpoint). No
    /// composition or interpolation happens here.
    pub fn from_yaml(text: &str) -> Result<Config> {
        serde_yaml::from_str(text).context("parsing a resolved mdlm config")
    }

    /// A readable indented tree of the resolved config, for printing at start-up.
    pub fn tree(&self) -> String {
        let v = serde_yaml::to_value(self).expect("a Config always serializes to YAML");
        let mut out = String::from("CONFIG\n");
        if let serde_yaml::Value::Mapping(m) = &v {
            write_tree(m, "", &mut out);
        }
        out
    }
}

fn scalar(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) if s.is_empty() => "''".to_string(),
        other => yaml_text::plain_str(other),
    }
}

fn write_tree(m: &serde_yaml::Mapping, indent: &str, out: &mut String) {
    let n = m.len();
    for (i, (k, v)) in m.iter().enumerate() {
        let last = i + 1 == n;
        let (branch, next) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        let key = yaml_text::key_str(k);
        match v {
            serde_yaml::Value::Mapping(child) if !child.is_empty() => {
                out.push_str(&format!("{indent}{branch}{key}\n"));
                write_tree(child, &format!("{indent}{next}"), out);
            }
            serde_yaml::Value::Sequence(items) => {
                let items: Vec<String> = items.iter().map(scalar).collect();
                out.push_str(&format!("{indent}{branch}{key}: [{}]\n", items.join(", ")));
            }
            other => out.push_str(&format!("{indent}{branch}{key}: {}\n", scalar(other))),
        }
    }
}
