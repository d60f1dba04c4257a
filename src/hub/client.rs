//! How to reach the Hub: endpoint, token, retries, and whether it may be reached at all.

use super::RepoKind;
use std::path::PathBuf;

/// Where the Hub is unless `HF_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// `huggingface_hub`'s reading of a boolean environment variable.
pub fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

/// The variable that makes `kind` offline, when one does: `HF_HUB_OFFLINE` for everything,
/// `TRANSFORMERS_OFFLINE` for models and tokenizers, `HF_DATASETS_OFFLINE` for datasets.
pub fn offline_var(kind: RepoKind) -> Option<&'static str> {
    let own = match kind {
        RepoKind::Model => "TRANSFORMERS_OFFLINE",
        RepoKind::Dataset => "HF_DATASETS_OFFLINE",
    };
    ["HF_HUB_OFFLINE", own]
        .into_iter()
        .find(|k| std::env::var(k).is_ok_and(|v| is_truthy(&v)))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubClient {
    pub endpoint: String,
    pub token: Option<String>,
    /// Draw a bar per large file (on a terminal; tracing events otherwise).
    pub progress: bool,
    /// Resumed attempts after a transfer breaks off.
    pub retries: usize,
}

impl HubClient {
    /// `HF_ENDPOINT` (else the public Hub), and the token `huggingface_hub` would send: `HF_TOKEN`,
    /// else the file `huggingface-cli login` writes (`HF_TOKEN_PATH`, else `$HF_HOME/token`, else
    /// `~/.cache/huggingface/token`).
    pub fn from_env() -> HubClient {
        let var = |k| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .map(|t| t.trim().to_string())
            .or_else(|| {
                std::fs::read_to_string(token_path()?)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            });
        HubClient {
            endpoint: var("HF_ENDPOINT")
                .map(|e| e.trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            token,
            progress: true,
            retries: 3,
        }
    }

    /// A client for `endpoint` without a token, bars or retries (tests, local mirrors).
    pub fn at(endpoint: &str) -> HubClient {
        HubClient {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: None,
            progress: false,
            retries: 0,
        }
    }

    pub fn with_token(mut self, token: &str) -> HubClient {
        self.token = Some(token.to_string());
        self
    }
}

/// Where `huggingface-cli login` keeps the token; `None` without a home to keep it in.
pub fn token_path() -> Option<PathBuf> {
    let var = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_TOKEN_PATH")
        .or_else(|| var("HF_HOME").map(|h| h.join("token")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/token")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthy_values_are_huggingface_hubs() {
        for v in ["1", "true", "TRUE", "yes", "on", " 1 "] {
            assert!(is_truthy(v), "{v}");
        }
        for v in ["", "0", "false", "no", "off", "2"] {
            assert!(!is_truthy(v), "{v}");
        }
    }
}
