//! Packing documents into fixed-length blocks: the reference's `_group_texts`
//! (`dataloader.py`, the `wrap=True` path).
//!
//! Each document already ends in EOS. The documents of one `datasets.map` batch are concatenated,
//! cut into chunks of `block_size - 2`, the tail that does not fill a chunk is dropped, and each
//! chunk becomes `[BOS] chunk [EOS]`. The reference drops that tail once per map batch (1000
//! documents by default), not once per corpus, so where the batch boundaries fall changes which
//! tokens survive; [`wrap_documents`] reproduces that with the batch size as a parameter.

use anyhow::{Result, bail};
use rayon::prelude::*;

/// The reference's default `datasets.map(batched=True)` batch size.
pub const REFERENCE_MAP_BATCH_SIZE: usize = 1000;

/// `_group_texts` on one map batch; returns the blocks flattened row-major (`n * block_size` ids).
pub fn group_texts(docs: &[Vec<u32>], block_size: usize, bos: u32, eos: u32) -> Result<Vec<u32>> {
    if block_size < 3 {
        bail!(
            "block_size {block_size} is too small to wrap: a block needs BOS, EOS and at least one token"
        );
    }
    let chunk = block_size - 2;
    let total: usize = docs.iter().map(Vec::len).sum();
    let n_blocks = total / chunk;
    let mut out = Vec::with_capacity(n_blocks * block_size);
    let mut tokens = docs.iter().flatten().copied();
    for _ in 0..n_blocks {
        out.push(bos);
        out.extend(tokens.by_ref().take(chunk));
        out.push(eos);
    }
    Ok(out)
}

/// The whole wrap path over a corpus: `group_texts` on consecutive batches of `map_batch_size`
/// documents, results concatenated in document order.
pub fn wrap_documents(
    docs: &[Vec<u32>],
    block_size: usize,
    bos: u32,
    eos: u32,
    map_batch_size: usize,
) -> Result<Vec<u32>> {
    if map_batch_size == 0 {
        bail!("map_batch_size must be at least 1");
    }
    let parts: Vec<Vec<u32>> = docs
        .par_chunks(map_batch_size)
        .map(|batch| group_texts(batch, block_size, bos, eos))
        .collect::<Result<_>>()?;
    Ok(parts.concat())
}

/// The `wrap=False` path: each document on its own, cut to `block_size` and right-padded with
/// `pad`; returns the flattened blocks and each block's count of real tokens (its attention mask).
/// The caller decides whether BOS/EOS are part of the document.
pub fn pad_documents(docs: &[Vec<u32>], block_size: usize, pad: u32) -> (Vec<u32>, Vec<u32>) {
    let mut out = Vec::with_capacity(docs.len() * block_size);
    let mut lengths = Vec::with_capacity(docs.len());
    for d in docs {
        let n = d.len().min(block_size);
        out.extend_from_slice(&d[..n]);
        out.resize(out.len() + block_size - n, pad);
        lengths.push(n as u32);
    }
    (out, lengths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remainder_dropped_per_batch() {
        let docs = vec![vec![1, 1, 1, 9], vec![2, 2, 9]];
        // One batch: 7 tokens → chunks of 3 → 2 blocks, 1 token dropped.
        let one = wrap_documents(&docs, 5, 7, 8, 1000).unwrap();
        assert_eq!(one, vec![7, 1, 1, 1, 8, 7, 9, 2, 2, 8]);
        // Batches of 1 document: 4 → 1 block, 3 → 1 block.
        let two = wrap_documents(&docs, 5, 7, 8, 1).unwrap();
        assert_eq!(two, vec![7, 1, 1, 1, 8, 7, 2, 2, 9, 8]);
    }

    #[test]
    fn padding() {
        let (b, l) = pad_documents(&[vec![1, 2, 3, 4], vec![5]], 3, 0);
        assert_eq!(b, vec![1, 2, 3, 5, 0, 0]);
        assert_eq!(l, vec![3, 1]);
    }
}
