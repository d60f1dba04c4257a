//! Data pipeline on real text: tokenizer round trips, wrap invariants, the prepared-file format,
//! the loader's reproducibility, and the offline error. Corpora come from `../shared/data`; no
//! test touches the network.

use mdlm::data::blocks::{HEADER_LEN, TokenBlocks};
use mdlm::data::wrap::{group_texts, wrap_documents};
use mdlm::data::{CharTokenizer, DataSpec, Loader, LoaderState, Tokenizer, prepare};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Kind;

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

fn tiny_shakespeare() -> String {
    std::fs::read_to_string(shared().join("tinyshakespeare/input.txt")).expect("tinyshakespeare")
}

const PLAYS: [&str; 5] = [
    "comedy_of_errors_gut.txt",
    "hamlet_gut.txt",
    "macbeth_gut.txt",
    "sonnets_gut.txt",
    "tempest_gut.txt",
];

/// A scratch folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mdlm-data-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `<tmp>/shakespeare/raw/` holding the given Gutenberg texts.
fn cache_with(files: &[&str]) -> TempDir {
    let t = TempDir::new("cache");
    let raw = t.0.join("shakespeare/raw");
    std::fs::create_dir_all(&raw).unwrap();
    for f in files {
        std::fs::copy(shared().join("gutenberg-shakespeare").join(f), raw.join(f)).unwrap();
    }
    t
}

fn spec(cache: &Path, tokenizer: &str, block_size: usize) -> DataSpec {
    DataSpec {
        name: "shakespeare".into(),
        valid_name: "shakespeare".into(),
        tokenizer: tokenizer.into(),
        cache_dir: cache.to_path_buf(),
        wrap: true,
        block_size,
        insert_valid_eos: true,
    }
}

fn err_string<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

// ---------------------------------------------------------------- tokenizers

#[test]
fn char_round_trips_tiny_shakespeare_exactly() {
    let text = tiny_shakespeare();
    let t = CharTokenizer::extended();
    let ids = t.encode(&text).unwrap();
    assert_eq!(ids.len(), text.chars().count());
    assert!(
        !ids.contains(&7),
        "no character of tiny-shakespeare should be [UNK]"
    );
    assert_eq!(t.decode(&ids).unwrap(), text);
}

#[test]
fn char_round_trips_the_gutenberg_plays() {
    let t = CharTokenizer::extended();
    for f in PLAYS {
        let text = std::fs::read_to_string(shared().join("gutenberg-shakespeare").join(f)).unwrap();
        let ids = t.encode(&text).unwrap();
        assert!(
            ids.iter().all(|&i| (i as usize) < t.vocab_size() && i != 7),
            "{f}"
        );
        assert_eq!(t.decode(&ids).unwrap(), text, "{f}");
    }
}

#[test]
fn text8_round_trips_lower_cased_text() {
    let t = CharTokenizer::text8();
    let text = tiny_shakespeare();
    // Lines that are only letters and spaces round-trip once lower-cased...
    let clean: Vec<String> = text
        .lines()
        .map(str::to_lowercase)
        .filter(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_lowercase() || c == ' '))
        .collect();
    assert!(clean.len() > 1000);
    let joined = clean.join(" ");
    assert_eq!(t.decode(&t.encode(&joined).unwrap()).unwrap(), joined);
    // ...and everything else becomes [UNK], one per character.
    let expected: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c == ' ' {
                c.to_string()
            } else {
                "[UNK]".into()
            }
        })
        .collect();
    assert_eq!(t.decode(&t.encode(&text).unwrap()).unwrap(), expected);
}

#[test]
fn tokenizer_ids() {
    for t in [CharTokenizer::text8(), CharTokenizer::extended()] {
        assert_eq!(
            (t.bos_id(), t.eos_id(), t.pad_id(), t.mask_id()),
            (2, 3, 5, Some(4))
        );
    }
    assert_eq!(CharTokenizer::text8().vocab_size(), 35);
    assert!(mdlm::data::tokenizer_by_name("gpt3").is_err());
}

// ---------------------------------------------------------------- wrap

#[test]
fn wrap_invariants_on_real_documents() {
    let t = CharTokenizer::extended();
    let docs: Vec<Vec<u32>> = PLAYS
        .iter()
        .map(|f| {
            let text =
                std::fs::read_to_string(shared().join("gutenberg-shakespeare").join(f)).unwrap();
            let mut ids = t.encode(&text).unwrap();
            ids.push(t.eos_id());
            ids
        })
        .collect();
    for (block_size, batch) in [(128usize, 1000usize), (64, 2), (37, 1)] {
        let flat = wrap_documents(&docs, block_size, 2, 3, batch).unwrap();
        assert_eq!(flat.len() % block_size, 0);
        let mut inner = Vec::new();
        for block in flat.chunks(block_size) {
            assert_eq!(block[0], 2);
            assert_eq!(block[block_size - 1], 3);
            inner.extend_from_slice(&block[1..block_size - 1]);
        }
        // The content is the concatenation, less each map batch's tail.
        let mut expected = Vec::new();
        for b in docs.chunks(batch) {
            let cat: Vec<u32> = b.concat();
            let keep = cat.len() / (block_size - 2) * (block_size - 2);
            expected.extend_from_slice(&cat[..keep]);
        }
        assert_eq!(inner, expected, "block_size {block_size}, batch {batch}");
    }
    assert!(group_texts(&docs, 2, 2, 3).is_err());
}

// ---------------------------------------------------------------- prepare

#[test]
fn prepare_round_trip_reuse_and_split() {
    let cache = cache_with(&PLAYS);
    let s = spec(&cache.0, "char", 128);
    let p = prepare(&s).unwrap();
    // Fewer than 20 documents: the last one (by name) is validation.
    assert_eq!(p.valid_meta.documents, vec!["tempest_gut.txt".to_string()]);
    assert_eq!(p.train_meta.documents.len(), 4);
    assert_eq!(p.train.block_size(), 128);
    assert_eq!(p.train.vocab_size(), 105);

    // Blocks equal a direct wrap of the train documents.
    let t = CharTokenizer::extended();
    let docs: Vec<Vec<u32>> = PLAYS[..4]
        .iter()
        .map(|f| {
            let mut ids = t
                .encode(
                    &std::fs::read_to_string(shared().join("gutenberg-shakespeare").join(f))
                        .unwrap(),
                )
                .unwrap();
            ids.push(3);
            ids
        })
        .collect();
    let flat = wrap_documents(&docs, 128, 2, 3, 1000).unwrap();
    assert_eq!(p.train.len(), flat.len() / 128);
    for i in [0, 1, p.train.len() / 2, p.train.len() - 1] {
        assert_eq!(p.train.block(i), flat[i * 128..(i + 1) * 128].to_vec());
        assert_eq!(p.train.valid_len(i), 128);
    }
    let text = t.decode(&p.valid.block(0)).unwrap();
    assert!(
        text.starts_with("[BOS]") && text.ends_with("[EOS]"),
        "{text}"
    );

    // A second prepare reuses the files untouched.
    let bin = p.train.path().to_path_buf();
    assert_eq!(bin.file_name().unwrap(), "char-L128-train.bin");
    let before = std::fs::metadata(&bin).unwrap().modified().unwrap();
    drop(p);
    let p2 = prepare(&s).unwrap();
    assert_eq!(std::fs::metadata(&bin).unwrap().modified().unwrap(), before);
    assert_eq!(p2.train.len(), flat.len() / 128);
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bin.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(sidecar["recipe"]["tokenizer"], "char");
    assert_eq!(sidecar["recipe"]["block_size"], 128);
    assert_eq!(sidecar["recipe"]["sources"].as_array().unwrap().len(), 5);
    drop(p2);

    // Changing the corpus makes the files stale: they are rebuilt.
    std::fs::remove_file(cache.0.join("shakespeare/raw/comedy_of_errors_gut.txt")).unwrap();
    let p3 = prepare(&s).unwrap();
    assert_eq!(p3.train_meta.documents.len(), 3);
    assert!(p3.train.len() < flat.len() / 128);
}

#[test]
fn corrupt_or_old_files_fail_with_a_hint_and_are_rebuilt() {
    let cache = cache_with(&PLAYS[..2]);
    let s = spec(&cache.0, "text8", 64);
    let p = prepare(&s).unwrap();
    let bin = p.train.path().to_path_buf();
    let n = p.train.len();
    let good = std::fs::read(&bin).unwrap();
    drop(p);

    let mut bad = good.clone();
    bad[0..8].copy_from_slice(b"GARBAGE!");
    std::fs::write(&bin, &bad).unwrap();
    let e = err_string(TokenBlocks::open(&bin));
    assert!(e.contains("bad magic") && e.contains("HINT:"), "{e}");

    let mut old = good.clone();
    old[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&bin, &old).unwrap();
    let e = err_string(TokenBlocks::open(&bin));
    assert!(e.contains("version 99") && e.contains("HINT:"), "{e}");

    std::fs::write(&bin, &good[..good.len() - 1]).unwrap();
    let e = err_string(TokenBlocks::open(&bin));
    assert!(e.contains("truncated") && e.contains("HINT:"), "{e}");

    std::fs::write(&bin, &good[..HEADER_LEN / 2]).unwrap();
    assert!(err_string(TokenBlocks::open(&bin)).contains("HINT:"));

    // prepare() does not trust the damaged file: it rebuilds it.
    let p = prepare(&s).unwrap();
    assert_eq!(p.train.len(), n);
    assert_eq!(std::fs::read(&bin).unwrap(), good);
}

#[test]
fn unwrapped_layout_pads_and_masks() {
    let cache = cache_with(&PLAYS[..2]);
    let mut s = spec(&cache.0, "char", 100_000);
    s.wrap = false;
    let p = prepare(&s).unwrap();
    assert!(
        p.train
            .path()
            .to_string_lossy()
            .ends_with("char-L100000-nowrap-train.bin")
    );
    assert_eq!(p.train.len(), 1);
    assert!(p.train.has_padding());
    let len = p.train.valid_len(0);
    assert_eq!(
        len,
        std::fs::read_to_string(shared().join("gutenberg-shakespeare").join(PLAYS[0]))
            .unwrap()
            .len()
    );
    let mut loader = Loader::eval(p.train.clone(), 4).unwrap();
    let b = loader.next_batch().unwrap();
    assert_eq!(b.attention_mask.size(), vec![1, 100_000]);
    assert_eq!(
        b.attention_mask.sum(Kind::Float).double_value(&[]),
        len as f64
    );
    assert_eq!(b.x.int64_value(&[0, len as i64]), 5);
}

#[test]
fn missing_data_fails_at_once_with_one_clear_line() {
    gpt2_hub();
    let cache = TempDir::new("empty");
    let mut s = spec(&cache.0, "char", 128);
    s.name = "openwebtext".into();
    s.valid_name = "wikitext103".into();
    let e = err_string(prepare(&s));
    let dir = cache.0.join("openwebtext").join("raw");
    let local = format!(
        "data 'openwebtext' is not available offline (looked in {}); train the built-in preset with 'mdlm train experiment=shakespeare' (run scripts/setup-data.sh first); the Hub fallback failed too: ",
        dir.display()
    );
    assert!(e.starts_with(&local), "{e}");
    assert!(
        e.contains("Skylion007/openwebtext") && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
    assert!(!e.contains('\n'));

    // A present train corpus does not hide a missing validation corpus.
    let cache = cache_with(&PLAYS[..2]);
    let mut s = spec(&cache.0, "char", 128);
    s.valid_name = "openwebtext".into();
    assert!(err_string(prepare(&s)).starts_with("data 'openwebtext' is not available offline"));
    assert!(
        !cache.0.join("shakespeare/char-L128-train.bin").exists(),
        "nothing is prepared before the check"
    );

    let empty = TempDir::new("noshakespeare");
    let e = err_string(prepare(&spec(&empty.0, "char", 128)));
    assert!(
        e.contains("scripts/setup-data.sh") && e.contains("shakespeare/raw"),
        "{e}"
    );

    let e = err_string(prepare(&spec(&cache.0, "bpe", 128)));
    assert!(e.contains("'bpe'") && e.contains("char, text8"), "{e}");
}

#[test]
fn full_gutenberg_corpus_block_counts() {
    let files: Vec<String> = std::fs::read_dir(shared().join("gutenberg-shakespeare"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("_gut.txt"))
        .collect();
    assert_eq!(files.len(), 42);
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    let cache = cache_with(&refs);
    let p = prepare(&spec(&cache.0, "char", 128)).unwrap();
    assert_eq!(
        p.valid_meta.documents,
        vec!["macbeth_gut.txt", "twelfth_night_gut.txt"]
    );
    assert_eq!(p.train_meta.documents.len(), 40);
    println!(
        "char L128: train {} docs {} tokens {} blocks; valid {} docs {} tokens {} blocks",
        p.train_meta.documents.len(),
        p.train_meta.tokens,
        p.train.len(),
        p.valid_meta.documents.len(),
        p.valid_meta.tokens,
        p.valid.len()
    );
    assert_eq!(p.train.len(), p.train_meta.tokens / 126);
    // Pinned: a change here changes what every Shakespeare run trains on.
    assert_eq!((p.train.len(), p.valid.len()), (38404, 1732));
    assert_eq!(p.valid.len(), p.valid_meta.tokens / 126);
}

// ---------------------------------------------------------------- loader

fn blocks_for_loader() -> (TempDir, Arc<TokenBlocks>) {
    let cache = cache_with(&PLAYS[..2]);
    let p = prepare(&spec(&cache.0, "char", 64)).unwrap();
    // Two documents: comedy_of_errors trains, hamlet validates.
    (cache, p.train.clone())
}

fn drain(loader: &mut Loader, n: usize) -> Vec<Vec<usize>> {
    (0..n).map(|_| loader.next_indices().unwrap()).collect()
}

#[test]
fn loader_batches_are_typed_and_shaped() {
    let (_c, blocks) = blocks_for_loader();
    let mut l = Loader::train(blocks.clone(), 8, 1).unwrap();
    let b = l.next_batch().unwrap();
    assert_eq!(b.x.size(), vec![8, 64]);
    assert_eq!(b.x.kind(), Kind::Int64);
    assert_eq!(b.attention_mask.kind(), Kind::Float);
    assert_eq!(
        b.attention_mask.sum(Kind::Float).double_value(&[]),
        8.0 * 64.0
    );
    assert_eq!(b.x.int64_value(&[3, 0]), 2);
    assert_eq!(b.x.int64_value(&[3, 63]), 3);
}

#[test]
fn loader_is_reproducible_and_covers_each_block_once_per_epoch() {
    let (_c, blocks) = blocks_for_loader();
    let n = blocks.len();
    let bs = 16;
    let mut a = Loader::train(blocks.clone(), bs, 1234).unwrap();
    let mut b = Loader::train(blocks.clone(), bs, 1234).unwrap();
    let nb = a.num_batches();
    assert_eq!(nb, n / bs);
    let ea = drain(&mut a, 3 * nb);
    assert_eq!(ea, drain(&mut b, 3 * nb));
    let epochs: Vec<Vec<usize>> = ea.chunks(nb).map(|c| c.concat()).collect();
    for e in &epochs {
        let mut s = e.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), nb * bs, "no block repeats within an epoch");
    }
    assert_ne!(epochs[0], epochs[1]);
    assert_ne!(epochs[1], epochs[2]);
    // With a batch size that divides the split, an epoch is a permutation of all blocks.
    let mut whole = Loader::train(blocks.clone(), 1, 1234).unwrap();
    let mut e: Vec<usize> = drain(&mut whole, n).concat();
    e.sort();
    assert_eq!(e, (0..n).collect::<Vec<_>>());

    let mut c = Loader::train(blocks.clone(), bs, 99).unwrap();
    assert_ne!(drain(&mut c, nb), ea[..nb].to_vec());
}

#[test]
fn loader_resume_draws_what_a_straight_run_draws() {
    let (_c, blocks) = blocks_for_loader();
    let mut straight = Loader::train(blocks.clone(), 8, 7).unwrap();
    let nb = straight.num_batches();
    let k = nb + nb / 2; // mid-way through the second epoch
    drain(&mut straight, k);
    let state = straight.state();
    assert_eq!(
        state,
        LoaderState {
            epoch: 1,
            cursor: nb / 2
        }
    );
    let saved = serde_json::to_string(&state).unwrap();
    let expected: Vec<_> = (0..nb + 3)
        .map(|_| straight.next_batch().unwrap().x)
        .collect();

    let mut resumed = Loader::train(blocks.clone(), 8, 7).unwrap();
    resumed
        .restore(serde_json::from_str(&saved).unwrap())
        .unwrap();
    for (i, e) in expected.iter().enumerate() {
        let got = resumed.next_batch().unwrap().x;
        assert!(got.equal(e), "batch {i} after resume differs");
    }

    // End-of-epoch state resumes into the next epoch.
    let mut s1 = Loader::train(blocks.clone(), 8, 7).unwrap();
    drain(&mut s1, nb);
    let st = s1.state();
    let mut s2 = Loader::train(blocks.clone(), 8, 7).unwrap();
    s2.restore(st).unwrap();
    assert_eq!(drain(&mut s1, 2), drain(&mut s2, 2));

    let mut bad = Loader::train(blocks, 8, 7).unwrap();
    assert!(
        bad.restore(LoaderState {
            epoch: 0,
            cursor: nb + 1
        })
        .is_err()
    );
}

#[test]
fn eval_loader_is_sequential_and_keeps_the_partial_batch() {
    let (_c, blocks) = blocks_for_loader();
    let n = blocks.len();
    let bs = 7;
    assert_ne!(n % bs, 0, "pick a batch size that leaves a partial batch");
    let mut l = Loader::eval(blocks.clone(), bs).unwrap();
    assert_eq!(l.num_batches(), n.div_ceil(bs));
    let all: Vec<Vec<usize>> = std::iter::from_fn(|| l.next_indices()).collect();
    assert_eq!(all.len(), n.div_ceil(bs));
    assert_eq!(all.last().unwrap().len(), n % bs);
    assert_eq!(all.concat(), (0..n).collect::<Vec<_>>());
    assert!(l.next_batch().is_none());
    l.reset();
    let first = l.next_batch().unwrap();
    assert_eq!(first.x.size(), vec![bs as i64, 64]);
    let count = Loader::eval(blocks.clone(), bs).unwrap().count();
    assert_eq!(count, n.div_ceil(bs));
    assert!(Loader::train(blocks.clone(), n + 1, 0).is_err());
}

// ---- Hugging Face tokenizers and the reference's row corpora -----------------------------------

use mdlm::data::{Detokenizer, HfTokenizer, Split, prepare_one};

fn gpt2_json() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/assets/tokenizers/gpt2/tokenizer.json")
}

/// A hub cache holding `gpt2` (`models--gpt2/snapshots/<rev>/tokenizer.json` + `refs/main`),
/// made once per test binary and pointed at by `HF_HUB_CACHE`, so `tokenizer_by_name("gpt2")`
/// goes through the same lookup a user's does.
fn gpt2_hub() -> &'static Path {
    static HUB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    HUB.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("mdlm-data-hub-{}", std::process::id()));
        let rev = "1111111111111111111111111111111111111111";
        let repo = root.join("models--gpt2");
        std::fs::create_dir_all(repo.join("snapshots").join(rev)).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), rev).unwrap();
        std::fs::copy(
            gpt2_json(),
            repo.join("snapshots").join(rev).join("tokenizer.json"),
        )
        .unwrap();
        // SAFETY: set once, before any test of this binary reads it; no other test in this binary
        // reads or writes Hugging Face variables.
        unsafe { std::env::set_var("HF_HUB_CACHE", &root) };
        // Never the network from a test: a missing corpus must not start a Hub download.
        unsafe { std::env::set_var("HF_HUB_OFFLINE", "1") };
        root
    })
}

/// `<tmp>/<name>/raw/<file>` copied from the shared data folder.
fn corpus_cache(name: &str, src: &str) -> TempDir {
    let t = TempDir::new(name);
    let raw = t.0.join(name).join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let from = shared().join(src);
    std::fs::copy(&from, raw.join(from.file_name().unwrap())).unwrap();
    t
}

/// The wrap path computed here from scratch: rows → detokenizer → plain encode + EOS, then per
/// batch of 1000 rows the stream is cut into chunks of `L - 2` (the tail dropped) and wrapped.
fn expected_wrap(rows: &[String], detok: Detokenizer, block_size: usize) -> Vec<Vec<u32>> {
    let t = HfTokenizer::from_file("gpt2", &gpt2_json()).unwrap();
    let eot = t.token_to_id("<|endoftext|>").unwrap();
    let mut blocks = Vec::new();
    for batch in rows.chunks(1000) {
        let mut stream = Vec::new();
        for r in batch {
            stream.extend(t.encode(&detok.apply(r)).unwrap());
            stream.push(eot);
        }
        for chunk in stream.chunks_exact(block_size - 2) {
            let mut b = vec![eot];
            b.extend_from_slice(chunk);
            b.push(eot);
            blocks.push(b);
        }
    }
    blocks
}

fn check_real_corpus(name: &str, src: &str, rows: Vec<String>, detok: Detokenizer) {
    gpt2_hub();
    let cache = corpus_cache(name, src);
    let spec = DataSpec {
        name: name.into(),
        valid_name: name.into(),
        tokenizer: "gpt2".into(),
        cache_dir: cache.0.clone(),
        wrap: true,
        block_size: 128,
        insert_valid_eos: true,
    };
    let (blocks, meta, tok) = prepare_one(&spec, name, Split::Validation).unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    assert_eq!(
        meta.recipe.vocab_size, 50258,
        "vocab plus the appended mask"
    );
    assert!(meta.recipe.tokenizer_identity.contains("fnv1a64"));
    let want = expected_wrap(&rows, detok, 128);
    assert_eq!(blocks.len(), want.len(), "{name}: block count");
    assert!(blocks.len() > 10, "{name}: only {} blocks", blocks.len());
    assert_eq!(blocks.block(0), want[0], "{name}: first block");
    assert_eq!(
        blocks.block(blocks.len() - 1),
        *want.last().unwrap(),
        "{name}: last block"
    );
    assert_eq!(
        blocks.block(blocks.len() / 2),
        want[want.len() / 2],
        "{name}: middle block"
    );
}

#[test]
fn wikitext2_valid_through_prepare_with_gpt2_from_the_hub_cache() {
    let text = std::fs::read_to_string(shared().join("wikitext-2/valid.txt")).unwrap();
    let rows = text.split_inclusive('\n').map(String::from).collect();
    check_real_corpus(
        "wikitext2",
        "wikitext-2/valid.txt",
        rows,
        Detokenizer::WikiText,
    );
}

#[test]
fn ptb_valid_through_prepare_with_gpt2_from_the_hub_cache() {
    let text = std::fs::read_to_string(shared().join("ptb/ptb.valid.txt")).unwrap();
    let rows = text.lines().map(|l| l.trim().to_string()).collect();
    check_real_corpus("ptb", "ptb/ptb.valid.txt", rows, Detokenizer::Ptb);
}

#[test]
fn lambada_through_prepare_with_gpt2_from_the_hub_cache() {
    let text = std::fs::read_to_string(shared().join("lambada/lambada_test.jsonl")).unwrap();
    let rows = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect();
    check_real_corpus(
        "lambada",
        "lambada/lambada_test.jsonl",
        rows,
        Detokenizer::Lambada,
    );
}

#[test]
fn hf_prepared_file_is_reused_and_a_truncated_one_rebuilt() {
    gpt2_hub();
    let cache = corpus_cache("ptb", "ptb/ptb.valid.txt");
    let spec = DataSpec {
        name: "ptb".into(),
        valid_name: "ptb".into(),
        tokenizer: "gpt2".into(),
        cache_dir: cache.0.clone(),
        wrap: true,
        block_size: 64,
        insert_valid_eos: true,
    };
    let (first, meta, _) = prepare_one(&spec, "ptb", Split::Validation).unwrap();
    let path = first.path().to_path_buf();
    let sidecar = path.with_extension("json");
    let stamp = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let (bin_t, side_t) = (stamp(&path), stamp(&sidecar));
    let full = std::fs::read(&path).unwrap();
    drop(first);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (again, meta2, _) = prepare_one(&spec, "ptb", Split::Validation).unwrap();
    assert_eq!(meta, meta2);
    assert_eq!(stamp(&path), bin_t, "reuse must not rewrite the .bin");
    assert_eq!(
        stamp(&sidecar),
        side_t,
        "reuse must not rewrite the sidecar"
    );
    drop(again);
    std::fs::write(&path, &full[..full.len() / 2]).unwrap();
    let (rebuilt, _, _) = prepare_one(&spec, "ptb", Split::Validation).unwrap();
    assert_eq!(rebuilt.len(), meta.blocks);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        full,
        "rebuilt file is the original"
    );
}

#[test]
fn missing_hub_repo_names_the_repo_where_it_looked_and_the_fix() {
    let empty = TempDir::new("nohub");
    let e = HfTokenizer::from_name_or_path_in("no-such-org/no-such-tokenizer", &empty.0)
        .err()
        .expect("a repo that is not cached must fail");
    let msg = format!("{e:#}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(
        msg.contains("'no-such-org/no-such-tokenizer@main'"),
        "{msg}"
    );
    assert!(
        msg.contains(
            &empty
                .0
                .join("models--no-such-org--no-such-tokenizer")
                .display()
                .to_string()
        ),
        "{msg}"
    );
    assert!(
        msg.contains("HF_HUB_CACHE") && msg.contains("pass a path"),
        "{msg}"
    );
}

/// `data.insert_valid_eos=false` (the re-evaluation protocol): validation documents are joined
/// without EOS, so EOS appears only where a block is wrapped; with the default, between documents
/// too. The two layouts are cached under different names.
#[test]
fn insert_valid_eos_controls_document_separators() {
    let cache = TempDir::new("noeos");
    let raw = cache.0.join("lambada/raw");
    std::fs::create_dir_all(&raw).unwrap();
    std::fs::copy(
        shared().join("lambada/lambada_test.jsonl"),
        raw.join("lambada_test.jsonl"),
    )
    .unwrap();
    let interior_eos = |insert: bool| -> (usize, usize) {
        let mut s = spec(&cache.0, "char", 64);
        s.insert_valid_eos = insert;
        let (blocks, meta, tok) = prepare_one(&s, "lambada", Split::Validation).unwrap();
        assert_eq!(meta.recipe.insert_eos, insert);
        let eos = tok.eos_id();
        let inner: usize = (0..blocks.len())
            .map(|i| blocks.block(i)[1..63].iter().filter(|&&t| t == eos).count())
            .sum();
        (inner, blocks.len())
    };
    let (with, n_with) = interior_eos(true);
    let (without, n_without) = interior_eos(false);
    assert_eq!(without, 0);
    assert!(with > 100, "{with} document separators");
    // One fewer token per document: fewer blocks.
    assert!(n_without < n_with);
    let names: Vec<String> = std::fs::read_dir(cache.0.join("lambada"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.ends_with("-noeos.bin")), "{names:?}");
}

/// Sharding for several ranks: within an epoch the ranks' blocks are disjoint, equal in number,
/// and together the whole permutation but its remainder; eval shards cover every block once.
#[test]
fn sharded_loaders_split_each_epoch_between_ranks() {
    let cache = cache_with(&PLAYS[..2]);
    let prepared = prepare(&spec(&cache.0, "char", 128)).unwrap();
    let n = prepared.train.len();
    let world = 3;
    let batch = 4;
    let mut seen = std::collections::HashSet::new();
    let mut per_rank = Vec::new();
    for rank in 0..world {
        let mut l = Loader::train(prepared.train.clone(), batch, 11)
            .unwrap()
            .shard(rank, world)
            .unwrap();
        let nb = l.num_batches();
        per_rank.push(nb);
        for _ in 0..nb {
            for i in l.next_indices().unwrap() {
                assert!(seen.insert(i), "block {i} dealt to two ranks");
            }
        }
    }
    assert!(per_rank.iter().all(|&b| b == per_rank[0]), "{per_rank:?}");
    assert_eq!(seen.len(), per_rank[0] * batch * world);
    assert!(seen.len() > n - world * batch - world);

    let mut covered = vec![0usize; prepared.valid.len()];
    for rank in 0..world {
        let mut l = Loader::eval(prepared.valid.clone(), 5)
            .unwrap()
            .shard(rank, world)
            .unwrap();
        while let Some(ix) = l.next_indices() {
            ix.iter().for_each(|&i| covered[i] += 1);
        }
    }
    assert!(covered.iter().all(|&c| c == 1));
    assert!(
        Loader::train(prepared.train.clone(), batch, 11)
            .unwrap()
            .shard(3, 3)
            .is_err()
    );
}

/// `data=openwebtext-split` from local JSONL files: the last 100,000 documents are
/// `openwebtext-valid`, the rest `openwebtext-train`, as the reference splits OpenWebText.
#[test]
fn openwebtext_split_holds_out_the_last_hundred_thousand_documents() {
    let cache = TempDir::new("owt");
    let raw = cache.0.join("openwebtext/raw");
    std::fs::create_dir_all(&raw).unwrap();
    let docs: Vec<String> = (0..100_030)
        .map(|i| format!("doc {i} of the web"))
        .collect();
    // Two files, read in name order; one blank line is skipped.
    let line = |d: &String| serde_json::json!({ "text": d }).to_string();
    let a: Vec<String> = docs[..40].iter().map(line).collect();
    let b: Vec<String> = docs[40..].iter().map(line).collect();
    std::fs::write(raw.join("a.jsonl"), a.join("\n") + "\n\n").unwrap();
    std::fs::write(raw.join("b.jsonl"), b.join("\n")).unwrap();
    let mut s = spec(&cache.0, "char", 32);
    s.name = "openwebtext-train".into();
    s.valid_name = "openwebtext-valid".into();
    let p = prepare(&s).unwrap();
    // char tokens: one per character plus EOS per document.
    let tokens =
        |range: std::ops::Range<usize>| -> usize { docs[range].iter().map(|d| d.len() + 1).sum() };
    assert_eq!(p.train_meta.tokens, tokens(0..30));
    assert_eq!(p.valid_meta.tokens, tokens(30..100_030));
    assert_eq!(
        p.train_meta.documents,
        ["30 of 100030 documents in 2 file(s)"]
    );
    // The first training block starts with the first document.
    let first: String = CharTokenizer::extended()
        .decode(&p.train.block(0)[1..9])
        .unwrap();
    assert_eq!(first, "doc 0 of");
    // Missing corpus: one line naming the dataset and the shared folder it looks in.
    let empty = TempDir::new("owt-missing");
    let mut s = spec(&empty.0, "char", 32);
    s.name = "openwebtext-train".into();
    let e = err_string(prepare(&s));
    assert!(
        e.contains("openwebtext-train") && e.contains("openwebtext/raw"),
        "{e}"
    );
}
