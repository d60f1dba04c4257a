//! Row-based corpora read from local files, as the reference's `get_dataset` sees them after
//! `datasets.load_dataset`: one row per line (WikiText, PTB, LM1B), per JSON line (LAMBADA) or per
//! CSV record (AG News). Rows go through the dataset's detokenizer, are tokenised without special
//! tokens, and are then wrapped into blocks or padded one per block.
//!
//! Expected files, under `<cache_dir>/<name>/raw/` (the `../shared/data` layouts):
//!
//! | name | train | validation |
//! |---|---|---|
//! | `wikitext2`, `wikitext103` | `train.txt` / `wiki.train.tokens` | `valid.txt` / `wiki.valid.tokens` |
//! | `ptb` | `ptb.train.txt` | `ptb.valid.txt` |
//! | `lambada` | `lambada_test.jsonl` | `lambada_test.jsonl` (the reference only has the test set) |
//! | `ag_news` | `train.csv` | `test.csv` (the reference validates on test) |
//! | `lm1b` | `train.txt` | `test.txt` (the reference validates on test) |

use super::detok::Detokenizer;
use super::prepare::Split;
use super::tokenizer::Tokenizer;
use super::wrap::{pad_documents, wrap_documents};
use anyhow::{Context, Result, anyhow, bail};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corpus {
    WikiText,
    Ptb,
    Lambada,
    AgNews,
    Lm1b,
}

/// Dataset names with a row-based local layout.
pub const CORPUS_NAMES: [&str; 6] = [
    "wikitext2",
    "wikitext103",
    "ptb",
    "lambada",
    "ag_news",
    "lm1b",
];

impl Corpus {
    pub fn by_name(name: &str) -> Option<Corpus> {
        match name {
            "wikitext2" | "wikitext103" => Some(Corpus::WikiText),
            "ptb" => Some(Corpus::Ptb),
            "lambada" => Some(Corpus::Lambada),
            "ag_news" => Some(Corpus::AgNews),
            "lm1b" => Some(Corpus::Lm1b),
            _ => None,
        }
    }

    /// Accepted file names for a split, first match wins.
    pub fn split_files(self, split: Split) -> &'static [&'static str] {
        match (self, split) {
            (Corpus::WikiText, Split::Train) => &["train.txt", "wiki.train.tokens"],
            (Corpus::WikiText, Split::Validation) => &["valid.txt", "wiki.valid.tokens"],
            (Corpus::Ptb, Split::Train) => &["ptb.train.txt"],
            (Corpus::Ptb, Split::Validation) => &["ptb.valid.txt"],
            (Corpus::Lambada, _) => &["lambada_test.jsonl"],
            (Corpus::AgNews, Split::Train) => &["train.csv"],
            (Corpus::AgNews, Split::Validation) => &["test.csv"],
            (Corpus::Lm1b, Split::Train) => &["train.txt"],
            (Corpus::Lm1b, Split::Validation) => &["test.txt"],
        }
    }

    /// `<raw>/<file>` for the split, or one line naming the dataset, the folder and the files.
    pub fn find_split_file(self, name: &str, raw: &Path, split: Split) -> Result<PathBuf> {
        let names = self.split_files(split);
        names
            .iter()
            .map(|f| raw.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow!(
                    "data '{name}' {} split is not available offline: put {} in {} (small copies of several corpora are in the shared data folder)",
                    split.as_str(),
                    names.join(" or "),
                    raw.display()
                )
            })
    }

    /// The rows of one file, as the Hugging Face loader yields them.
    pub fn read_rows(self, path: &Path) -> Result<Vec<String>> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(match self {
            // One row per line, newline kept (" \n" rows included).
            Corpus::WikiText => text.split_inclusive('\n').map(str::to_string).collect(),
            // ptb_text_only strips every line.
            Corpus::Ptb => text.lines().map(|l| l.trim().to_string()).collect(),
            Corpus::Lm1b => text.lines().map(str::to_string).collect(),
            Corpus::Lambada => text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    let v: serde_json::Value = serde_json::from_str(l)
                        .with_context(|| format!("{} line {}", path.display(), i + 1))?;
                    v["text"].as_str().map(str::to_string).ok_or_else(|| {
                        anyhow!("{} line {}: no string field 'text'", path.display(), i + 1)
                    })
                })
                .collect::<Result<_>>()?,
            // The HF ag_news loader joins title and description with a space; the label is unused.
            Corpus::AgNews => parse_csv(&text)
                .with_context(|| format!("parsing {}", path.display()))?
                .into_iter()
                .enumerate()
                .map(|(i, rec)| match &rec[..] {
                    [_, title, description, ..] => Ok(format!("{title} {description}")),
                    _ => bail!(
                        "{} record {}: expected label,title,description",
                        path.display(),
                        i + 1
                    ),
                })
                .collect::<Result<_>>()?,
        })
    }
}

/// RFC 4180 records: comma separated, fields optionally double-quoted with `""` as a quote.
fn parse_csv(text: &str) -> Result<Vec<Vec<String>>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut any = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                quoted = true;
                any = true;
            }
            ',' => {
                record.push(std::mem::take(&mut field));
                any = true;
            }
            '\r' => {}
            '\n' => {
                if any || !field.is_empty() {
                    record.push(std::mem::take(&mut field));
                    records.push(std::mem::take(&mut record));
                }
                any = false;
            }
            _ => {
                field.push(c);
                any = true;
            }
        }
    }
    if quoted {
        bail!("unterminated quoted field");
    }
    if any || !field.is_empty() {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

/// The detokenizer over all rows (rayon); `None` leaves them as they are.
pub fn detokenize_rows(detok: Option<Detokenizer>, rows: &[String]) -> Vec<String> {
    match detok {
        Some(d) => rows.par_iter().map(|r| d.apply(r)).collect(),
        None => rows.to_vec(),
    }
}

/// Token ids of every row without special tokens (rayon), each followed by `eos` when given.
pub fn tokenize_rows(
    tokenizer: &dyn Tokenizer,
    rows: &[String],
    eos: Option<u32>,
) -> Vec<Vec<u32>> {
    rows.par_iter()
        .map(|r| {
            let mut ids = tokenizer.encode(r);
            ids.extend(eos);
            ids
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
        let docs = tokenize_rows(tokenizer, rows, insert_eos.then_some(eos));
        let tokens = docs.iter().map(Vec::len).sum();
        let ids = wrap_documents(&docs, block_size, bos, eos, map_batch_size)?;
        return Ok(RowBlocks {
            ids,
            lengths: None,
            tokens,
        });
    }
    let mut docs = tokenize_rows(tokenizer, rows, None);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_commas() {
        let r = parse_csv("\"3\",\"a, b\",\"say \"\"hi\"\"\"\n\"1\",x,y\n").unwrap();
        assert_eq!(
            r,
            vec![vec!["3", "a, b", "say \"hi\""], vec!["1", "x", "y"]]
        );
    }
}
