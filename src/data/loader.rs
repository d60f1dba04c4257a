//! Batches over a prepared split.
//!
//! Training draws blocks in a fresh permutation every epoch, derived only from `(seed, epoch)` by
//! a small RNG written out here, so the order is identical across runs, machines and library
//! versions (libtorch's and rand's generators promise none of that). Where the loader stands is
//! `(epoch, cursor)`; restoring it makes a resumed run draw exactly the batches a straight run
//! would.

use super::blocks::TokenBlocks;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// One batch: token ids `[B, L]` int64 and the attention mask `[B, L]` float32 (the dtype the
/// reference's loss multiplies by).
#[derive(Debug)]
pub struct Batch {
    pub x: Tensor,
    pub attention_mask: Tensor,
}

/// Where a loader stands: `cursor` batches of `epoch` have been drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub epoch: u64,
    pub cursor: usize,
}

/// Where an eval batch sits in the pass that all ranks make together: global batch `index`
/// holds `rows` rows (`batch_size * world`, fewer in the last) and this rank's rows of it are
/// `local` — what makes evaluation draws independent of the number of processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalPlace {
    pub index: usize,
    pub rows: usize,
    pub local: Vec<i64>,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Shuffled per epoch, last partial batch dropped, endless.
    Train { seed: u64 },
    /// In order, last partial batch kept, one pass.
    Eval,
}

pub struct Loader {
    blocks: Arc<TokenBlocks>,
    batch_size: usize,
    mode: Mode,
    device: Device,
    epoch: u64,
    cursor: usize,
    /// The current epoch's block order for this rank (cached so each batch is O(B)).
    order: Vec<u32>,
    order_epoch: Option<u64>,
    /// This process's share of the data: position `p` of every epoch's order belongs to rank
    /// `p % world` (as torch's DistributedSampler deals it), so ranks never overlap.
    rank: usize,
    world: usize,
}

impl Loader {
    /// Endless shuffled batches; fails when the split cannot fill a single batch.
    pub fn train(blocks: Arc<TokenBlocks>, batch_size: usize, seed: u64) -> Result<Loader> {
        if batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        if blocks.len() < batch_size {
            bail!(
                "{} holds {} blocks of {}, fewer than one training batch of {batch_size}; lower the batch size or the block length",
                blocks.path().display(),
                blocks.len(),
                blocks.block_size()
            );
        }
        Ok(Self::new(blocks, batch_size, Mode::Train { seed }))
    }

    /// One sequential pass (keeping the last partial batch); `reset` starts it again.
    pub fn eval(blocks: Arc<TokenBlocks>, batch_size: usize) -> Result<Loader> {
        if batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        Ok(Self::new(blocks, batch_size, Mode::Eval))
    }

    fn new(blocks: Arc<TokenBlocks>, batch_size: usize, mode: Mode) -> Loader {
        Loader {
            blocks,
            batch_size,
            mode,
            device: Device::Cpu,
            epoch: 0,
            cursor: 0,
            order: Vec::new(),
            order_epoch: None,
            rank: 0,
            world: 1,
        }
    }

    /// Restricts the loader to rank `rank` of `world`: each rank sees `len / world` blocks per
    /// epoch (train; the remainder is dropped so all ranks take the same number of steps) or
    /// every `world`-th block (eval).
    pub fn shard(mut self, rank: usize, world: usize) -> Result<Loader> {
        if world == 0 || rank >= world {
            bail!("rank {rank} is outside a world of {world}");
        }
        self.rank = rank;
        self.world = world;
        self.order_epoch = None;
        if matches!(self.mode, Mode::Train { .. }) && self.blocks_per_rank() < self.batch_size {
            bail!(
                "{} blocks shared by {world} ranks leave fewer than one batch of {} per rank",
                self.blocks.len(),
                self.batch_size
            );
        }
        Ok(self)
    }

    fn blocks_per_rank(&self) -> usize {
        match self.mode {
            Mode::Train { .. } => self.blocks.len() / self.world,
            Mode::Eval => (self.blocks.len() + self.world - 1 - self.rank) / self.world,
        }
    }

    /// Batches are created on `device`.
    pub fn with_device(mut self, device: Device) -> Loader {
        self.device = device;
        self
    }

    pub fn blocks(&self) -> &TokenBlocks {
        &self.blocks
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch (train: full batches only; eval: including the partial one).
    pub fn num_batches(&self) -> usize {
        match self.mode {
            Mode::Train { .. } => self.blocks_per_rank() / self.batch_size,
            Mode::Eval => self.blocks_per_rank().div_ceil(self.batch_size),
        }
    }

    pub fn state(&self) -> LoaderState {
        LoaderState {
            epoch: self.epoch,
            cursor: self.cursor,
        }
    }

    pub fn restore(&mut self, state: LoaderState) -> Result<()> {
        if state.cursor > self.num_batches() {
            bail!(
                "loader state has cursor {} but an epoch holds {} batches: was it saved with another batch size or dataset?",
                state.cursor,
                self.num_batches()
            );
        }
        if matches!(self.mode, Mode::Eval) && state.epoch != 0 {
            bail!("an eval loader has no epochs (state epoch {})", state.epoch);
        }
        self.epoch = state.epoch;
        self.cursor = state.cursor;
        Ok(())
    }

    /// Back to the start of the pass (eval) or of the current epoch (train).
    pub fn reset(&mut self) {
        self.cursor = 0;
    }

    /// The block indices of the next batch, advancing the state; `None` at the end of an eval
    /// pass. Exposed so tests (and debugging) can see the order without building tensors.
    pub fn next_indices(&mut self) -> Option<Vec<usize>> {
        match self.mode {
            Mode::Eval => {
                let n = self.blocks_per_rank();
                let start = self.cursor * self.batch_size;
                if start >= n {
                    return None;
                }
                let end = (start + self.batch_size).min(n);
                self.cursor += 1;
                Some((start..end).map(|p| self.rank + p * self.world).collect())
            }
            Mode::Train { seed } => {
                if self.cursor >= self.num_batches() {
                    self.epoch += 1;
                    self.cursor = 0;
                }
                if self.order_epoch != Some(self.epoch) {
                    let all = permutation(self.blocks.len(), seed, self.epoch);
                    let n = self.blocks_per_rank();
                    self.order = all
                        .into_iter()
                        .skip(self.rank)
                        .step_by(self.world)
                        .take(n)
                        .collect();
                    self.order_epoch = Some(self.epoch);
                }
                let start = self.cursor * self.batch_size;
                self.cursor += 1;
                Some(
                    self.order[start..start + self.batch_size]
                        .iter()
                        .map(|&i| i as usize)
                        .collect(),
                )
            }
        }
    }

    /// Global eval batches of `batch_size * world` blocks in one pass, however many of them
    /// this rank holds rows of (the last rank may run out one batch early).
    pub fn global_batches(&self) -> usize {
        self.blocks.len().div_ceil(self.batch_size * self.world)
    }

    /// The next eval batch and its [`EvalPlace`]; `None` at the end of this rank's share.
    pub fn next_eval_batch(&mut self) -> Option<(Batch, EvalPlace)> {
        debug_assert!(matches!(self.mode, Mode::Eval));
        let indices = self.next_indices()?;
        let global = self.batch_size * self.world;
        let index = indices[0] / global;
        let start = index * global;
        let place = EvalPlace {
            index,
            rows: (self.blocks.len() - start).min(global),
            local: indices.iter().map(|&i| (i - start) as i64).collect(),
        };
        Some((self.gather(&indices), place))
    }

    /// The next batch on the loader's device; `None` only at the end of an eval pass.
    pub fn next_batch(&mut self) -> Option<Batch> {
        let indices = self.next_indices()?;
        Some(self.gather(&indices))
    }

    fn gather(&self, indices: &[usize]) -> Batch {
        let l = self.blocks.block_size();
        let mut ids = vec![0i64; indices.len() * l];
        for (row, &i) in indices.iter().enumerate() {
            self.blocks.read_block(i, &mut ids[row * l..(row + 1) * l]);
        }
        let lengths: Vec<usize> = indices.iter().map(|&i| self.blocks.valid_len(i)).collect();
        batch_from(&ids, &lengths, l, self.device)
    }
}

/// What the training loop draws from: a prepared split ([`Loader`]) or a stream
/// ([`super::stream::StreamLoader`]).
pub trait TrainBatches {
    /// The next training batch; an error when the data yields none or cannot be read.
    fn next_train_batch(&mut self) -> Result<Batch>;
    fn state(&self) -> LoaderState;
    fn restore(&mut self, state: LoaderState) -> Result<()>;
}

impl TrainBatches for Loader {
    fn next_train_batch(&mut self) -> Result<Batch> {
        self.next_batch()
            .ok_or_else(|| anyhow::anyhow!("the training split yields no batch"))
    }

    fn state(&self) -> LoaderState {
        Loader::state(self)
    }

    fn restore(&mut self, state: LoaderState) -> Result<()> {
        Loader::restore(self, state)
    }
}

/// Row-major ids and per-row real lengths → a [`Batch`] on `device`.
pub(crate) fn batch_from(ids: &[i64], lengths: &[usize], block: usize, device: Device) -> Batch {
    let b = lengths.len();
    let mut mask = vec![1f32; b * block];
    for (row, &n) in lengths.iter().enumerate() {
        mask[row * block + n..(row + 1) * block].fill(0.0);
    }
    let shape = [b as i64, block as i64];
    Batch {
        x: Tensor::from_slice(ids).view(shape).to_device(device),
        attention_mask: Tensor::from_slice(&mask)
            .view(shape)
            .to_kind(Kind::Float)
            .to_device(device),
    }
}

impl Iterator for Loader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.next_batch()
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, well mixed, and fully specified, so the shuffle
/// is the same everywhere.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// The generator for one epoch of a run seeded `seed`.
    pub(crate) fn for_epoch(seed: u64, epoch: u64) -> SplitMix64 {
        let mut key = SplitMix64(epoch);
        SplitMix64(seed ^ key.next_u64())
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` without modulo bias (Lemire's multiply-and-reject).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = self.next_u64() as u128 * n as u128;
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

/// The block order of one epoch: Fisher–Yates driven by a generator seeded from `(seed, epoch)`.
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut rng = SplitMix64::for_epoch(seed, epoch);
    let mut order: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation_and_depends_on_epoch() {
        let a = permutation(1000, 7, 0);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<u32>>());
        assert_eq!(a, permutation(1000, 7, 0));
        assert_ne!(a, permutation(1000, 7, 1));
        assert_ne!(a, permutation(1000, 8, 0));
    }

    #[test]
    fn pinned_order() {
        // Pins the generator: a change here reorders every training run, so it must be deliberate.
        assert_eq!(permutation(8, 42, 0), permutation(8, 42, 0));
        assert_eq!(permutation(8, 42, 0), PINNED.to_vec());
    }

    // Checked against an independent Python transcription of the same three steps.
    const PINNED: [u32; 8] = [7, 0, 4, 5, 6, 1, 3, 2];
}
