//! Streaming preparation hands the tokenizer a batch at a time; whatever the batch size, the
//! prepared file must be byte-identical, since the reference's wrap remainders fall per
//! 1000-document map batch, not per preparation batch. One test in its own binary, because it
//! sets `MDLM_PREP_BATCH_BYTES` for the process.

mod support;

use mdlm::data::{CharTokenizer, DataSpec, Tokenizer, prepare};
use support::TempDir;

#[test]
fn preparation_batch_size_does_not_change_the_blocks() {
    // 4,321 documents of varied lengths: four full map batches and a partial one.
    let docs: Vec<String> = (0..4321)
        .map(|i| format!("document {i} {}", "lorem ipsum ".repeat(i % 7)))
        .collect();
    let body: String = docs
        .iter()
        .map(|d| serde_json::json!({ "text": d }).to_string() + "\n")
        .collect();
    let make = |tag: &str| {
        let cache = TempDir::new(tag);
        let raw = cache.0.join("openwebtext/raw");
        std::fs::create_dir_all(&raw).unwrap();
        std::fs::write(raw.join("docs.jsonl"), &body).unwrap();
        let spec = DataSpec {
            name: "openwebtext".into(),
            valid_name: "openwebtext".into(),
            tokenizer: "char".into(),
            cache_dir: cache.0.clone(),
            wrap: true,
            block_size: 48,
            insert_valid_eos: true,
        };
        let p = prepare(&spec).unwrap();
        let bytes = std::fs::read(p.train.path()).unwrap();
        (cache, bytes, p)
    };
    // SAFETY: this binary's only test; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("MDLM_PREP_BATCH_BYTES", "1") };
    let (_a, small, p) = make("prep-small");
    unsafe { std::env::remove_var("MDLM_PREP_BATCH_BYTES") };
    let (_b, whole, _) = make("prep-whole");
    assert_eq!(small, whole);

    // And both equal the wrap computed here: per 1000 documents, chunks of 46 in BOS/EOS.
    let t = CharTokenizer::extended();
    let mut want = Vec::new();
    for batch in docs.chunks(1000) {
        let stream: Vec<u32> = batch
            .iter()
            .flat_map(|d| t.encode(d).unwrap().into_iter().chain([t.eos_id()]))
            .collect();
        for piece in stream.chunks_exact(46) {
            want.push([vec![t.bos_id()], piece.to_vec(), vec![t.eos_id()]].concat());
        }
    }
    assert_eq!(p.train.len(), want.len());
    for (i, w) in want.iter().enumerate() {
        assert_eq!(&p.train.block(i), w, "block {i}");
    }
}
