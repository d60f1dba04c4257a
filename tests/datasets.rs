//! The reference's data groups beyond the row corpora of `tests/data.rs`: text8 and text8-crop,
//! the scientific papers, and test splits, each checked against blocks computed here from the
//! raw text without the preparation code.

mod support;

use mdlm::data::{CharTokenizer, DataSpec, Detokenizer, Split, Tokenizer, prepare, prepare_one};
use std::path::Path;
use support::{TempDir, shared_data};

fn spec(cache: &Path, name: &str, valid: &str, tokenizer: &str, block_size: usize) -> DataSpec {
    DataSpec {
        name: name.into(),
        valid_name: valid.into(),
        tokenizer: tokenizer.into(),
        cache_dir: cache.to_path_buf(),
        wrap: true,
        block_size,
        insert_valid_eos: true,
    }
}

/// Shakespeare reduced to text8's alphabet: lower-case letters and single spaces.
fn text8_like(chars: usize) -> String {
    let mut out = String::new();
    let dir = shared_data().join("gutenberg-shakespeare");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        for c in std::fs::read_to_string(f).unwrap().to_lowercase().chars() {
            let c = if c.is_ascii_lowercase() { c } else { ' ' };
            if !(c == ' ' && out.ends_with(' ')) {
                out.push(c);
            }
            if out.len() == chars {
                return out;
            }
        }
    }
    panic!("not enough text for {chars} characters");
}

/// The reference's text8 path written out: `chunk`-character pieces (short tail dropped), each
/// encoded and followed by EOS, then per 1000 pieces the stream cut into `block - 2` tokens
/// wrapped in BOS/EOS.
fn text8_expected(text: &str, chunk: usize, block: usize) -> Vec<Vec<u32>> {
    let t = CharTokenizer::text8();
    let docs: Vec<Vec<u32>> = (0..text.len() / chunk)
        .map(|k| t.encode(&text[k * chunk..(k + 1) * chunk]).unwrap())
        .collect();
    wrap_expected(&docs, t.bos_id(), t.eos_id(), block)
}

/// `_group_texts` written out: per 1000 documents, each followed by EOS, the stream cut into
/// `block - 2` tokens wrapped in BOS/EOS (the remainder dropped).
fn wrap_expected(docs: &[Vec<u32>], bos: u32, eos: u32, block: usize) -> Vec<Vec<u32>> {
    let mut blocks = Vec::new();
    for batch in docs.chunks(1000) {
        let stream: Vec<u32> = batch
            .iter()
            .flat_map(|d| d.iter().copied().chain([eos]))
            .collect();
        for piece in stream.chunks_exact(block - 2) {
            blocks.push([vec![bos], piece.to_vec(), vec![eos]].concat());
        }
    }
    blocks
}

fn all_blocks(b: &mdlm::data::TokenBlocks) -> Vec<Vec<u32>> {
    (0..b.len()).map(|i| b.block(i)).collect()
}

/// `<cache>/text8/raw/text8.{train,validation,test}.txt`, the reference's own split files.
fn text8_cache(tag: &str) -> (TempDir, [String; 3]) {
    let cache = TempDir::new(tag);
    let raw = cache.0.join("text8/raw");
    std::fs::create_dir_all(&raw).unwrap();
    let all = text8_like(330_017);
    let parts = [
        all[..270_011].to_string(),
        all[270_011..300_013].to_string(),
        all[300_013..].to_string(),
    ];
    for (split, text) in ["train", "validation", "test"].iter().zip(&parts) {
        std::fs::write(raw.join(format!("text8.{split}.txt")), text).unwrap();
    }
    (cache, parts)
}

#[test]
fn text8_chunks_and_wraps_as_the_reference() {
    let (cache, [train, valid, test]) = text8_cache("text8");
    let s = spec(&cache.0, "text8", "text8", "text8", 64);
    let p = prepare(&s).unwrap();
    // 270,011 characters → 4,218 chunks of 64; more than one map batch, so the per-batch
    // remainder rule is exercised.
    let want = text8_expected(&train, 64, 64);
    assert!(want.len() > 4000, "{}", want.len());
    assert_eq!(all_blocks(&p.train), want);
    assert_eq!(all_blocks(&p.valid), text8_expected(&valid, 64, 64));
    let (t, meta, _) = prepare_one(&s, "text8", Split::Test).unwrap();
    assert_eq!(all_blocks(&t), text8_expected(&test, 64, 64));
    assert_eq!(meta.recipe.split, "test");
}

#[test]
fn text8_crop_trains_on_double_length_blocks() {
    let (cache, [train, valid, _]) = text8_cache("text8crop");
    let s = spec(&cache.0, "text8-crop", "text8", "text8", 64);
    let p = prepare(&s).unwrap();
    // Train: 4L-character chunks grouped into 2L blocks; validation as plain text8.
    assert_eq!(p.train.block_size(), 128);
    assert_eq!(all_blocks(&p.train), text8_expected(&train, 256, 128));
    assert_eq!(p.valid.block_size(), 64);
    assert_eq!(all_blocks(&p.valid), text8_expected(&valid, 64, 64));
    assert!(p.train.path().starts_with(cache.0.join("text8-crop")));
}

/// The reference downloads `text8.zip`; a local copy is unpacked once, and the 90M/95M split of
/// the reference needs the whole corpus, which a short file cannot give.
#[test]
fn text8_zip_is_unpacked_and_a_short_corpus_is_refused() {
    let cache = TempDir::new("text8zip");
    let raw = cache.0.join("text8/raw");
    std::fs::create_dir_all(&raw).unwrap();
    let text = text8_like(5_000);
    let file = std::fs::File::create(raw.join("text8.zip")).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    zip.start_file(
        "text8",
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated),
    )
    .unwrap();
    std::io::Write::write_all(&mut zip, text.as_bytes()).unwrap();
    zip.finish().unwrap();

    let s = spec(&cache.0, "text8", "text8", "text8", 64);
    let e = format!("{:#}", prepare(&s).err().expect("a 5,000-character text8"));
    assert!(
        e.contains("5000 characters") && e.contains("90000000"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(raw.join("text8")).unwrap(), text);

    let empty = TempDir::new("text8none");
    std::fs::create_dir_all(empty.0.join("text8/raw")).unwrap();
    let e = format!(
        "{:#}",
        prepare(&spec(&empty.0, "text8", "text8", "text8", 64))
            .err()
            .unwrap()
    );
    assert!(e.contains("text8.zip") && e.contains("text8/raw"), "{e}");
}

/// Rows → detokenizer → encode + EOS → `_group_texts` per 1000 rows, with the extended
/// character tokenizer.
fn char_expected(rows: &[String], detok: Option<Detokenizer>, block: usize) -> Vec<Vec<u32>> {
    let t = CharTokenizer::extended();
    let (bos, eos) = t.wrap_ids();
    let docs: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| t.encode(&detok.map_or(r.clone(), |d| d.apply(r))).unwrap())
        .collect();
    wrap_expected(&docs, bos, eos, block)
}

/// `scientific_papers_*` from JSONL rows (the Hub's `article` field), with the reference's
/// scientific-papers detokenizer.
#[test]
fn scientific_papers_read_the_article_field_through_the_detokenizer() {
    let cache = TempDir::new("sci");
    let raw = cache.0.join("scientific_papers_arxiv/raw");
    std::fs::create_dir_all(&raw).unwrap();
    let lines: Vec<String> = std::fs::read_to_string(shared_data().join("wikitext-2/test.txt"))
        .unwrap()
        .lines()
        .filter(|l| l.len() > 80)
        .map(|l| format!("we show ( see fig . 1 ) that {l} @xmath0 ."))
        .collect();
    let (train, valid) = lines.split_at(lines.len() * 3 / 4);
    for (name, rows) in [("train", train), ("validation", valid)] {
        let body: String = rows
            .iter()
            .map(|r| {
                serde_json::json!({"article": r, "abstract": "x", "section_names": "y"}).to_string()
                    + "\n"
            })
            .collect();
        std::fs::write(raw.join(format!("{name}.jsonl")), body).unwrap();
    }
    let s = spec(
        &cache.0,
        "scientific_papers_arxiv",
        "scientific_papers_arxiv",
        "char",
        96,
    );
    let p = prepare(&s).unwrap();
    let d = Detokenizer::for_dataset("scientific_papers_arxiv");
    assert_eq!(
        p.train_meta.recipe.detokenizer.as_deref(),
        Some("scientific_papers")
    );
    assert_eq!(all_blocks(&p.train), char_expected(train, d, 96));
    assert_eq!(all_blocks(&p.valid), char_expected(valid, d, 96));
    // The detokenizer really changed the text.
    assert_ne!(char_expected(valid, d, 96), char_expected(valid, None, 96));
}

/// A row corpus's test split (`eval.split=test`), and the one-line refusal for a document folder,
/// which has none.
#[test]
fn test_splits() {
    let cache = TempDir::new("ptbtest");
    let raw = cache.0.join("ptb/raw");
    std::fs::create_dir_all(&raw).unwrap();
    std::fs::copy(
        shared_data().join("ptb/ptb.test.txt"),
        raw.join("ptb.test.txt"),
    )
    .unwrap();
    let s = spec(&cache.0, "ptb", "ptb", "char", 128);
    let (blocks, meta, _) = prepare_one(&s, "ptb", Split::Test).unwrap();
    let rows: Vec<String> = std::fs::read_to_string(raw.join("ptb.test.txt"))
        .unwrap()
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(
        all_blocks(&blocks),
        char_expected(&rows, Some(Detokenizer::Ptb), 128)
    );
    assert_eq!(
        meta.documents,
        [format!("ptb.test.txt ({} rows)", rows.len())]
    );
    // The validation file is absent: its split names the file it wants.
    let e = format!(
        "{:#}",
        prepare_one(&s, "ptb", Split::Validation).err().unwrap()
    );
    assert!(e.contains("ptb.valid.txt"), "{e}");

    let folder = TempDir::new("foldertest");
    support::shakespeare_cache(&folder.0);
    let s = spec(
        &folder.0.join("data"),
        "shakespeare",
        "shakespeare",
        "char",
        128,
    );
    let e = format!(
        "{:#}",
        prepare_one(&s, "shakespeare", Split::Test).err().unwrap()
    );
    assert!(e.contains("no test split"), "{e}");
}

/// `data=text8-crop` end to end: training crops its double-length blocks to `model.length`
/// windows, and `ppl-eval eval.split=test` scores text8's test split.
#[test]
fn text8_crop_trains_and_the_test_split_evaluates() {
    let (cache, _) = text8_cache("text8cli");
    let run = TempDir::new("text8cli-run");
    let mut a = support::args(&["train"], support::tiny_overrides(&run.0));
    a.extend(
        [
            "data=text8-crop",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
        ]
        .map(String::from),
    );
    a.push(format!("data.cache_dir={}", cache.0.display()));
    let o = support::mdlm(&cache.0, &a);
    let err = support::stderr(&o);
    assert!(o.status.success(), "train failed:\n{err}");
    // 32-token model windows cut from 64-token training blocks.
    assert!(
        err.contains("training blocks of 64 are cropped to random windows of 32"),
        "{err}"
    );
    assert!(cache.0.join("text8-crop/text8-L64-train.bin").is_file());
    let ckpt = run.0.join("checkpoints/last.safetensors");

    let eval = TempDir::new("text8cli-eval");
    let mut a = support::args(&["ppl-eval"], support::tiny_overrides(&eval.0));
    a.extend(["data=text8", "eval.split=test"].map(String::from));
    a.push(format!("data.cache_dir={}", cache.0.display()));
    a.push(format!("eval.checkpoint_path={}", ckpt.display()));
    let o = support::mdlm(&cache.0, &a);
    let out = support::stdout(&o);
    assert!(
        o.status.success(),
        "ppl-eval failed:\n{}",
        support::stderr(&o)
    );
    assert!(out.contains("on text8 test"), "{out}");
    assert!(cache.0.join("text8/text8-L32-test.bin").is_file());
}

/// The same WikiText-2 rows as a local text file and as Parquet files in the hf-hub cache layout
/// of the Hub's converted branch (read offline): `ppl-eval` scores them identically.
#[test]
fn wikitext2_from_hub_parquet_scores_as_the_local_text_file() {
    use parquet::basic::Compression;
    let tmp = TempDir::new("hubppl");
    support::shakespeare_cache(&tmp.0);
    let ckpt = support::train_tiny(&tmp.0, &tmp.0.join("train"), 2);
    let valid = std::fs::read_to_string(shared_data().join("wikitext-2/valid.txt")).unwrap();
    let rows: Vec<Option<String>> = valid
        .split_inclusive('\n')
        .map(|r| Some(r.into()))
        .collect();

    // Local: <cache>/data/wikitext2/raw/valid.txt.
    let local = TempDir::new("hubppl-local");
    let raw = local.0.join("data/wikitext2/raw");
    std::fs::create_dir_all(&raw).unwrap();
    std::fs::write(raw.join("valid.txt"), &valid).unwrap();

    // Hub: datasets--Salesforce--wikitext, ref refs/convert/parquet, two shards.
    let hub = TempDir::new("hubppl-hub");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = hub.0.join("datasets--Salesforce--wikitext");
    std::fs::create_dir_all(repo.join("refs/refs/convert")).unwrap();
    std::fs::write(repo.join("refs/refs/convert/parquet"), commit).unwrap();
    let dir = repo.join(format!("snapshots/{commit}/wikitext-2-raw-v1/validation"));
    std::fs::create_dir_all(&dir).unwrap();
    let half = rows.len() / 2;
    support::parquet::write_text(
        &dir.join("0000.parquet"),
        "text",
        &[rows[..half].to_vec()],
        Compression::SNAPPY,
    );
    support::parquet::write_text(
        &dir.join("0001.parquet"),
        "text",
        &[rows[half..].to_vec()],
        Compression::SNAPPY,
    );

    let score = |cache: &Path, env: &[(&str, &Path)], tag: &str| -> String {
        let out = TempDir::new(tag);
        let mut a = support::args(&["ppl-eval"], support::tiny_overrides(&out.0));
        a.extend(["data=wikitext2", "data.tokenizer_name_or_path=char"].map(String::from));
        a.push(format!("eval.checkpoint_path={}", ckpt.display()));
        let o = support::mdlm_env(cache, env, &a);
        let stdout = support::stdout(&o);
        assert!(o.status.success(), "{tag}: {}", support::stderr(&o));
        stdout
            .lines()
            .find_map(|l| l.split_once("tokens): ").map(|(_, m)| m.to_string()))
            .unwrap_or_else(|| panic!("{tag}: no score in {stdout}"))
    };
    let from_text = score(&local.0, &[], "hubppl-a");
    let offline = Path::new("1");
    let from_hub = score(
        &tmp.0.join("nothing-local"),
        &[("HF_HUB_CACHE", &hub.0), ("HF_HUB_OFFLINE", offline)],
        "hubppl-b",
    );
    assert_eq!(from_text, from_hub);
    assert!(from_hub.starts_with("nll "), "{from_hub}");
}

/// Local Parquet files named as `datasets` names shards (`validation-00000-of-00001.parquet`,
/// PTB's `sentence` column) give the blocks the text file gives.
#[test]
fn local_parquet_equals_the_text_file() {
    use parquet::basic::Compression;
    let text = TempDir::new("ptbtxt");
    let raw = text.0.join("ptb/raw");
    std::fs::create_dir_all(&raw).unwrap();
    std::fs::copy(
        shared_data().join("ptb/ptb.valid.txt"),
        raw.join("ptb.valid.txt"),
    )
    .unwrap();
    let pq = TempDir::new("ptbpq");
    let raw_pq = pq.0.join("ptb/raw");
    std::fs::create_dir_all(&raw_pq).unwrap();
    let rows: Vec<Option<String>> = std::fs::read_to_string(raw.join("ptb.valid.txt"))
        .unwrap()
        .lines()
        .map(|l| Some(l.trim().to_string()))
        .collect();
    support::parquet::write_text(
        &raw_pq.join("validation-00000-of-00001.parquet"),
        "sentence",
        &[rows[..1000].to_vec(), rows[1000..].to_vec()],
        Compression::ZSTD(Default::default()),
    );
    let a = prepare_one(
        &spec(&text.0, "ptb", "ptb", "char", 64),
        "ptb",
        Split::Validation,
    )
    .unwrap();
    let b = prepare_one(
        &spec(&pq.0, "ptb", "ptb", "char", 64),
        "ptb",
        Split::Validation,
    )
    .unwrap();
    assert!(a.0.len() > 100);
    assert_eq!(all_blocks(&a.0), all_blocks(&b.0));
    assert_eq!(
        b.1.recipe.sources[0].format,
        mdlm::data::source::Format::Parquet {
            column: "sentence".into()
        }
    );
}

/// Special tokens named in `tokenizer_config.json` (string or added-token object) take
/// precedence over what the vocabulary suggests; a name the vocabulary lacks is refused.
#[test]
fn tokenizer_config_names_the_special_tokens() {
    use mdlm::data::HfTokenizer;
    let assets = shared_data().join("../assets/tokenizers");
    let dir = TempDir::new("tokcfg");
    let with_config = |model: &str, config: serde_json::Value| {
        let d = dir.0.join(format!("{model}-{}", config.to_string().len()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            assets.join(model).join("tokenizer.json"),
            d.join("tokenizer.json"),
        )
        .unwrap();
        std::fs::write(d.join("tokenizer_config.json"), config.to_string()).unwrap();
        HfTokenizer::from_name_or_path(d.to_str().unwrap())
    };
    // BERT with declared BOS/EOS: those ids, while the wrap ids keep the reference's quirk of
    // taking the first id of `encode(token)` with special tokens, the leading [CLS].
    let bert = with_config(
        "bert-base-uncased",
        serde_json::json!({"bos_token": "[unused1]", "eos_token": {"content": "[unused2]", "lstrip": false}}),
    )
    .unwrap();
    assert_eq!((bert.bos_id(), bert.eos_id()), (2, 3));
    assert_eq!(bert.wrap_ids(), (101, 101));
    assert_eq!(bert.mask_id(), Some(103));
    // Without a config the vocabulary decides: [CLS]/[SEP].
    let plain = HfTokenizer::from_name_or_path(
        assets
            .join("bert-base-uncased/tokenizer.json")
            .to_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!((plain.bos_id(), plain.eos_id()), (101, 102));

    // GPT-2 whose config declares a pad token: no [PAD] is added.
    let gpt2 = with_config(
        "gpt2",
        serde_json::json!({"pad_token": "<|endoftext|>", "tokenizer_class": "GPT2Tokenizer"}),
    )
    .unwrap();
    assert_eq!(gpt2.pad_id(), 50256);
    assert_eq!(gpt2.len_with_added(), 50257);
    assert_eq!(gpt2.mask_id(), None);
    let default = HfTokenizer::from_name_or_path(assets.join("gpt2").to_str().unwrap()).unwrap();
    assert_eq!((default.pad_id(), default.len_with_added()), (50257, 50258));

    let e = format!(
        "{:#}",
        with_config("gpt2", serde_json::json!({"eos_token": "</s>"}))
            .err()
            .unwrap()
    );
    assert!(e.contains("eos_token \"</s>\""), "{e}");
}
