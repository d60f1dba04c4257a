//! The tokenizer interface the rest of mdlm sees, implemented by the character tokenizers
//! (`char.rs`) and Hugging Face `tokenizer.json` tokenizers (`hf.rs`).

/// Text ↔ token ids. `encode` never adds BOS/EOS: the wrap path adds them itself, as the
/// reference does (`add_special_tokens=False`, then EOS per document, BOS per block).
pub trait Tokenizer: Send + Sync {
    /// The name configs use for it (`char`, `text8`, ...); recorded in prepared-data sidecars.
    fn name(&self) -> &str;
    fn vocab_size(&self) -> usize;
    fn bos_id(&self) -> u32;
    fn eos_id(&self) -> u32;
    fn pad_id(&self) -> u32;
    /// `Some(id)` when the mask token is part of the vocabulary; `None` when the model must append
    /// one (the reference appends `[MASK]` at `vocab_size` for tokenizers without a mask token).
    fn mask_id(&self) -> Option<u32>;
    /// Fails only for a tokenizer that cannot handle the text (a broken `tokenizer.json`): the
    /// caller reports it rather than dropping the text.
    fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>>;
    fn decode(&self, ids: &[u32]) -> anyhow::Result<String>;

    /// The BOS and EOS ids the wrap path uses. The reference computes them as
    /// `tokenizer.encode(token)[0]` (with special tokens), so for BERT both are `[CLS]`; for
    /// tokenizers that add no special tokens that is just BOS and EOS.
    fn wrap_ids(&self) -> (u32, u32) {
        (self.bos_id(), self.eos_id())
    }

    /// The (first, last) ids encoding *with* special tokens puts around one sequence, if any: the
    /// `wrap=False` path truncates to leave room for them and keeps them (`[CLS] ids [SEP]`).
    fn special_tokens_around(&self) -> Option<(u32, u32)> {
        None
    }

    /// Everything that fixes this tokenizer's output, recorded in prepared-data recipes.
    fn identity(&self) -> String {
        format!("{}:vocab {}", self.name(), self.vocab_size())
    }
}
