//! Parity for the data pipeline: the text8 tokenizer (`kind: tokenizer`), `_group_texts`
//! wrapping (`kind: group_texts`), the detokenizers (`kind: detokenizer`), the Hugging Face
//! tokenizers (`kind: hf_tokenizer`) and whole dataset pipelines (`kind: data_pipeline`). Every
//! size, id and flag is read from the case JSON; Hugging Face tokenizers are resolved through a
//! temporary hub cache built from the shared tokenizer files, the way users load them.

use crate::common::{Case, skip};
use anyhow::{Context, Result, anyhow, bail, ensure};
use mdlm::data::corpus::{rows_to_blocks, tokenize_rows};
use mdlm::data::wrap::group_texts as wrap_group_texts;
use mdlm::data::{CharTokenizer, Detokenizer, HfTokenizer, Tokenizer};
use serde_json::Value;
use std::path::PathBuf;
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
            t.encode(piece).unwrap() == vec![want] || piece == "[RESERVED]",
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
            t.encode(s).unwrap() == vec![special(k)?],
            "special_ids.{k}: encode({s}) = {:?}",
            t.encode(s).unwrap()
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
        let got = t.encode(text).unwrap();
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
            t.decode(&got).unwrap() == want,
            "decode(encode({text:?})) = {:?}, expected {want:?}",
            t.decode(&got).unwrap()
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
                t.decode(&row).unwrap() == want,
                "decode({row:?}) {field}: {:?} vs {want:?}",
                t.decode(&row).unwrap()
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
                let mut ids = t
                    .encode(x.as_str().ok_or_else(|| anyhow!("text is not a string"))?)
                    .unwrap();
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
        let got: Vec<String> = got_blocks.iter().map(|b| t.decode(b).unwrap()).collect();
        ensure!(
            got == want,
            "decoded_blocks: got {got:?}, expected {want:?}"
        );
    }
    Ok(())
}

fn strings(v: &Value) -> Result<Vec<String>> {
    v.as_array()
        .ok_or_else(|| anyhow!("expected an array of strings, got {v}"))?
        .iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("not a string: {x}"))
        })
        .collect()
}

fn i64_tensor(rows: &[Vec<u32>]) -> Tensor {
    let width = rows.first().map_or(0, Vec::len) as i64;
    let flat: Vec<i64> = rows.iter().flatten().map(|&v| v as i64).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, width])
}

/// `detokenizers`: every input → output pair of every detokenizer.
pub fn detokenizer(case: &Case) -> Result<()> {
    let cases = case
        .value("cases")?
        .as_object()
        .ok_or_else(|| anyhow!("cases is not an object"))?;
    ensure!(!cases.is_empty(), "no detokenizer cases");
    for (name, pairs) in cases {
        let d =
            Detokenizer::for_dataset(name).ok_or_else(|| anyhow!("no detokenizer for '{name}'"))?;
        let pairs = pairs.as_array().ok_or_else(|| anyhow!("cases.{name}"))?;
        ensure!(!pairs.is_empty(), "cases.{name} is empty");
        for p in pairs {
            let input = p["input"].as_str().ok_or_else(|| anyhow!("input"))?;
            let want = p["output"].as_str().ok_or_else(|| anyhow!("output"))?;
            let got = d.apply(input);
            ensure!(
                got == want,
                "{name}({input:?}) = {got:?}, expected {want:?}"
            );
        }
    }
    Ok(())
}

/// A scratch hub cache (`models--<repo>/snapshots/<rev>/tokenizer.json` + `refs/main`) holding
/// the case's tokenizer files; removed on drop.
struct HubCache(PathBuf);

impl Drop for HubCache {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The case's tokenizer, resolved by repo id through the hub cache code path.
fn hub_tokenizer(case: &Case) -> Result<(HfTokenizer, HubCache)> {
    let dir = case.str("tokenizer_files.dir")?;
    let files = case.dir.join("..").join(&dir);
    let repo = match case.json.pointer("/data_config/tokenizer_name_or_path") {
        Some(Value::String(s)) => s.clone(),
        _ => PathBuf::from(&dir)
            .file_name()
            .ok_or_else(|| anyhow!("tokenizer_files.dir {dir}"))?
            .to_string_lossy()
            .into_owned(),
    };
    let root = std::env::temp_dir().join(format!(
        "mdlm-parity-hub-{}-{}",
        std::process::id(),
        case.name
    ));
    let cache = HubCache(root.clone());
    let rev = "0000000000000000000000000000000000000000";
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    let snap = repo_dir.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap)?;
    std::fs::create_dir_all(repo_dir.join("refs"))?;
    std::fs::write(repo_dir.join("refs/main"), rev)?;
    std::fs::copy(files.join("tokenizer.json"), snap.join("tokenizer.json"))
        .with_context(|| format!("copying {}/tokenizer.json", files.display()))?;
    let t = HfTokenizer::from_name_or_path_in(&repo, &root)?;
    Ok((t, cache))
}

/// `tokenizer_gpt2`, `tokenizer_bert`: tokenizer facts, encodes, decodes, eval re-tokenisation.
pub fn hf_tokenizer(case: &Case) -> Result<()> {
    let (t, _cache) = hub_tokenizer(case)?;
    let facts = case.value("tokenizer")?;
    let fact = |k: &str| facts.get(k).filter(|v| !v.is_null());
    let num = |k: &str| -> Result<Option<u32>> {
        fact(k)
            .map(|v| {
                v.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| anyhow!("tokenizer.{k} = {v}"))
            })
            .transpose()
    };
    let eq = |k: &str, got: u32| -> Result<()> {
        if let Some(want) = num(k)? {
            ensure!(got == want, "tokenizer.{k}: got {got}, expected {want}");
        }
        Ok(())
    };
    eq("vocab_size", t.vocab_size() as u32)?;
    eq("len", t.len_with_added() as u32)?;
    eq("bos_token_id", t.bos_id())?;
    eq("eos_token_id", t.eos_id())?;
    eq("pad_token_id", t.pad_id())?;
    eq("bos_via_encode", t.wrap_ids().0)?;
    eq("eos_via_encode", t.wrap_ids().1)?;
    eq(
        "diffusion_mask_index",
        t.mask_id().unwrap_or(t.vocab_size() as u32),
    )?;
    eq(
        "diffusion_vocab_size",
        (t.vocab_size() + usize::from(t.mask_id().is_none())) as u32,
    )?;
    for (k, tok) in [
        ("cls_token_id", "[CLS]"),
        ("sep_token_id", "[SEP]"),
        ("unk_token_id", "[UNK]"),
    ] {
        if num(k)?.is_some() {
            eq(k, t.token_to_id(tok).ok_or_else(|| anyhow!("no {tok}"))?)?;
        }
    }
    match fact("mask_token_id") {
        Some(_) => ensure!(t.mask_id() == num("mask_token_id")?, "mask_token_id"),
        None if facts.get("mask_token").is_some_and(Value::is_null) => {
            ensure!(
                t.mask_id().is_none(),
                "mask_token is null but got {:?}",
                t.mask_id()
            )
        }
        None => {}
    }
    for (k, got) in [("bos_token", t.bos_token()), ("eos_token", t.eos_token())] {
        if let Some(want) = fact(k).and_then(Value::as_str) {
            ensure!(got == want, "tokenizer.{k}: got {got:?}, expected {want:?}");
        }
    }
    if let Some(want) = fact("pad_token").and_then(Value::as_str) {
        ensure!(
            t.token_to_id(want) == Some(t.pad_id()),
            "pad_token {want:?} is not id {}",
            t.pad_id()
        );
    }

    let encode = case
        .value("encode")?
        .as_array()
        .ok_or_else(|| anyhow!("encode"))?;
    ensure!(!encode.is_empty(), "no encode entries");
    for e in encode {
        let text = e["text"].as_str().ok_or_else(|| anyhow!("encode text"))?;
        let plain = t.encode(text).unwrap();
        let want = ids(&e["ids_add_special_tokens_false"])?;
        ensure!(
            plain == want,
            "encode({text:?}) without specials: {plain:?} vs {want:?}"
        );
        let with = t.encode_with_special_tokens(text)?;
        let want = ids(&e["ids_default"])?;
        ensure!(
            with.ids == want,
            "encode({text:?}): {:?} vs {want:?}",
            with.ids
        );
        if let Some(v) = e.get("token_type_ids_default") {
            let want = ids(v)?;
            ensure!(with.type_ids == want, "token_type_ids({text:?})");
        }
        if let Some(v) = e.get("tokens") {
            let want = strings(v)?;
            let got = t.tokens(text)?;
            ensure!(got == want, "tokens({text:?}): {got:?} vs {want:?}");
        }
        let checks = [
            ("decode", &plain, false),
            ("batch_decode_default_ids", &with.ids, false),
            ("decode_default_ids", &with.ids, false),
            ("decode_skip_special", &with.ids, true),
        ];
        for (field, row, skip_special) in checks {
            if let Some(want) = e.get(field).and_then(Value::as_str) {
                let got = t.decode_with(row, skip_special)?;
                ensure!(got == want, "{field}({text:?}): {got:?} vs {want:?}");
            }
        }
    }

    if let Ok(r) = case.value("eval_retokenize") {
        let texts = strings(&r["texts"])?;
        let max_length = usize::try_from(case.i64("eval_retokenize.max_length")?)?;
        let pad = id(case, "eval_retokenize.pad_token_id")?;
        ensure!(
            pad == t.eos_id(),
            "eval_retokenize pads with {pad}, not EOS"
        );
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let got = t.eval_retokenize(&refs, max_length)?;
        case.check("retokenized_input_ids", &i64_tensor(&got.input_ids))?;
        case.check(
            "retokenized_attention_mask",
            &i64_tensor(&got.attention_mask),
        )?;
    }
    Ok(())
}

/// `pipeline_*`: rows → detokenizer → tokenizer → wrap (or pad) → the dataset's tensors.
pub fn data_pipeline(case: &Case) -> Result<()> {
    let (t, _cache) = hub_tokenizer(case)?;
    let dataset = case.str("dataset_name")?;
    let block_size = usize::try_from(case.i64("block_size")?)?;
    let wrap = case.bool("wrap")?;
    let map_batch = usize::try_from(case.i64("map_batch_size")?)?;
    let rows = strings(case.value("rows")?)?;
    let detok = Detokenizer::for_dataset(&dataset);
    let detokenized: Vec<String> = rows
        .iter()
        .map(|r| detok.map_or_else(|| r.clone(), |d| d.apply(r)))
        .collect();
    if let Ok(v) = case.value("detokenized_rows") {
        let want = strings(v)?;
        for (i, (g, w)) in detokenized.iter().zip(&want).enumerate() {
            ensure!(g == w, "detokenized row {i}: {g:?} vs {w:?}");
        }
        ensure!(detokenized.len() == want.len(), "detokenized row count");
    }
    let (bos, eos) = (id(case, "bos")?, id(case, "eos")?);
    ensure!(
        t.wrap_ids() == (bos, eos),
        "wrap BOS/EOS {:?}, expected ({bos}, {eos})",
        t.wrap_ids()
    );
    ensure!(
        t.pad_id() == id(case, "pad_token_id")?,
        "pad id {}",
        t.pad_id()
    );
    if let Ok(v) = case.value("token_ids_with_eos") {
        let want = id_rows(v)?;
        let got = tokenize_rows(&t, &detokenized, Some(eos))?;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            ensure!(g == w, "token_ids_with_eos row {i}: {g:?} vs {w:?}");
        }
        ensure!(got.len() == want.len(), "token_ids_with_eos row count");
    }
    let made = rows_to_blocks(&t, &detokenized, wrap, block_size, map_batch, true)?;
    let n = (made.ids.len() / block_size) as i64;
    let input_ids = Tensor::from_slice(&made.ids.iter().map(|&v| v as i64).collect::<Vec<_>>())
        .view([n, block_size as i64]);
    case.check("input_ids", &input_ids)?;
    match &made.lengths {
        None => case.check(
            "attention_mask",
            &Tensor::ones([n, block_size as i64], (tch::Kind::Float, tch::Device::Cpu)),
        )?,
        Some(lengths) => {
            let mask: Vec<Vec<u32>> = lengths
                .iter()
                .map(|&l| (0..block_size).map(|j| u32::from(j < l as usize)).collect())
                .collect();
            case.check("attention_mask", &i64_tensor(&mask))?;
            if case.has("token_type_ids") {
                case.check(
                    "token_type_ids",
                    &Tensor::zeros([n, block_size as i64], (tch::Kind::Int64, tch::Device::Cpu)),
                )?;
            }
        }
    }
    Ok(())
}
