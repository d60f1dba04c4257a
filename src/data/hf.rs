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

/// `name` as a local `tokenizer.json`, or a folder holding one; `None` when it is neither path.
fn local_tokenizer_json(name: &str) -> Result<Option<PathBuf>> {
    let p = Path::new(name);
    if p.is_file() {
        return Ok(Some(p.to_path_buf()));
    }
    if p.is_dir() {
        let f = p.join("tokenizer.json");
        if !f.is_file() {
            bail!(
                "tokenizer folder {} has no tokenizer.json; point at a folder that holds one",
                p.display()
            );
        }
        return Ok(Some(f));
    }
    Ok(None)
}

/// `tokenizers` parses some malformed files by panicking (an `unwrap` inside a deserializer,
/// found by tests/fuzz.rs); a user's file must give an error instead.
fn parse_tokenizer_json(bytes: &[u8]) -> std::result::Result<tokenizers::Tokenizer, String> {
    match std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes)) {
        Ok(parsed) => parsed.map_err(|e| e.to_string()),
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "malformed".to_string())),
    }
}

/// A special token and its id.
type Special = (String, u32);

/// A loaded vocabulary, asked for the special tokens `get_tokenizer` would pick.
struct Vocab<'a> {
    t: &'a tokenizers::Tokenizer,
    file: &'a Path,
}

impl Vocab<'_> {
    /// The first of `tokens` the vocabulary holds.
    fn find(&self, tokens: &[&str]) -> Option<(String, u32)> {
        tokens
            .iter()
            .find_map(|s| self.t.token_to_id(s).map(|id| (s.to_string(), id)))
    }

    /// A token tokenizer_config.json names (`what`), which must then be in the vocabulary.
    fn declared(&self, token: &Option<String>, what: &str) -> Result<Option<(String, u32)>> {
        token
            .as_ref()
            .map(|tok| {
                self.t
                    .token_to_id(tok)
                    .map(|id| (tok.clone(), id))
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: tokenizer_config.json names {what} {tok:?}, which {} does not hold",
                            self.file.parent().unwrap_or(Path::new(".")).display(),
                            self.file.display()
                        )
                    })
            })
            .transpose()
    }

    /// BOS and EOS, and whether the vocabulary is BERT-style: declared first (no BOS ->
    /// cls_token, no EOS -> sep_token, as get_tokenizer does), else guessed from the vocabulary
    /// (BERT has no BOS/EOS and uses [CLS] / [SEP]).
    fn bos_eos(&self, d: &DeclaredTokens) -> Result<(Special, Special, bool)> {
        let bos_declared = self
            .declared(&d.bos, "bos_token")?
            .or(self.declared(&d.cls, "cls_token")?);
        let eos_declared = self
            .declared(&d.eos, "eos_token")?
            .or(self.declared(&d.sep, "sep_token")?);
        let (guessed_bos, guessed_eos, bert_style) = match (
            self.find(&["[CLS]"]),
            self.find(&["[SEP]"]),
            self.find(&["<|endoftext|>"]),
        ) {
            (Some(cls), Some(sep), _) => (Some(cls), Some(sep), true),
            (_, _, Some(eot)) => (Some(eot.clone()), Some(eot), false),
            _ => (
                self.find(&["<s>", "[BOS]"]),
                self.find(&["</s>", "[EOS]"]),
                false,
            ),
        };
        match (bos_declared.or(guessed_bos), eos_declared.or(guessed_eos)) {
            (Some(bos), Some(eos)) => Ok((bos, eos, bert_style)),
            _ => bail!(
                "{}: cannot tell BOS/EOS (tokenizer_config.json names no bos_token/eos_token or cls_token/sep_token, and the vocabulary has no [CLS]/[SEP], <|endoftext|>, <s>/</s> or [BOS]/[EOS] token)",
                self.file.display()
            ),
        }
    }
}

/// The declared pad token, else `[PAD]`/`<pad>`, else `[PAD]` added after the vocabulary (as
/// get_tokenizer does for GPT-2).
fn pad_id(
    inner: &mut tokenizers::Tokenizer,
    declared: &DeclaredTokens,
    file: &Path,
) -> Result<u32> {
    let vocab = Vocab { t: inner, file };
    if let Some((_, id)) = vocab
        .declared(&declared.pad, "pad_token")?
        .or(vocab.find(&["[PAD]", "<pad>"]))
    {
        return Ok(id);
    }
    inner
        .add_special_tokens([AddedToken::from(ADDED_PAD, true)])
        .map_err(|e| anyhow!("adding {ADDED_PAD}: {e}"))?;
    inner
        .token_to_id(ADDED_PAD)
        .ok_or_else(|| anyhow!("adding {ADDED_PAD} failed"))
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
        match local_tokenizer_json(name)? {
            Some(file) => Self::from_file(name, &file),
            None => Self::from_repo(name, &Hub::from_env(RepoKind::Model)?),
        }
    }

    /// As [`HfTokenizer::from_name_or_path`], looking a repo id up in the hub cache at `cache`
    /// only.
    pub fn from_name_or_path_in(name: &str, cache: &Path) -> Result<HfTokenizer> {
        Self::from_name_or_path_with(name, &Hub::offline(cache))
    }

    /// As [`HfTokenizer::from_name_or_path`], through `hub`.
    pub fn from_name_or_path_with(name: &str, hub: &Hub) -> Result<HfTokenizer> {
        match local_tokenizer_json(name)? {
            Some(file) => Self::from_file(name, &file),
            None => Self::from_repo(name, hub),
        }
    }

    /// From a repo: `tokenizer.json` and (when the repo has one) `tokenizer_config.json`, whose
    /// special tokens count.
    fn from_repo(name: &str, hub: &Hub) -> Result<HfTokenizer> {
        let repo = RepoRef::parse_model(name)?;
        let snap = hub
            .snapshot(&repo, &["tokenizer.json"], &["tokenizer_config.json"])
            .with_context(|| format!("tokenizer '{name}'"))?;
        Self::from_file(name, &snap.dir.join("tokenizer.json"))
    }

    /// Loads `file` and applies `get_tokenizer`'s changes; `name` is what configs call it.
    pub fn from_file(name: &str, file: &Path) -> Result<HfTokenizer> {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let mut inner = parse_tokenizer_json(&bytes)
            .map_err(|e| anyhow!("{} is not a tokenizer.json: {e}", file.display()))?;
        let vocab_size = inner.get_vocab_size(false);
        // Tokens the repo's tokenizer_config.json names win; the vocabulary decides the rest, as
        // the tokenizer classes' defaults do for the two tokenizers the reference uses (neither
        // GPT-2's nor BERT's config names any).
        let declared = DeclaredTokens::beside(file)?;
        let (bos, eos, bert_style) = Vocab { t: &inner, file }.bos_eos(&declared)?;
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
        let pad = pad_id(&mut inner, &declared, file)?;
        let mask = match (Vocab { t: &inner, file }).declared(&declared.mask, "mask_token")? {
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
        t.wrap_bos = t.first_id(&t.bos.0)?;
        t.wrap_eos = t.first_id(&t.eos.0)?;
        Ok(t)
    }

    /// The first id of `text` encoded with special tokens.
    fn first_id(&self, text: &str) -> Result<u32> {
        self.encode_with_special_tokens(text)?
            .ids
            .first()
            .copied()
            .ok_or_else(|| anyhow!("encoding {text:?} gave no ids"))
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

    /// `add_special_tokens=False`. A tokenizer.json that fails on some text is a broken file:
    /// the error names it rather than dropping the text.
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let e = self.inner.encode(text, false).map_err(|e| {
            let shown: String = text.chars().take(60).collect();
            anyhow!(
                "tokenizer '{}' ({}) failed on {shown:?}: {e}",
                self.name,
                self.source.display()
            )
        })?;
        Ok(e.get_ids().to_vec())
    }

    /// Special tokens are rendered as their strings (`skip_special_tokens=False`).
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, false)
            .with_context(|| format!("tokenizer '{}' ({})", self.name, self.source.display()))
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
