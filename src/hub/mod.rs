//! The Hugging Face Hub: one cache, one client and one download path for everything mdlm fetches
//! from it — model checkpoints (`backbone=hf_dit`), the gen-PPL evaluator, tokenizers and the
//! datasets' converted Parquet files.
//!
//! Files land in the cache layout that Python's `huggingface_hub` writes and reads
//! (`models--owner--name/{refs,snapshots,blobs}`), so one cache serves both. The cache is read
//! first: a file already there for the revision asked for is never fetched again, and offline
//! (`HF_HUB_OFFLINE`, or `TRANSFORMERS_OFFLINE` / `HF_DATASETS_OFFLINE` for their kind) the
//! network is never touched. Downloads go through hf-hub, which writes `blobs/<etag>.part` and
//! renames it only once complete, so an interrupted transfer leaves nothing a later run takes for
//! a finished file, and the next run resumes it.

mod cache;
mod client;
mod error;
mod fetch;
mod progress;
mod repo;

pub use cache::{cache_dir, cached_commit, cached_file, snapshot_dir};
pub use client::{DEFAULT_ENDPOINT, HubClient, is_truthy, offline_var};
pub use fetch::{CONFIG_FILE, Hub, Listing, Snapshot};
pub use progress::DownloadBar;
pub use repo::{RepoKind, RepoRef};
