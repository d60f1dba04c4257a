//! Hub Parquet files: resolved from a hf-hub cache layout offline, and downloaded through hf-hub
//! from a small HTTP server on 127.0.0.1 that answers as the Hub does.

mod support;

use mdlm::data::hub_data::{HubSource, PARQUET_REVISION, hub_source, split_files_with};
use mdlm::data::parquet::read_text_column;
use mdlm::hub::{Hub, HubClient};
use parquet::basic::Compression;
use std::path::{Path, PathBuf};
use support::TempDir;
use support::hub::{HubServer, Repo, dead_endpoint, proxied};
use support::parquet::{sample_rows, write_text};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn read_files(files: &[PathBuf], column: &str) -> Vec<String> {
    files
        .iter()
        .flat_map(|f| read_text_column(f, column).unwrap())
        .collect::<anyhow::Result<Vec<_>>>()
        .unwrap()
}

fn parquet_bytes(dir: &Path, column: &str, rows: &[String]) -> Vec<u8> {
    let p = dir.join("tmp.parquet");
    let half = rows.len() / 2;
    let groups =
        [&rows[..half], &rows[half..]].map(|g| g.iter().cloned().map(Some).collect::<Vec<_>>());
    write_text(&p, column, &groups, Compression::SNAPPY);
    let b = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    b
}

/// The layout `huggingface_hub` writes: `refs/refs/convert/parquet` holding the commit, and
/// snapshot entries that are relative symlinks into `blobs/`.
fn cache_dataset(hub: &Path, repo: &str, commit: &str, files: &[(&str, Vec<u8>)]) {
    let root = hub.join(format!("datasets--{}", repo.replace('/', "--")));
    let ref_file = root.join("refs").join(PARQUET_REVISION);
    std::fs::create_dir_all(ref_file.parent().unwrap()).unwrap();
    std::fs::write(&ref_file, commit).unwrap();
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    for (i, (name, bytes)) in files.iter().enumerate() {
        let blob = format!("blob{i:04}");
        std::fs::write(root.join("blobs").join(&blob), bytes).unwrap();
        let link = root.join("snapshots").join(commit).join(name);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let up = "../".repeat(name.matches('/').count() + 2);
        std::os::unix::fs::symlink(format!("{up}blobs/{blob}"), &link).unwrap();
    }
}

#[test]
fn offline_reads_a_huggingface_hub_cache() {
    let tmp = TempDir::new("hub-offline");
    let hub = tmp.path().join("hub");
    let src = hub_source("wikitext2").unwrap();
    let (a, b, v) = (
        sample_rows(0, 40),
        sample_rows(40, 25),
        sample_rows(100, 10),
    );
    cache_dataset(
        &hub,
        src.repo,
        COMMIT,
        &[
            // Written out of order: the result must follow the file names.
            (
                "wikitext-2-raw-v1/train/0001.parquet",
                parquet_bytes(tmp.path(), "text", &b),
            ),
            (
                "wikitext-2-raw-v1/train/0000.parquet",
                parquet_bytes(tmp.path(), "text", &a),
            ),
            (
                "wikitext-2-raw-v1/validation/0000.parquet",
                parquet_bytes(tmp.path(), "text", &v),
            ),
            // Another config of the same repo must not leak in.
            (
                "wikitext-103-raw-v1/train/0000.parquet",
                parquet_bytes(tmp.path(), "text", &v),
            ),
        ],
    );
    let offline = Hub::offline(&hub);
    let train = split_files_with(&src, "train", &offline).unwrap();
    let names: Vec<String> = train
        .iter()
        .map(|p| p.strip_prefix(&hub).unwrap().display().to_string())
        .collect();
    let snap = format!("datasets--Salesforce--wikitext/snapshots/{COMMIT}/wikitext-2-raw-v1/train");
    assert_eq!(
        names,
        [
            format!("{snap}/0000.parquet"),
            format!("{snap}/0001.parquet")
        ]
    );
    assert_eq!(read_files(&train, "text"), [a, b].concat());
    let valid = split_files_with(&src, "validation", &offline).unwrap();
    assert_eq!(read_files(&valid, "text"), v);
}

#[test]
fn offline_prefers_the_full_split_and_falls_back_to_partial() {
    let tmp = TempDir::new("hub-partial");
    let hub = tmp.path().join("hub");
    let src = hub_source("scientific_papers_arxiv").unwrap();
    let (full, part, test) = (sample_rows(0, 9), sample_rows(9, 5), sample_rows(20, 4));
    cache_dataset(
        &hub,
        src.repo,
        COMMIT,
        &[
            (
                "arxiv/train/0000.parquet",
                parquet_bytes(tmp.path(), "article", &full),
            ),
            (
                "arxiv/partial-train/0000.parquet",
                parquet_bytes(tmp.path(), "article", &part),
            ),
            (
                "arxiv/partial-test/0000.parquet",
                parquet_bytes(tmp.path(), "article", &test),
            ),
        ],
    );
    let c = Hub::offline(&hub);
    let train = split_files_with(&src, "train", &c).unwrap();
    assert_eq!(read_files(&train, "article"), full);
    let t = split_files_with(&src, "test", &c).unwrap();
    assert!(
        t[0].to_string_lossy().contains("/arxiv/partial-test/"),
        "{t:?}"
    );
    assert_eq!(read_files(&t, "article"), test);
}

#[test]
fn offline_miss_is_one_line_naming_dataset_repo_revision_path_and_fix() {
    let tmp = TempDir::new("hub-miss");
    let hub = tmp.path().join("hub");
    let src = hub_source("ptb").unwrap();
    let c = Hub::offline(&hub);
    let err = format!(
        "{:#}",
        split_files_with(&src, "validation", &c).unwrap_err()
    );
    assert!(!err.contains('\n'), "{err}");
    for part in [
        "'ptb'",
        "ptb-text-only/ptb_text_only",
        PARQUET_REVISION,
        "penn_treebank/validation",
        &format!(
            "{}",
            hub.join("datasets--ptb-text-only--ptb_text_only/refs/refs/convert/parquet")
                .display()
        ),
        "HF_HUB_OFFLINE",
        "local raw files",
    ] {
        assert!(err.contains(part), "missing {part:?} in: {err}");
    }
    // With the ref present but the split absent, the message names the snapshot folder.
    cache_dataset(
        &hub,
        src.repo,
        COMMIT,
        &[(
            "penn_treebank/train/0000.parquet",
            parquet_bytes(tmp.path(), "sentence", &sample_rows(0, 3)),
        )],
    );
    let err = format!(
        "{:#}",
        split_files_with(&src, "validation", &c).unwrap_err()
    );
    assert!(
        err.contains(&format!("snapshots/{COMMIT}/penn_treebank/validation/")),
        "{err}"
    );
}

fn owt() -> HubSource {
    hub_source("openwebtext").unwrap()
}

#[test]
fn online_downloads_into_the_cache_then_reuses_it() {
    if proxied() {
        return;
    }
    let tmp = TempDir::new("hub-online");
    let hub = tmp.path().join("hub");
    let src = hub_source("lm1b").unwrap();
    let (a, b, t) = (sample_rows(0, 30), sample_rows(30, 17), sample_rows(50, 6));
    let files = vec![
        (
            "plain_text/test/0000.parquet".to_string(),
            parquet_bytes(tmp.path(), "text", &t),
        ),
        (
            "plain_text/train/0000.parquet".to_string(),
            parquet_bytes(tmp.path(), "text", &a),
        ),
        (
            "plain_text/train/0001.parquet".to_string(),
            parquet_bytes(tmp.path(), "text", &b),
        ),
    ];
    let server = HubServer::start(vec![Repo::dataset(
        src.repo,
        COMMIT,
        PARQUET_REVISION,
        files,
    )]);
    let client = Hub::online(&hub, HubClient::at(&server.endpoint));

    let train = split_files_with(&src, "train", &client).unwrap();
    assert_eq!(read_files(&train, "text"), [a.clone(), b.clone()].concat());
    let root = hub.join("datasets--billion-word-benchmark--lm1b");
    for (p, name) in train.iter().zip(["0000", "0001"]) {
        assert_eq!(
            p,
            &root.join(format!(
                "snapshots/{COMMIT}/plain_text/train/{name}.parquet"
            ))
        );
        // hf-hub keeps the bytes in blobs/ and links the snapshot entry to them.
        assert!(
            std::fs::symlink_metadata(p)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
    let ref_file = root.join("refs/refs/convert/parquet");
    assert_eq!(std::fs::read_to_string(&ref_file).unwrap().trim(), COMMIT);
    let downloads = |log: &[String]| log.iter().filter(|l| l.contains("/resolve/")).count();
    let log = server.requests();
    // One listing, then a metadata probe (bytes=0-0) and a download (bytes=0-) per file.
    assert_eq!(log.len(), 5, "{log:#?}");
    assert_eq!(downloads(&log), 4, "{log:#?}");

    // Again online: listed, but nothing downloaded.
    let again = split_files_with(&src, "train", &client).unwrap();
    assert_eq!(again, train);
    let log = server.requests();
    assert_eq!((log.len(), downloads(&log)), (6, 4), "{log:#?}");

    // Offline, the cache hf-hub wrote is found through its ref; lm1b validates on test, which
    // was never downloaded.
    let offline = split_files_with(&src, "train", &Hub::offline(&hub)).unwrap();
    assert_eq!(offline, train);
    assert!(split_files_with(&src, "validation", &Hub::offline(&hub)).is_err());
    let valid = split_files_with(&src, "validation", &client).unwrap();
    assert_eq!(read_files(&valid, "text"), t);
    drop(server);
}

#[test]
fn online_takes_partial_split_when_only_that_exists() {
    if proxied() {
        return;
    }
    let tmp = TempDir::new("hub-online-partial");
    let hub = tmp.path().join("hub");
    let rows = sample_rows(0, 12);
    let files = vec![(
        "plain_text/partial-train/0000.parquet".to_string(),
        parquet_bytes(tmp.path(), "text", &rows),
    )];
    let server = HubServer::start(vec![
        Repo::dataset(owt().repo, COMMIT, PARQUET_REVISION, files).lfs(),
    ]);
    let client = Hub::online(&hub, HubClient::at(&server.endpoint));
    let got = split_files_with(&owt(), "train", &client).unwrap();
    assert_eq!(read_files(&got, "text"), rows);
    assert!(got[0].ends_with(format!(
        "snapshots/{COMMIT}/plain_text/partial-train/0000.parquet"
    )));
    // The LFS flow: probe and download both went through the redirect.
    let cdn = server
        .requests()
        .iter()
        .filter(|l| l.starts_with("/cdn/"))
        .count();
    assert_eq!(cdn, 2, "{:#?}", server.requests());
}

#[test]
fn online_missing_split_lists_the_folders_that_exist() {
    if proxied() {
        return;
    }
    let tmp = TempDir::new("hub-online-nosplit");
    let hub = tmp.path().join("hub");
    let files = vec![("other_config/train/0000.parquet".to_string(), b"x".to_vec())];
    let server = HubServer::start(vec![Repo::dataset(
        owt().repo,
        COMMIT,
        PARQUET_REVISION,
        files,
    )]);
    let client = Hub::online(&hub, HubClient::at(&server.endpoint));
    let err = format!(
        "{:#}",
        split_files_with(&owt(), "train", &client).unwrap_err()
    );
    assert!(err.contains("plain_text/train/*.parquet"), "{err}");
    assert!(err.contains("folders there: other_config/train"), "{err}");
}

#[test]
fn unreachable_hub_falls_back_to_a_complete_cache_else_says_how_to_fix() {
    if proxied() {
        return;
    }
    let tmp = TempDir::new("hub-down");
    let hub = tmp.path().join("hub");
    let dead = dead_endpoint();
    let client = Hub::online(&hub, HubClient::at(&dead));
    let err = format!(
        "{:#}",
        split_files_with(&owt(), "train", &client).unwrap_err()
    );
    assert!(
        err.contains("Skylion007/openwebtext") && err.contains(&dead),
        "{err}"
    );
    assert!(err.contains("HF_HUB_OFFLINE=1"), "{err}");

    let rows = sample_rows(0, 8);
    cache_dataset(
        &hub,
        owt().repo,
        COMMIT,
        &[(
            "plain_text/train/0000.parquet",
            parquet_bytes(tmp.path(), "text", &rows),
        )],
    );
    let got = split_files_with(&owt(), "train", &client).unwrap();
    assert_eq!(read_files(&got, "text"), rows);
}

/// A tokenizer repo id missing from the cache is downloaded (tokenizer.json and, when the repo
/// has one, tokenizer_config.json) into it when not offline, then found there offline.
#[test]
fn tokenizer_repo_is_downloaded_into_the_cache_when_online() {
    if proxied() {
        return;
    }
    use mdlm::data::HfTokenizer;
    use mdlm::data::Tokenizer;
    let tmp = TempDir::new("hub-tokenizer");
    let hub = tmp.path().join("hub");
    let json = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/assets/tokenizers/gpt2/tokenizer.json"),
    )
    .unwrap();
    let config = br#"{"model_max_length": 1024, "pad_token": "<|endoftext|>"}"#.to_vec();
    let files = vec![
        ("tokenizer.json".to_string(), json),
        ("tokenizer_config.json".to_string(), config),
    ];
    let server = HubServer::start(vec![Repo::model("someone/gpt2-copy", COMMIT, files)]);
    let client = Hub::online(&hub, HubClient::at(&server.endpoint));
    let t = HfTokenizer::from_name_or_path_with("someone/gpt2-copy", &client).unwrap();
    assert_eq!(t.vocab_size(), 50257);
    // The config was fetched too: its pad token replaces the added [PAD].
    assert_eq!(t.pad_id(), 50256);
    let offline = HfTokenizer::from_name_or_path_in("someone/gpt2-copy", &hub).unwrap();
    assert_eq!(
        offline.encode("Hello world").unwrap(),
        t.encode("Hello world").unwrap()
    );
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.starts_with("/someone/gpt2-copy/resolve/main/tokenizer.json")),
        "{:?}",
        server.requests()
    );
    // Offline and not cached: the cache error, no request.
    let e = format!(
        "{:#}",
        HfTokenizer::from_name_or_path_in("someone/other", &hub)
            .err()
            .unwrap()
    );
    assert!(e.contains("not in the Hugging Face cache"), "{e}");
}
