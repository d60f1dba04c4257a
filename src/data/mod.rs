//! Data: tokenizers, the raw corpus, prepared token blocks on disk, and the batch loader.
//!
//! Flow: [`prepare`] turns `<cache_dir>/<name>/raw/*.txt` into memory-mapped [`TokenBlocks`] (once;
//! later runs reuse the files), and a [`Loader`] draws `[B, L]` batches from them. Knows nothing of
//! configs or models: the glue layer builds a [`DataSpec`].

pub mod blocks;
pub mod char;
pub mod corpus;
pub mod detok;
pub mod hf;
pub mod hub_data;
pub mod loader;
pub mod parquet;
pub mod prefetch;
pub mod prepare;
pub mod source;
pub mod split;
pub mod stream;
pub mod tokenizer;
pub mod wrap;

pub use blocks::TokenBlocks;
pub use char::CharTokenizer;
pub use detok::Detokenizer;
pub use hf::HfTokenizer;
pub use loader::{Batch, Loader, LoaderState, TrainBatches};
pub use prefetch::Prefetch;
pub use prepare::{DataSpec, Prepared, PreparedMeta, Split, prepare, prepare_one};
pub use stream::StreamLoader;
pub use tokenizer::Tokenizer;

/// Built-in tokenizer names a config may give; any other name is a Hugging Face tokenizer (a
/// `tokenizer.json` path, a folder holding one, or a Hub repo id in the local cache).
pub const TOKENIZER_NAMES: [&str; 2] = ["char", "text8"];

/// The tokenizer a config names: a built-in character tokenizer, else a Hugging Face one resolved
/// offline ([`HfTokenizer::from_name_or_path`]); the error names the value, where it looked and
/// the fix.
pub fn tokenizer_by_name(name: &str) -> anyhow::Result<Box<dyn Tokenizer>> {
    match char::char_tokenizer_by_name(name) {
        Some(t) => Ok(Box::new(t)),
        None => Ok(Box::new(HfTokenizer::from_name_or_path(name).map_err(
            |e| {
                anyhow::anyhow!(
                    "{e:#} (built-in tokenizers: {})",
                    TOKENIZER_NAMES.join(", ")
                )
            },
        )?)),
    }
}
