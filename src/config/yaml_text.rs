//! How YAML values read as text: key names, enum values in messages, the printed tree and
//! values spliced into a longer string. Shared by interpolation, suggestions and the schema, so
//! none of them has to import another for it.

use serde::Serialize;
use serde_yaml::Value;

/// A mapping key as a path segment (non-string keys, e.g. `1` or `true`, read as OmegaConf
/// prints them).
pub(crate) fn key_str(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => python_str(other),
    }
}

/// How a value reads inside a longer string: the OmegaConf (Python) spelling of null and bools,
/// so e.g. `wandb.id` reads `None_1` as in the reference.
pub(crate) fn python_str(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => yaml_str(other),
    }
}

/// A string as it is, anything else as one line of YAML.
pub(crate) fn plain_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => yaml_str(other),
    }
}

/// The YAML spelling of a value (e.g. `ddpm_cache` for `Predictor::DdpmCache`), for messages.
pub(crate) fn yaml_name<T: Serialize>(v: &T) -> String {
    match serde_yaml::to_value(v) {
        Ok(v) => plain_str(&v),
        Err(_) => String::from("?"),
    }
}

fn yaml_str(v: &Value) -> String {
    serde_yaml::to_string(v)
        .unwrap_or_default()
        .trim()
        .to_string()
}
