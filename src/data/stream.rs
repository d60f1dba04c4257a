//! Training batches straight from the raw corpus (`data.streaming=true`): documents are read,
//! tokenised and wrapped (or padded) on a thread of their own while the model trains, with no
//! prepared file and memory bounded by a shuffle buffer, so training on OpenWebText or LM1B starts
//! at once. The reference's streaming groups materialise the training set anyway; these do not.
//!
//! Order: each epoch reads the documents in order, passes the blocks through a shuffle buffer of
//! `SHUFFLE_BUFFER` blocks driven by a generator seeded from `(seed, epoch)` (the scheme of
//! `datasets.IterableDataset.shuffle`), deals block `p` of the shuffled stream to rank
//! `p % world`, and drops each rank's last partial batch. The stream is a function of the seed
//! and the epoch alone, so the loader's state is the same `(epoch, cursor)` as a prepared split's:
//! restoring it replays the epoch up to the cursor (re-tokenising, without the model) and goes on
//! with exactly the batches a straight run would have drawn.

use super::corpus::{detokenize_rows, rows_to_blocks};
use super::loader::{Batch, LoaderState, SplitMix64, TrainBatches, batch_from};
use super::prepare::{DataSpec, Layout, Split, layout};
use super::source::documents;
use super::tokenizer::Tokenizer;
use super::tokenizer_by_name;
use super::wrap::REFERENCE_MAP_BATCH_SIZE;
use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use tch::Device;

/// Blocks held for shuffling.
pub const SHUFFLE_BUFFER: usize = 10_000;
/// Map batches tokenised together (the wrap remainder still falls per map batch).
const MAP_BATCHES_PER_STEP: usize = 8;

enum Msg {
    Block(Vec<u32>, usize),
    EpochEnd,
    Failed(anyhow::Error),
}

/// What every epoch's reader needs.
struct Source {
    name: String,
    layout: Layout,
    /// Documents in the corpus, when the split selection needs it.
    total: usize,
    tokenizer: Arc<dyn Tokenizer>,
    wrap: bool,
    seed: u64,
    shuffle_buffer: usize,
}

pub struct StreamLoader {
    source: Arc<Source>,
    batch_size: usize,
    rank: usize,
    world: usize,
    device: Device,
    epoch: u64,
    cursor: usize,
    rx: Option<Receiver<Msg>>,
}

impl StreamLoader {
    /// Endless shuffled training batches of `dataset`'s training split, as `spec` prepares it.
    pub fn train(
        spec: &DataSpec,
        dataset: &str,
        batch_size: usize,
        seed: u64,
    ) -> Result<StreamLoader> {
        Self::with_buffer(spec, dataset, batch_size, seed, SHUFFLE_BUFFER)
    }

    /// [`StreamLoader::train`] with another shuffle-buffer size (0: documents' order).
    pub fn with_buffer(
        spec: &DataSpec,
        dataset: &str,
        batch_size: usize,
        seed: u64,
        shuffle_buffer: usize,
    ) -> Result<StreamLoader> {
        if batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        let layout = layout(spec, dataset, Split::Train)?;
        let total = if layout.select.needs_count() {
            let mut n = 0;
            for f in &layout.files {
                n += f.count()?;
            }
            n
        } else {
            0
        };
        let tokenizer: Arc<dyn Tokenizer> = Arc::from(tokenizer_by_name(&spec.tokenizer)?);
        Ok(StreamLoader {
            source: Arc::new(Source {
                name: dataset.to_string(),
                layout,
                total,
                tokenizer,
                wrap: spec.wrap,
                seed,
                shuffle_buffer,
            }),
            batch_size,
            rank: 0,
            world: 1,
            device: Device::Cpu,
            epoch: 0,
            cursor: 0,
            rx: None,
        })
    }

    /// Restricts the loader to rank `rank` of `world` (block `p` of every epoch goes to rank
    /// `p % world`).
    pub fn shard(mut self, rank: usize, world: usize) -> Result<StreamLoader> {
        if world == 0 || rank >= world {
            bail!("rank {rank} is outside a world of {world}");
        }
        self.rank = rank;
        self.world = world;
        self.rx = None;
        Ok(self)
    }

    pub fn with_device(mut self, device: Device) -> StreamLoader {
        self.device = device;
        self
    }

    pub fn tokenizer(&self) -> &dyn Tokenizer {
        &*self.source.tokenizer
    }

    pub fn block_size(&self) -> usize {
        self.source.layout.block_size
    }

    /// The next batch's blocks and their real lengths, advancing the state (no tensors; tests
    /// and resumption use it).
    pub fn next_blocks(&mut self) -> Result<Vec<(Vec<u32>, usize)>> {
        let mut restarted = false;
        loop {
            if self.rx.is_none() {
                self.rx = Some(spawn_epoch(
                    self.source.clone(),
                    self.epoch,
                    self.rank,
                    self.world,
                ));
            }
            let rx = self.rx.as_ref().expect("spawned above");
            let mut rows = Vec::with_capacity(self.batch_size);
            let mut ended = false;
            while rows.len() < self.batch_size {
                match rx.recv() {
                    Ok(Msg::Block(ids, n)) => rows.push((ids, n)),
                    Ok(Msg::EpochEnd) => {
                        ended = true;
                        break;
                    }
                    Ok(Msg::Failed(e)) => {
                        self.rx = None;
                        return Err(e.context(format!("streaming data '{}'", self.source.name)));
                    }
                    Err(_) => {
                        self.rx = None;
                        bail!(
                            "the reader of data '{}' stopped unexpectedly",
                            self.source.name
                        );
                    }
                }
            }
            if !ended {
                self.cursor += 1;
                return Ok(rows);
            }
            // The epoch is over; its partial batch is dropped, as the prepared loader drops it.
            if self.cursor == 0 || restarted {
                bail!(
                    "streaming data '{}' yields fewer than one batch of {} blocks per rank in an epoch",
                    self.source.name,
                    self.batch_size
                );
            }
            restarted = true;
            self.epoch += 1;
            self.cursor = 0;
            self.rx = None;
        }
    }
}

impl TrainBatches for StreamLoader {
    fn next_train_batch(&mut self) -> Result<Batch> {
        let rows = self.next_blocks()?;
        let l = self.block_size();
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|(b, _)| b.iter().map(|&v| v as i64))
            .collect();
        let lengths: Vec<usize> = rows.iter().map(|(_, n)| *n).collect();
        Ok(batch_from(&ids, &lengths, l, self.device))
    }

    fn state(&self) -> LoaderState {
        LoaderState {
            epoch: self.epoch,
            cursor: self.cursor,
        }
    }

    fn restore(&mut self, state: LoaderState) -> Result<()> {
        self.epoch = state.epoch;
        self.cursor = 0;
        self.rx = None;
        for i in 0..state.cursor {
            self.next_blocks().with_context(|| {
                format!(
                    "replaying the stream to batch {} of epoch {}",
                    i + 1,
                    state.epoch
                )
            })?;
            if self.epoch != state.epoch {
                bail!(
                    "loader state has cursor {} but epoch {} of the stream holds {i} batches: was it saved with another batch size or dataset?",
                    state.cursor,
                    state.epoch
                );
            }
        }
        Ok(())
    }
}

/// One epoch's reader: documents → blocks → shuffle buffer → this rank's blocks, then
/// `EpochEnd`. It stops when the receiver is dropped.
fn spawn_epoch(source: Arc<Source>, epoch: u64, rank: usize, world: usize) -> Receiver<Msg> {
    let (tx, rx) = sync_channel::<Msg>(4096);
    std::thread::spawn(move || {
        let mut rng = SplitMix64::for_epoch(source.seed, epoch);
        let mut buffer: Vec<(Vec<u32>, usize)> = Vec::new();
        let mut dealt = 0usize;
        // Deals one block to its rank; false once the receiver is gone.
        let deal = |block: (Vec<u32>, usize), dealt: &mut usize| -> bool {
            let mine = *dealt % world == rank;
            *dealt += 1;
            !mine || tx.send(Msg::Block(block.0, block.1)).is_ok()
        };
        let l = source.layout.block_size;
        let step = REFERENCE_MAP_BATCH_SIZE * MAP_BATCHES_PER_STEP;
        let mut docs = documents(&source.layout.files)
            .enumerate()
            .filter_map(|(i, d)| match d {
                Ok(text) => source
                    .layout
                    .select
                    .keeps(i, source.total)
                    .then_some(Ok(text)),
                Err(e) => Some(Err(e)),
            });
        loop {
            let mut rows = Vec::with_capacity(step);
            for d in docs.by_ref().take(step) {
                match d {
                    Ok(text) => rows.push(text),
                    Err(e) => {
                        let _ = tx.send(Msg::Failed(e));
                        return;
                    }
                }
            }
            if rows.is_empty() {
                break;
            }
            let rows = detokenize_rows(source.layout.detok, rows);
            let made = match rows_to_blocks(
                &*source.tokenizer,
                &rows,
                source.wrap,
                l,
                REFERENCE_MAP_BATCH_SIZE,
                // Training documents always end in EOS, as the reference's do.
                true,
            ) {
                Ok(m) => m,
                Err(e) => {
                    let _ = tx.send(Msg::Failed(e));
                    return;
                }
            };
            for (k, ids) in made.ids.chunks_exact(l).enumerate() {
                let n = made.lengths.as_ref().map_or(l, |v| v[k] as usize);
                if source.shuffle_buffer == 0 {
                    if !deal((ids.to_vec(), n), &mut dealt) {
                        return;
                    }
                    continue;
                }
                buffer.push((ids.to_vec(), n));
                if buffer.len() > source.shuffle_buffer {
                    let j = rng.below(buffer.len() as u64) as usize;
                    if !deal(buffer.swap_remove(j), &mut dealt) {
                        return;
                    }
                }
            }
        }
        while !buffer.is_empty() {
            let j = rng.below(buffer.len() as u64) as usize;
            if !deal(buffer.swap_remove(j), &mut dealt) {
                return;
            }
        }
        let _ = tx.send(Msg::EpochEnd);
    });
    rx
}
