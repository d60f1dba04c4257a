//! Which raw files make a dataset's split, and how they read: the local layouts of the
//! reference's corpora as `datasets.load_dataset` sees them (one row per line for WikiText, PTB
//! and LM1B, per JSON line for LAMBADA and the scientific papers, per CSV record for AG News; the
//! reference's character chunks for text8; documents for OpenWebText and plain folders), each
//! alternatively as Parquet files the way the Hub serves them. Rows go through the dataset's
//! detokenizer, are tokenised without special tokens, and are then wrapped into blocks or padded
//! one per block ([`rows_to_blocks`]).
//!
//! Expected files, under `<cache_dir>/<name>/raw/` (the `../shared/data` layouts):
//!
//! | name | train | validation | test |
//! |---|---|---|---|
//! | `wikitext2`, `wikitext103` | `train.txt` / `wiki.train.tokens` | `valid.txt` / `wiki.valid.tokens` | `test.txt` / `wiki.test.tokens` |
//! | `ptb` | `ptb.train.txt` | `ptb.valid.txt` | `ptb.test.txt` |
//! | `lambada` | `lambada_test.jsonl` | the same (the reference only has the test set) | the same |
//! | `ag_news` | `train.csv` | `test.csv` (the reference validates on test) | `test.csv` |
//! | `lm1b` | `train.txt` | `test.txt` (the reference validates on test) | `test.txt` |
//! | `scientific_papers_*` | `train.jsonl` | `validation.jsonl` | `test.jsonl` (field `article`) |
//! | `text8`, `text8-crop` | `text8` (or `text8.zip`), cut at 90M/95M characters, or the reference's `text8.{train,validation,test}.txt` |||
//!
//! Any of them may instead hold Parquet files with the Hub's column (`text`; `sentence` for PTB,
//! `article` for the papers) as `<split>/*.parquet` or `<split>-*.parquet`, the split named as
//! on the Hub (`validation` for `ptb.valid.txt`'s role, `test` where the table says so).

use super::detok::Detokenizer;
use super::source::{Format, RawFile, list_files};
use super::split::Split;
use super::tokenizer::Tokenizer;
use super::wrap::{pad_documents, wrap_documents};
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corpus {
    WikiText,
    Ptb,
    Lambada,
    AgNews,
    Lm1b,
    SciPapers,
    Text8,
}

/// The reference's text8 split points (from the D3PM code base), in characters.
pub const TEXT8_TRAIN_END: u64 = 90_000_000;
pub const TEXT8_VALID_END: u64 = 95_000_000;

impl Corpus {
    pub fn by_name(name: &str) -> Option<Corpus> {
        match name {
            "wikitext2" | "wikitext103" => Some(Corpus::WikiText),
            "ptb" => Some(Corpus::Ptb),
            "lambada" => Some(Corpus::Lambada),
            "ag_news" => Some(Corpus::AgNews),
            "lm1b" => Some(Corpus::Lm1b),
            "scientific_papers_arxiv" | "scientific_papers_pubmed" => Some(Corpus::SciPapers),
            "text8" | "text8-crop" => Some(Corpus::Text8),
            _ => None,
        }
    }

    /// The field that holds the text (`preprocess_and_tokenize`'s choice).
    pub fn column(self) -> &'static str {
        match self {
            Corpus::Ptb => "sentence",
            Corpus::SciPapers => "article",
            _ => "text",
        }
    }

    /// The Hub's name for the split this corpus serves as `split`.
    pub fn hub_split(self, split: Split) -> &'static str {
        match (self, split) {
            (Corpus::Lambada, _) => "test",
            (Corpus::AgNews | Corpus::Lm1b, Split::Validation) => "test",
            (_, s) => s.as_str(),
        }
    }

    /// Accepted local file names for a split, first match wins, and how each reads.
    fn split_files(self, split: Split) -> Vec<(&'static str, Format)> {
        let lines = |keep_newline, trim| Format::Lines { keep_newline, trim };
        let names: &[&str] = match (self, split) {
            (Corpus::WikiText, Split::Train) => &["train.txt", "wiki.train.tokens"],
            (Corpus::WikiText, Split::Validation) => &["valid.txt", "wiki.valid.tokens"],
            (Corpus::WikiText, Split::Test) => &["test.txt", "wiki.test.tokens"],
            (Corpus::Ptb, Split::Train) => &["ptb.train.txt"],
            (Corpus::Ptb, Split::Validation) => &["ptb.valid.txt"],
            (Corpus::Ptb, Split::Test) => &["ptb.test.txt"],
            (Corpus::Lambada, _) => &["lambada_test.jsonl"],
            (Corpus::AgNews, Split::Train) => &["train.csv"],
            (Corpus::AgNews, _) => &["test.csv"],
            (Corpus::Lm1b, Split::Train) => &["train.txt"],
            (Corpus::Lm1b, _) => &["test.txt"],
            (Corpus::SciPapers, Split::Train) => &["train.jsonl"],
            (Corpus::SciPapers, Split::Validation) => &["validation.jsonl"],
            (Corpus::SciPapers, Split::Test) => &["test.jsonl"],
            (Corpus::Text8, _) => &[],
        };
        let format = match self {
            // One row per line, newline kept (" \n" rows included).
            Corpus::WikiText => lines(true, false),
            // ptb_text_only strips every line.
            Corpus::Ptb => lines(false, true),
            Corpus::Lm1b => lines(false, false),
            Corpus::Lambada | Corpus::SciPapers => Format::Jsonl {
                field: self.column().to_string(),
            },
            // The HF ag_news loader joins title and description with a space; the label is unused.
            Corpus::AgNews => Format::AgNewsCsv,
            Corpus::Text8 => Format::Whole,
        };
        names.iter().map(|n| (*n, format.clone())).collect()
    }

    /// The split's raw files under `raw`, or one line naming the dataset, the folder and the
    /// files it wants. `chunk` is the text8 chunk length in characters.
    pub fn local_files(
        self,
        name: &str,
        raw: &Path,
        split: Split,
        chunk: usize,
    ) -> Result<Vec<RawFile>> {
        if self == Corpus::Text8 {
            return text8_files(name, raw, split, chunk);
        }
        if let Some((file, format)) = self
            .split_files(split)
            .into_iter()
            .map(|(f, fmt)| (raw.join(f), fmt))
            .find(|(p, _)| p.is_file())
        {
            return Ok(vec![RawFile::new(file, format)]);
        }
        let parquet = parquet_files(raw, self.hub_split(split))?;
        if !parquet.is_empty() {
            return Ok(parquet
                .into_iter()
                .map(|p| {
                    RawFile::new(
                        p,
                        Format::Parquet {
                            column: self.column().to_string(),
                        },
                    )
                })
                .collect());
        }
        let names: Vec<&str> = self.split_files(split).iter().map(|(n, _)| *n).collect();
        bail!(
            "data '{name}' {} split is not available offline: put {} (or Parquet files {hub}/*.parquet with column '{}') in {} (small copies of several corpora are in the shared data folder)",
            split.as_str(),
            names.join(" or "),
            self.column(),
            raw.display(),
            hub = self.hub_split(split),
        )
    }
}

/// Parquet files for the Hub split `split` in `raw`: `<split>/*.parquet`, else
/// `<split>-*.parquet` (the names `datasets` gives shards), in name order.
pub fn parquet_files(raw: &Path, split: &str) -> Result<Vec<PathBuf>> {
    let nested = list_files(&raw.join(split), &["parquet"])?;
    if !nested.is_empty() {
        return Ok(nested);
    }
    Ok(list_files(raw, &["parquet"])?
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{split}-")))
        })
        .collect())
}

/// text8 as the reference reads it: its own split files when present, else the one `text8`
/// file (extracted from `text8.zip` on first use) cut at 90M and 95M characters; each split is
/// then cut into `chunk`-character documents, the short tail dropped.
fn text8_files(name: &str, raw: &Path, split: Split, chunk: usize) -> Result<Vec<RawFile>> {
    let chunk = chunk as u64;
    let own = raw.join(format!("text8.{}.txt", split.as_str()));
    if own.is_file() {
        let end = std::fs::metadata(&own)
            .with_context(|| format!("reading {}", own.display()))?
            .len();
        return Ok(vec![RawFile::new(
            own,
            Format::Chunks {
                start: 0,
                end,
                size: chunk,
            },
        )]);
    }
    let whole = raw.join("text8");
    let zip = raw.join("text8.zip");
    if !whole.is_file() && zip.is_file() {
        extract_text8(&zip, &whole)?;
    }
    if !whole.is_file() {
        bail!(
            "data '{name}' is not available offline: put the text8 corpus in {} as 'text8' or 'text8.zip' (or the split files text8.train.txt, text8.validation.txt, text8.test.txt)",
            raw.display()
        );
    }
    let len = std::fs::metadata(&whole)
        .with_context(|| format!("reading {}", whole.display()))?
        .len();
    let (start, end) = match split {
        Split::Train => (0, TEXT8_TRAIN_END),
        Split::Validation => (TEXT8_TRAIN_END, TEXT8_VALID_END),
        Split::Test => (TEXT8_VALID_END, len),
    };
    if len < end {
        bail!(
            "{} has {len} characters; the reference's text8 splits need {end} (for a smaller corpus use text8.train.txt / text8.validation.txt / text8.test.txt)",
            whole.display()
        );
    }
    Ok(vec![RawFile::new(
        whole,
        Format::Chunks {
            start,
            end,
            size: chunk,
        },
    )])
}

/// The `text8` member of the reference's download, written atomically next to it.
fn extract_text8(zip: &Path, out: &Path) -> Result<()> {
    let file = std::fs::File::open(zip).with_context(|| format!("opening {}", zip.display()))?;
    let mut archive =
        zip::ZipArchive::new(file).with_context(|| format!("reading {}", zip.display()))?;
    let mut member = archive
        .by_name("text8")
        .with_context(|| format!("{} has no member 'text8'", zip.display()))?;
    let mut bytes = Vec::with_capacity(member.size() as usize);
    std::io::Read::read_to_end(&mut member, &mut bytes)
        .with_context(|| format!("extracting text8 from {}", zip.display()))?;
    super::blocks::write_atomic(out, &bytes)
}

/// The detokenizer over all rows in place (rayon); `None` leaves them as they are.
pub fn detokenize_rows(detok: Option<Detokenizer>, mut rows: Vec<String>) -> Vec<String> {
    if let Some(d) = detok {
        rows.par_iter_mut().for_each(|r| *r = d.apply(r));
    }
    rows
}

/// Token ids of every row without special tokens (rayon), each followed by `eos` when given.
pub fn tokenize_rows(
    tokenizer: &dyn Tokenizer,
    rows: &[String],
    eos: Option<u32>,
) -> Result<Vec<Vec<u32>>> {
    rows.par_iter()
        .map(|r| {
            let mut ids = tokenizer.encode(r)?;
            ids.extend(eos);
            Ok(ids)
        })
        .collect()
}

/// Blocks made from rows, flattened row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowBlocks {
    pub ids: Vec<u32>,
    /// Real tokens per block on the padded (`wrap=false`) layout; `None` when wrapped.
    pub lengths: Option<Vec<u32>>,
    /// Tokens after tokenisation (EOS included on the wrap path), before wrapping or padding.
    pub tokens: usize,
}

/// Detokenized rows → blocks, as `get_dataset` does: on the wrap path each row gets the wrap EOS
/// and `group_texts` runs per map batch with the wrap BOS/EOS ([`Tokenizer::wrap_ids`]); otherwise
/// each row becomes `[first] ids [last]` with the tokenizer's special tokens (truncated to fit),
/// right-padded with the pad id.
pub fn rows_to_blocks(
    tokenizer: &dyn Tokenizer,
    rows: &[String],
    wrap: bool,
    block_size: usize,
    map_batch_size: usize,
    insert_eos: bool,
) -> Result<RowBlocks> {
    if wrap {
        let (bos, eos) = tokenizer.wrap_ids();
        // The reference's `insert_eos`: EOS after every document (the MDLM paper's protocol);
        // without it documents run into each other and only the block wrap adds BOS/EOS.
        let docs = tokenize_rows(tokenizer, rows, insert_eos.then_some(eos))?;
        let tokens = docs.iter().map(Vec::len).sum();
        let ids = wrap_documents(&docs, block_size, bos, eos, map_batch_size)?;
        return Ok(RowBlocks {
            ids,
            lengths: None,
            tokens,
        });
    }
    let mut docs = tokenize_rows(tokenizer, rows, None)?;
    let tokens = docs.iter().map(Vec::len).sum();
    if let Some((first, last)) = tokenizer.special_tokens_around() {
        if block_size < 2 {
            bail!("block size {block_size} leaves no room for the tokenizer's two special tokens");
        }
        docs.par_iter_mut().for_each(|d| {
            d.truncate(block_size - 2);
            d.insert(0, first);
            d.push(last);
        });
    }
    let (ids, lengths) = pad_documents(&docs, block_size, tokenizer.pad_id());
    Ok(RowBlocks {
        ids,
        lengths: Some(lengths),
        tokens,
    })
}
