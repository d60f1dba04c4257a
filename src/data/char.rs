//! Character-level tokenizers.
//!
//! `text8` mirrors the reference's `dataloader.Text8Tokenizer` (kuleshov-group/mdlm): 8 special
//! tokens, then `a`..`z` and space; input is lower-cased and anything else becomes `[UNK]`.
//! `char` (constructor [`CharTokenizer::extended`]) keeps those 35 ids and appends a fixed list
//! of printable ASCII, so case-preserving English text (Shakespeare) round-trips exactly.

use super::tokenizer::Tokenizer;
use std::collections::HashMap;

/// The reference's special tokens in id order 0..8.
pub const SPECIAL_TOKENS: [&str; 8] = [
    "[CLS]",
    "[SEP]",
    "[BOS]",
    "[EOS]",
    "[MASK]",
    "[PAD]",
    "[RESERVED]",
    "[UNK]",
];
const CLS: u32 = 0;
const SEP: u32 = 1;
const BOS: u32 = 2;
const EOS: u32 = 3;
const MASK: u32 = 4;
const PAD: u32 = 5;
const UNK: u32 = 7;

/// Ids 35.. of the extended (`char`) vocabulary, in this order. Fixed by hand rather than taken
/// from a corpus so that ids never move when the corpus does: upper case, digits, the printable
/// ASCII punctuation in ASCII order, then newline and tab. Carriage return is deliberately absent
/// (CRLF text encodes `\r` as `[UNK]`).
pub const EXTENDED_CHARS: &str = concat!(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "\n\t",
);

/// A character tokenizer: special tokens, then one id per character.
#[derive(Debug, Clone)]
pub struct CharTokenizer {
    name: &'static str,
    lowercase: bool,
    /// id → string; specials render as their bracketed names.
    pieces: Vec<String>,
    char_to_id: HashMap<char, u32>,
    /// The special tokens recognised literally in input text, as the reference's Hugging Face base
    /// class does for the tokens it registers. `[RESERVED]` is in the vocabulary but was never
    /// registered as a special token there, so it is spelled out character by character.
    recognised: Vec<(&'static str, u32)>,
}

impl CharTokenizer {
    /// The reference's Text8Tokenizer: vocabulary of 35, lower-cases its input.
    pub fn text8() -> Self {
        Self::build("text8", true, "")
    }

    /// Case-preserving extension (`char` in configs): the text8 ids plus [`EXTENDED_CHARS`] from 35
    /// on; no lower-casing.
    pub fn extended() -> Self {
        Self::build("char", false, EXTENDED_CHARS)
    }

    fn build(name: &'static str, lowercase: bool, extra: &str) -> Self {
        let mut pieces: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
        let mut char_to_id = HashMap::new();
        for c in ('a'..='z').chain(std::iter::once(' ')).chain(extra.chars()) {
            let previous = char_to_id.insert(c, pieces.len() as u32);
            debug_assert!(previous.is_none(), "duplicate character {c:?}");
            pieces.push(c.to_string());
        }
        let recognised = [
            ("[CLS]", CLS),
            ("[SEP]", SEP),
            ("[BOS]", BOS),
            ("[EOS]", EOS),
            ("[MASK]", MASK),
            ("[PAD]", PAD),
            ("[UNK]", UNK),
        ]
        .to_vec();
        Self {
            name,
            lowercase,
            pieces,
            char_to_id,
            recognised,
        }
    }

    /// The string for one id (specials as `[NAME]`); ids outside the vocabulary render as `[UNK]`
    /// rather than panicking, since sampled ids may come from a model with a padded vocabulary.
    pub fn id_to_piece(&self, id: u32) -> &str {
        self.pieces
            .get(id as usize)
            .map(String::as_str)
            .unwrap_or(SPECIAL_TOKENS[UNK as usize])
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        let mut push = |c: char| out.push(*self.char_to_id.get(&c).unwrap_or(&UNK));
        if self.lowercase {
            // Python's str.lower() and Rust's to_lowercase agree on Unicode (both may expand a
            // character into several); whatever falls outside a-z/space is [UNK] either way.
            text.chars()
                .flat_map(char::to_lowercase)
                .for_each(&mut push);
        } else {
            text.chars().for_each(push);
        }
    }

    fn special_at(&self, rest: &str) -> Option<(&'static str, u32)> {
        self.recognised
            .iter()
            .copied()
            .find(|(s, _)| rest.starts_with(s))
    }
}

impl Tokenizer for CharTokenizer {
    fn name(&self) -> &str {
        self.name
    }

    fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    fn bos_id(&self) -> u32 {
        BOS
    }

    fn eos_id(&self) -> u32 {
        EOS
    }

    fn pad_id(&self) -> u32 {
        PAD
    }

    fn mask_id(&self) -> Option<u32> {
        Some(MASK)
    }

    /// Special-token strings are matched case-sensitively on the raw text before lower-casing,
    /// which is why `[MASK]` is one token but `[mask]` is `[UNK] m a s k [UNK]` (both pinned by
    /// the parity fixtures).
    fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len());
        let mut plain_start = 0;
        let mut i = 0;
        while i < text.len() {
            if text.as_bytes()[i] == b'['
                && let Some((s, id)) = self.special_at(&text[i..])
            {
                self.encode_plain(&text[plain_start..i], &mut out);
                out.push(id);
                i += s.len();
                plain_start = i;
                continue;
            }
            i += 1;
        }
        self.encode_plain(&text[plain_start..], &mut out);
        Ok(out)
    }

    fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        let mut s = String::with_capacity(ids.len());
        for &id in ids {
            s.push_str(self.id_to_piece(id));
        }
        Ok(s)
    }
}

/// The tokenizer a config names; the error lists the choices.
pub fn char_tokenizer_by_name(name: &str) -> Option<CharTokenizer> {
    match name {
        "text8" => Some(CharTokenizer::text8()),
        "char" => Some(CharTokenizer::extended()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text8_ids() {
        let t = CharTokenizer::text8();
        assert_eq!(t.vocab_size(), 35);
        assert_eq!(t.encode("Ab z").unwrap(), vec![8, 9, 34, 33]);
        assert_eq!(t.encode("a[MASK]b").unwrap(), vec![8, 4, 9]);
        assert_eq!(t.encode("[mask]").unwrap(), vec![7, 20, 8, 26, 18, 7]);
        assert_eq!(t.decode(&[2, 8, 3]).unwrap(), "[BOS]a[EOS]");
    }

    #[test]
    fn extended_keeps_text8_ids_and_is_stable() {
        let (t8, c) = (CharTokenizer::text8(), CharTokenizer::extended());
        for id in 0..35 {
            assert_eq!(t8.id_to_piece(id), c.id_to_piece(id));
        }
        assert_eq!(c.vocab_size(), 35 + EXTENDED_CHARS.chars().count());
        assert_eq!(c.vocab_size(), 105);
        assert_eq!(c.encode("A").unwrap(), vec![35]);
        assert_eq!(c.encode("0").unwrap(), vec![61]);
        assert_eq!(c.encode("\n").unwrap(), vec![103]);
        let s = "To be, or not to be: that is the question.\n[Exit HAMLET]";
        assert_eq!(c.decode(&c.encode(s).unwrap()).unwrap(), s);
        assert_eq!(c.encode("é").unwrap(), vec![UNK]);
    }

    #[test]
    fn special_matching_does_not_split_multibyte_chars() {
        let c = CharTokenizer::extended();
        assert_eq!(
            c.decode(&c.encode("[é[EOS]").unwrap()).unwrap(),
            "[[UNK][EOS]"
        );
    }
}
