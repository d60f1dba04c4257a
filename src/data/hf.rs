//! Hugging Face tokenizers (`tokenizer.json`, via the `tokenizers` crate) set up the way the
//! reference's `dataloader.get_tokenizer` sets them up, and resolved from a file, a folder, or a
//! Hub repo id (through [`crate::hub`]: the cache first, else downloaded unless offline).
//!
//! What `get_tokenizer` does, and this mirrors:
//! * GPT-2 style tokenizers (no BERT special tokens) get a BERT-style post-processor, so
//!   encoding *with* special tokens gives `[BOS] ids [EOS]` (both `<|endoftext|>` for GPT-2);
//! * a tokenizer without a pad token gets `[PAD]` added after the vocabulary (50257 for GPT-2)
//!   while the reported vocabulary size stays the model's (50257);
//! * a tokenizer without BOS/EOS uses `[CLS]` / `[SEP]` (BERT);
//! * the diffusion mask is the tokenizer's `[MASK]` when it has one (103 for BERT), else the model
//!   appends one at index `vocab_size` (the same id as GPT-2's added `[PAD]`).
//!
//! The reference loads BERT through the slow `BertTokenizer` (`vocab.txt`); its fixtures show the
//! fast `tokenizer.json` agrees with it on every string tested.

use super::tokenizer::Tokenizer;
use crate::hub::{Hub, RepoKind, RepoRef};
use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, PostProcessorWrapper};

/// The special tokens a repo's `tokenizer_config.json` names (a plain string or an added-token
/// object with `content`), and its `tokenizer_class`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeclaredTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub cls: Option<String>,
    pub sep: Option<String>,
    pub mask: Option<String>,
    pub class: Option<String>,
}

impl DeclaredTokens {
    /// From `tokenizer_config.json` next to `tokenizer_json`, when there is one.
    pub fn beside(tokenizer_json: &Path) -> Result<DeclaredTokens> {
        let path = tokenizer_json.with_file_name("tokenizer_config.json");
        if !path.is_file() {
            return Ok(DeclaredTokens::default());
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let token = |key: &str| match &v[key] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => {
                o.get("content").and_then(|c| c.as_str()).map(String::from)
            }
            _ => None,
        };
        Ok(DeclaredTokens {
            bos: token("bos_token"),
            eos: token("eos_token"),
            pad: token("pad_token"),
            cls: token("cls_token"),
            sep: token("sep_token"),
            mask: token("mask_token"),
            class: v["tokenizer_class"].as_str().map(String::from),
        })
    }
}

/// The token `get_tokenizer` adds when a tokenizer has none.
pub const ADDED_PAD: &str = "[PAD]";

/// A `tokenizer.json` tokenizer with the reference's changes applied.
pub struct HfTokenizer {
    name: String,
    inner: tokenizers::Tokenizer,
    source: PathBuf,
    /// FNV-1a 64 of the `tokenizer.json` bytes, for prepared-data recipes.
    file_hash: u64,
    vocab_size: usize,
    bos: (String, u32),
    eos: (String, u32),
    pad: u32,
    mask: Option<u32>,
    /// `tokenizer.encode(token)[0]` for BOS and EOS, as `get_dataset` computes them.
    wrap_bos: u32,
    wrap_eos: u32,
}

/// One encoding with the tokenizer's special tokens added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// `Diffusion.eval_retokenize`: rows right-padded to the longest (after truncation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retokenized {
    /// `[rows][width]`, padded with the pad id.
    pub input_ids: Vec<Vec<u32>>,
    /// `[rows][width]`, 1 for real tokens.
    pub attention_mask: Vec<Vec<u32>>,
}

impl HfTokenizer {
    /// A `tokenizer.json` path, a folder holding one, or a Hub repo id (`owner/name[@revision]`)
    /// through [`crate::hub`]: the cache first, else downloaded unless offline.
    pub fn from_name_or_path(name: &str) -> Result<HfTokenizer> {
        Self::from_name_or_path_with(name, &Hub::from_env(RepoKind::Model))
    }

    /// As [`HfTokenizer::from_name_or_path`], looking a repo id up in the hub cache at `cache`
    /// only.
    pub fn from_name_or_path_in(name: &str, cache: &Path) -> Result<HfTokenizer> {
        Self::from_name_or_path_with(name, &Hub::offline(cache))
    }

    /// As [`HfTokenizer::from_name_or_path`], through `hub`. From a repo, `tokenizer.json` and
    /// (when the repo has one) `tokenizer_config.json`, whose special tokens count.
    pub fn from_name_or_path_with(name: &str, hub: &Hub) -> Result<HfTokenizer> {
        let p = Path::new(name);
        let file = if p.is_file() {
            p.to_path_buf()
        } else if p.is_dir() {
            let f = p.join("tokenizer.json");
            if !f.is_file() {
                bail!(
                    "tokenizer folder {} has no tokenizer.json; point at a folder that holds one",
                    p.display()
                );
            }
            f
        } else {
            let repo = RepoRef::parse_model(name)?;
            hub.snapshot(&repo, &["tokenizer.json"], &["tokenizer_config.json"])
                .with_context(|| format!("tokenizer '{name}'"))?
                .dir
                .join("tokenizer.json")
        };
        Self::from_file(name, &file)
    }

    /// Loads `file` and applies `get_tokenizer`'s changes; `name` is what configs call it.
    pub fn from_file(name: &str, file: &Path) -> Result<HfTokenizer> {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let mut inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| anyhow!("{} is not a tokenizer.json: {e}", file.display()))?;
        let vocab_size = inner.get_vocab_size(false);
        let find = |t: &tokenizers::Tokenizer, tokens: &[&str]| {
            tokens
                .iter()
                .find_map(|s| t.token_to_id(s).map(|id| (s.to_string(), id)))
        };
        // Tokens the repo's tokenizer_config.json names win; the vocabulary decides the rest, as
        // the tokenizer classes' defaults do for the two tokenizers the reference uses (neither
        // GPT-2's nor BERT's config names any).
        let declared = DeclaredTokens::beside(file)?;
        let declared_id = |t: &tokenizers::Tokenizer, token: &Option<String>, what: &str| {
            token
                .as_ref()
                .map(|tok| {
                    t.token_to_id(tok).map(|id| (tok.clone(), id)).ok_or_else(|| {
                        anyhow!(
                            "{}: tokenizer_config.json names {what} {tok:?}, which {} does not hold",
                            file.parent().unwrap_or(Path::new(".")).display(),
                            file.display()
                        )
                    })
                })
                .transpose()
        };
        // get_tokenizer: no BOS -> cls_token, no EOS -> sep_token.
        let bos_declared = declared_id(&inner, &declared.bos, "bos_token")?.or(declared_id(
            &inner,
            &declared.cls,
            "cls_token",
        )?);
        let eos_declared = declared_id(&inner, &declared.eos, "eos_token")?.or(declared_id(
            &inner,
            &declared.sep,
            "sep_token",
        )?);
        // BERT-style vocabularies have no BOS/EOS: get_tokenizer uses [CLS] / [SEP].
        let (guessed_bos, guessed_eos, bert_style) = match (
            find(&inner, &["[CLS]"]),
            find(&inner, &["[SEP]"]),
            find(&inner, &["<|endoftext|>"]),
        ) {
            (Some(cls), Some(sep), _) => (Some(cls), Some(sep), true),
            (_, _, Some(eot)) => (Some(eot.clone()), Some(eot), false),
            _ => (
                find(&inner, &["<s>", "[BOS]"]),
                find(&inner, &["</s>", "[EOS]"]),
                false,
            ),
        };
        let (Some(bos), Some(eos)) = (bos_declared.or(guessed_bos), eos_declared.or(guessed_eos))
        else {
            bail!(
                "{}: cannot tell BOS/EOS (tokenizer_config.json names no bos_token/eos_token or cls_token/sep_token, and the vocabulary has no [CLS]/[SEP], <|endoftext|>, <s>/</s> or [BOS]/[EOS] token)",
                file.display()
            );
        };
        // The reference adds the post-processor to GPT-2 tokenizer classes only.
        let gpt2_style = match declared.class.as_deref() {
            Some(class) => class.starts_with("GPT2"),
            None => !bert_style,
        };
        if gpt2_style {
            // The reference passes (bos, eos) as BertProcessing's (sep, cls), i.e. a row becomes
            // `eos ... bos`; for GPT-2 both are <|endoftext|>, so the order is invisible.
            inner.with_post_processor(Some(PostProcessorWrapper::from(BertProcessing::new(
                bos.clone(),
                eos.clone(),
            ))));
        }
        let pad = match declared_id(&inner, &declared.pad, "pad_token")?
            .or(find(&inner, &["[PAD]", "<pad>"]))
        {
            Some((_, id)) => id,
            None => {
                inner
                    .add_special_tokens([AddedToken::from(ADDED_PAD, true)])
                    .map_err(|e| anyhow!("adding {ADDED_PAD}: {e}"))?;
                inner
                    .token_to_id(ADDED_PAD)
                    .ok_or_else(|| anyhow!("adding {ADDED_PAD} failed"))?
            }
        };
        let mask = match declared_id(&inner, &declared.mask, "mask_token")? {
            Some((_, id)) => Some(id),
            None => inner.token_to_id("[MASK]"),
        };
        let mut t = HfTokenizer {
            name: name.to_string(),
            inner,
            source: file.to_path_buf(),
            file_hash: fnv1a64(&bytes),
            vocab_size,
            bos,
            eos,
            pad,
            mask,
            wrap_bos: 0,
            wrap_eos: 0,
        };
        // get_dataset: `BOS = tokenizer.encode(tokenizer.bos_token)[0]` (with special tokens, so
        // for BERT both come out as the leading [CLS]).
        let first = |t: &HfTokenizer, s: &str| -> Result<u32> {
            t.encode_with_special_tokens(s)?
                .ids
                .first()
                .copied()
                .ok_or_else(|| anyhow!("encoding {s:?} gave no ids"))
        };
        t.wrap_bos = first(&t, &t.bos.0.clone())?;
        t.wrap_eos = first(&t, &t.eos.0.clone())?;
        Ok(t)
    }

    /// The `tokenizer.json` this was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// `len(tokenizer)`: the vocabulary with added tokens (50258 for GPT-2 with `[PAD]`).
    pub fn len_with_added(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_token(&self) -> &str {
        &self.bos.0
    }

    pub fn eos_token(&self) -> &str {
        &self.eos.0
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// `tokenizer(text)` with the default `add_special_tokens=True`.
    pub fn encode_with_special_tokens(&self, text: &str) -> Result<Encoded> {
        let e = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow!("encoding {text:?}: {e}"))?;
        Ok(Encoded {
            ids: e.get_ids().to_vec(),
            type_ids: e.get_type_ids().to_vec(),
        })
    }

    /// The tokens (pieces) of `text` without special tokens.
    pub fn tokens(&self, text: &str) -> Result<Vec<String>> {
        let e = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("encoding {text:?}: {e}"))?;
        Ok(e.get_tokens().to_vec())
    }

    /// `decode(ids, skip_special_tokens)`.
    pub fn decode_with(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow!("decoding {} ids: {e}", ids.len()))
    }

    /// `Diffusion.eval_retokenize`: the evaluator's plain tokenizer (no special tokens: GPT-2's own
    /// post-processor adds none), pad = EOS, each row truncated on the right to `max_length`, then
    /// right-padded to the longest row.
    pub fn eval_retokenize(&self, texts: &[&str], max_length: usize) -> Result<Retokenized> {
        let mut rows: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| {
                let mut ids = self
                    .inner
                    .encode(*t, false)
                    .map_err(|e| anyhow!("encoding {t:?}: {e}"))?
                    .get_ids()
                    .to_vec();
                ids.truncate(max_length);
                Ok(ids)
            })
            .collect::<Result<_>>()?;
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let attention_mask = rows
            .iter()
            .map(|r| {
                let mut m = vec![1; r.len()];
                m.resize(width, 0);
                m
            })
            .collect();
        for r in &mut rows {
            r.resize(width, self.eos.1);
        }
        Ok(Retokenized {
            input_ids: rows,
            attention_mask,
        })
    }
}

impl Tokenizer for HfTokenizer {
    fn name(&self) -> &str {
        &self.name
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn bos_id(&self) -> u32 {
        self.bos.1
    }

    fn eos_id(&self) -> u32 {
        self.eos.1
    }

    fn pad_id(&self) -> u32 {
        self.pad
    }

    fn mask_id(&self) -> Option<u32> {
        self.mask
    }

    /// `add_special_tokens=False`. A tokenizer.json that fails on some text is a broken file, not
    /// bad input: this panics with the text rather than silently dropping it.
    fn encode(&self, text: &str) -> Vec<u32> {
        match self.inner.encode(text, false) {
            Ok(e) => e.get_ids().to_vec(),
            Err(e) => panic!("{}: encoding {text:?} failed: {e}", self.name),
        }
    }

    /// Special tokens are rendered as their strings (`skip_special_tokens=False`).
    fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, false)
            .unwrap_or_else(|e| panic!("{}: {e:#}", self.name))
    }

    fn wrap_ids(&self) -> (u32, u32) {
        (self.wrap_bos, self.wrap_eos)
    }

    fn special_tokens_around(&self) -> Option<(u32, u32)> {
        // Both the installed BertProcessing and BERT's own template give `first ids last`.
        let e = self.encode_with_special_tokens("").ok()?;
        match e.ids[..] {
            [a, b] => Some((a, b)),
            _ => None,
        }
    }

    fn identity(&self) -> String {
        format!(
            "hf:{}:tokenizer.json fnv1a64 {:016x}:vocab {}:pad {}",
            self.name, self.file_hash, self.vocab_size, self.pad
        )
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
