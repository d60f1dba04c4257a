//! Parity for the data pipeline: the text8 tokenizer (`kind: tokenizer`) and `_group_texts`
//! wrapping (`kind: group_texts`). Every size, id and flag is read from the case JSON.

use crate::common::{Case, skip};
use anyhow::{Context, Result, anyhow, bail, ensure};
use mdlm::data::wrap::group_texts as wrap_group_texts;
use mdlm::data::{CharTokenizer, Tokenizer};
use serde_json::Value;
use tch::Tensor;

fn ids(v: &Value) -> Result<Vec<u32>> {
    v.as_array()
        .ok_or_else(|| anyhow!("expected an array of ids, got {v}"))?
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| anyhow!("not a token id: {x}"))
        })
        .collect()
}

fn id_rows(v: &Value) -> Result<Vec<Vec<u32>>> {
    v.as_array()
        .ok_or_else(|| anyhow!("expected an array of id rows"))?
        .iter()
        .map(ids)
        .collect()
}

fn id(case: &Case, path: &str) -> Result<u32> {
    Ok(u32::try_from(case.i64(path)?)?)
}

/// `text8_tokenizer`: vocabulary, special ids, and every encode/decode entry.
pub fn tokenizer(case: &Case) -> Result<()> {
    if case.name != "text8_tokenizer" {
        return skip(format!(
            "tokenizer case {} is not a character tokenizer",
            case.name
        ));
    }
    let t = CharTokenizer::text8();
    ensure!(
        t.vocab_size() as i64 == case.i64("vocab_size")?,
        "vocab_size {} vs {}",
        t.vocab_size(),
        case.i64("vocab_size")?
    );
    let vocab = case
        .value("vocab")?
        .as_object()
        .ok_or_else(|| anyhow!("vocab is not an object"))?;
    ensure!(
        vocab.len() == t.vocab_size(),
        "vocab has {} entries",
        vocab.len()
    );
    for (piece, v) in vocab {
        let want = u32::try_from(v.as_u64().ok_or_else(|| anyhow!("vocab[{piece}]"))?)?;
        ensure!(
            t.id_to_piece(want) == piece,
            "id {want}: got {:?}, expected {piece:?}",
            t.id_to_piece(want)
        );
        // A piece encodes to its own id (specials are recognised, characters map one to one).
        ensure!(
            t.encode(piece) == vec![want] || piece == "[RESERVED]",
            "encode({piece:?})"
        );
    }
    let special = |k: &str| id(case, &format!("special_ids.{k}"));
    ensure!(t.bos_id() == special("bos")?, "bos");
    ensure!(t.eos_id() == special("eos")?, "eos");
    ensure!(t.pad_id() == special("pad")?, "pad");
    ensure!(t.mask_id() == Some(special("mask")?), "mask");
    for (k, s) in [
        ("unk", "[UNK]"),
        ("cls", "[CLS]"),
        ("sep", "[SEP]"),
        ("bos_via_encode", "[BOS]"),
        ("eos_via_encode", "[EOS]"),
    ] {
        ensure!(
            t.encode(s) == vec![special(k)?],
            "special_ids.{k}: encode({s}) = {:?}",
            t.encode(s)
        );
    }

    let encode = case
        .value("encode")?
        .as_array()
        .ok_or_else(|| anyhow!("encode"))?;
    ensure!(!encode.is_empty(), "no encode entries");
    for e in encode {
        let text = e["text"]
            .as_str()
            .ok_or_else(|| anyhow!("encode entry without text"))?;
        let got = t.encode(text);
        // Character tokenizers add no special tokens, so all three reference calls agree.
        for field in [
            "encode_add_special_tokens_false",
            "encode_default",
            "call_input_ids",
        ] {
            let want = ids(&e[field]).with_context(|| format!("{text:?}.{field}"))?;
            ensure!(
                got == want,
                "encode({text:?}) {field}: got {got:?}, expected {want:?}"
            );
        }
        let want = e["decode_of_encode"]
            .as_str()
            .ok_or_else(|| anyhow!("decode_of_encode"))?;
        ensure!(
            t.decode(&got) == want,
            "decode(encode({text:?})) = {:?}, expected {want:?}",
            t.decode(&got)
        );
    }
    let decode = case
        .value("decode")?
        .as_array()
        .ok_or_else(|| anyhow!("decode"))?;
    ensure!(!decode.is_empty(), "no decode entries");
    for d in decode {
        let row = ids(&d["ids"])?;
        for field in ["decode", "batch_decode_row"] {
            let want = d[field]
                .as_str()
                .ok_or_else(|| anyhow!("decode entry {field}"))?;
            ensure!(
                t.decode(&row) == want,
                "decode({row:?}) {field}: {:?} vs {want:?}",
                t.decode(&row)
            );
        }
    }
    Ok(())
}

/// `group_texts` (one map batch of documents ending in EOS) and `text8_wrap` (tokenize without
/// special tokens, append EOS, group).
pub fn group_texts(case: &Case) -> Result<()> {
    let block_size = usize::try_from(case.i64("block_size")?)?;
    let bos = id(case, "bos")?;
    let eos = id(case, "eos")?;
    let docs = if case.json.get("texts").is_some() {
        let t = CharTokenizer::text8();
        ensure!(
            t.bos_id() == bos && t.eos_id() == eos,
            "case bos/eos {bos}/{eos} are not text8's"
        );
        let texts = case
            .value("texts")?
            .as_array()
            .ok_or_else(|| anyhow!("texts"))?;
        let docs: Vec<Vec<u32>> = texts
            .iter()
            .map(|x| {
                let mut ids = t.encode(x.as_str().ok_or_else(|| anyhow!("text is not a string"))?);
                ids.push(eos);
                Ok(ids)
            })
            .collect::<Result<_>>()?;
        let want = id_rows(case.value("token_ids_with_eos")?)?;
        ensure!(
            docs == want,
            "token_ids_with_eos: got {docs:?}, expected {want:?}"
        );
        docs
    } else if case.json.get("documents_with_eos").is_some() {
        let raw = id_rows(case.value("documents")?)?;
        let docs: Vec<Vec<u32>> = raw
            .into_iter()
            .map(|mut d| {
                d.push(eos);
                d
            })
            .collect();
        let want = id_rows(case.value("documents_with_eos")?)?;
        ensure!(
            docs == want,
            "documents_with_eos: got {docs:?}, expected {want:?}"
        );
        docs
    } else {
        bail!("group_texts case without texts or documents_with_eos");
    };

    let flat = wrap_group_texts(&docs, block_size, bos, eos)?;
    let rows = (flat.len() / block_size) as i64;
    let input_ids = Tensor::from_slice(&flat.iter().map(|&v| v as i64).collect::<Vec<_>>())
        .view([rows, block_size as i64]);
    let want_blocks = id_rows(case.value("blocks")?)?;
    let got_blocks: Vec<Vec<u32>> = flat.chunks(block_size).map(<[u32]>::to_vec).collect();
    ensure!(
        got_blocks == want_blocks,
        "blocks: got {got_blocks:?}, expected {want_blocks:?}"
    );
    case.check("input_ids", &input_ids)?;
    // Wrapped blocks are never padded: the mask is all ones, float32 as in the reference.
    case.check(
        "attention_mask",
        &Tensor::ones(
            [rows, block_size as i64],
            (tch::Kind::Float, tch::Device::Cpu),
        ),
    )?;
    if let Ok(decoded) = case.value("decoded_blocks") {
        let t = CharTokenizer::text8();
        let want: Vec<&str> = decoded
            .as_array()
            .ok_or_else(|| anyhow!("decoded_blocks"))?
            .iter()
            .map(|v| v.as_str().unwrap_or_default())
            .collect();
        let got: Vec<String> = got_blocks.iter().map(|b| t.decode(b)).collect();
        ensure!(
            got == want,
            "decoded_blocks: got {got:?}, expected {want:?}"
        );
    }
    Ok(())
}
