//! Randomness is a function of (seed, step, micro-batch): every micro-batch reseeds libtorch's
//! generators, so a run resumed from a checkpoint draws exactly what the uninterrupted run drew,
//! with no generator state to save, and data-parallel ranks draw the rows of one global batch.

use crate::dist::ProcessGroup;
use crate::model::{RowShare, Rows};

const TRAIN_STREAM: u64 = 1;
const VAL_STREAM: u64 = 2;
/// Per-rank randomness (dropout) of data-parallel replicas.
const RANK_STREAM: u64 = 3;
/// Batches of `sample-eval`.
const SAMPLE_STREAM: u64 = 4;
/// Micro-batches 1, 2, ... use streams `MICRO_STREAM + micro`.
const MICRO_STREAM: u64 = 1 << 32;

fn seed_of(seed: u64, stream: u64, step: u64) -> i64 {
    let s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ stream.wrapping_mul(0xBF58_476D_1CE4_E5B9)
        ^ step;
    (s & 0x7FFF_FFFF_FFFF_FFFF) as i64
}

/// Micro-batch 0 keeps the step's seed (so runs without accumulation draw what they always
/// drew); later micro-batches get streams of their own.
pub(super) fn reseed_micro(seed: u64, step: u64, micro: usize) {
    let stream = if micro == 0 {
        TRAIN_STREAM
    } else {
        MICRO_STREAM + micro as u64
    };
    tch::manual_seed(seed_of(seed, stream, step));
}

/// The draws of global validation batch `index`: the same at every validation (successive
/// validations are comparable) and whichever process holds its rows (the number does not
/// depend on the process count).
pub(super) fn reseed_validation(seed: u64, index: usize) {
    tch::manual_seed(seed_of(seed, VAL_STREAM, index as u64));
}

/// The draws of `sample-eval`'s batch `index`: distinct per batch, so ranks drawing different
/// batches never share noise, and the same whichever rank draws it (the samples do not depend
/// on the process count, given the per-process batch).
pub fn reseed_sample_batch(seed: u64, index: usize) {
    tch::manual_seed(seed_of(seed, SAMPLE_STREAM, index as u64));
}

/// The rows a rank holds at `(step, micro)`, the whole batch outside data parallelism.
pub(super) fn row_share(
    dist: Option<&ProcessGroup>,
    seed: u64,
    step: u64,
    micro: usize,
) -> Rows<'static> {
    let Some(pg) = dist else {
        return Rows::Whole;
    };
    let key = step
        .wrapping_mul(1 << 20)
        .wrapping_add(micro as u64)
        .wrapping_mul(1 << 12)
        .wrapping_add(pg.rank() as u64);
    Rows::Share(RowShare {
        rank: pg.rank() as i64,
        world: pg.world() as i64,
        rank_seed: seed_of(seed, RANK_STREAM, key),
    })
}
