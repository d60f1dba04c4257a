//! Data: tokenizers, the raw corpus, prepared token blocks on disk, and the batch loader.
//!
//! Flow: [`prepare`] turns `<cache_dir>/<name>/raw/*.txt` into memory-mapped [`TokenBlocks`] (once;
//! later runs reuse the files), and a [`Loader`] draws `[B, L]` batches from them. Knows nothing of
//! configs or models: the glue layer builds a [`DataSpec`].

pub mod blocks;
pub mod char;
pub mod loader;
pub mod prepare;
pub mod tokenizer;
pub mod wrap;

pub use blocks::TokenBlocks;
pub use char::CharTokenizer;
pub use loader::{Batch, Loader, LoaderState};
pub use prepare::{DataSpec, Prepared, PreparedMeta, Split, prepare};
pub use tokenizer::Tokenizer;

/// Tokenizer names a config may give.
pub const TOKENIZER_NAMES: [&str; 2] = ["char", "text8"];

/// The tokenizer a config names; the error names the value and the choices.
pub fn tokenizer_by_name(name: &str) -> anyhow::Result<Box<dyn Tokenizer>> {
    match char::char_tokenizer_by_name(name) {
        Some(t) => Ok(Box::new(t)),
        None => anyhow::bail!(
            "unknown tokenizer '{name}'; choose one of: {}",
            TOKENIZER_NAMES.join(", ")
        ),
    }
}
