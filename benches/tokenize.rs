//! Data preparation speed: GPT-2 tokenization of the largest local corpus (the 42 Gutenberg
//! Shakespeare texts, ~5 MB, one row per line as the row corpora are read) with one thread vs all
//! threads, the time to open a prepared token file, and streaming preparation of OpenWebText-like
//! JSONL corpora of two sizes (throughput, and the peak resident memory it adds, which should not
//! grow with the corpus). `MDLM_BENCH_QUICK=1`: a fraction of it.

use mdlm::data::blocks::{TokenBlocks, write_blocks};
use mdlm::data::corpus::tokenize_rows;
use mdlm::data::hf::HfTokenizer;
use std::path::Path;
use std::time::Instant;

fn main() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let quick = std::env::var_os("MDLM_BENCH_QUICK").is_some();
    let tok = HfTokenizer::from_file(
        "gpt2",
        &shared.join("assets/tokenizers/gpt2/tokenizer.json"),
    )
    .unwrap();
    let mut files: Vec<_> = std::fs::read_dir(shared.join("data/gutenberg-shakespeare"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt") && !p.ends_with("metadata.txt"))
        .collect();
    files.sort();
    let mut rows: Vec<String> = Vec::new();
    for f in &files {
        rows.extend(
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_string),
        );
    }
    if quick {
        rows.truncate(rows.len() / 5);
    }
    let mb = rows.iter().map(|r| r.len()).sum::<usize>() as f64 / 1e6;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut results = Vec::new();
    for threads in [1, cores] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let start = Instant::now();
        let docs = pool
            .install(|| tokenize_rows(&tok, &rows, Some(50256)))
            .unwrap();
        let secs = start.elapsed().as_secs_f64();
        let tokens: usize = docs.iter().map(Vec::len).sum();
        println!(
            "{threads} thread(s): {mb:.2} MB, {} rows -> {tokens} tokens in {secs:.2} s: {:.2} MB/s",
            rows.len(),
            mb / secs
        );
        results.push((secs, docs));
    }
    println!(
        "all {cores} threads vs 1: {:.2}x",
        results[0].0 / results[1].0
    );
    assert_eq!(
        results[0].1, results[1].1,
        "thread count changed the tokens"
    );

    // Opening a prepared file is a header read and a memory map, whatever its size.
    let ids: Vec<u32> = results[1].1.iter().flatten().copied().collect();
    let block = 1024;
    let ids = &ids[..ids.len() / block * block];
    let path = std::env::temp_dir().join(format!("mdlm-bench-{}.bin", std::process::id()));
    write_blocks(&path, ids, block, 50258, None).unwrap();
    let start = Instant::now();
    let opened = TokenBlocks::open(&path).unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "open {} blocks of {block} ({:.1} MB): {:.3} ms",
        opened.len(),
        std::fs::metadata(&path).unwrap().len() as f64 / 1e6,
        secs * 1e3
    );
    let _ = std::fs::remove_file(&path);

    streaming_prepare(&shared, &rows, quick);
}

/// Peak resident set (VmHWM) in MB, after `reset` zeroes it (Linux `clear_refs` 5).
fn peak_rss_mb(reset: bool) -> f64 {
    if reset {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn streaming_prepare(shared: &Path, rows: &[String], quick: bool) {
    use mdlm::data::{DataSpec, Split, prepare_one};
    let sizes: [usize; 2] = if quick { [8, 16] } else { [96, 192] };
    for mb in sizes {
        let root = std::env::temp_dir().join(format!("mdlm-bench-owt-{}-{mb}", std::process::id()));
        let raw = root.join("openwebtext/raw");
        std::fs::create_dir_all(&raw).unwrap();
        // Documents of 40 consecutive lines, cycling through the corpus until `mb` MB.
        let mut body = String::new();
        let mut k = 0;
        while body.len() < mb << 20 {
            let doc: Vec<&str> = (0..40)
                .map(|j| rows[(k + j) % rows.len()].as_str())
                .collect();
            body.push_str(&serde_json::json!({ "text": doc.join("\n") }).to_string());
            body.push('\n');
            k += 40;
        }
        std::fs::write(raw.join("docs.jsonl"), &body).unwrap();
        drop(body);
        let spec = DataSpec {
            name: "openwebtext".into(),
            valid_name: "openwebtext".into(),
            tokenizer: shared
                .join("assets/tokenizers/gpt2/tokenizer.json")
                .display()
                .to_string(),
            cache_dir: root.clone(),
            wrap: true,
            block_size: 1024,
            insert_valid_eos: true,
        };
        let before = peak_rss_mb(true);
        let start = Instant::now();
        let (blocks, meta, _) = prepare_one(&spec, "openwebtext", Split::Train).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let peak = peak_rss_mb(false);
        println!(
            "streaming prepare, {mb} MB JSONL ({}) -> {} tokens, {} blocks of 1024 ({:.0} MB file) in {secs:.1} s: {:.2} MB/s; peak RSS {peak:.0} MB (+{:.0} MB over the {before:.0} MB before)",
            meta.documents.join(""),
            meta.tokens,
            blocks.len(),
            std::fs::metadata(blocks.path()).unwrap().len() as f64 / 1e6,
            mb as f64 * 1.048576 / secs,
            peak - before
        );
        drop(blocks);
        let _ = std::fs::remove_dir_all(&root);
    }
}
