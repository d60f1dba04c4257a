//! Hub Parquet files: resolved from a hf-hub cache layout offline, and downloaded through hf-hub
//! from a small HTTP server on 127.0.0.1 that answers as the Hub does.

mod support;

use mdlm::data::hub_data::{HubClient, HubSource, PARQUET_REVISION, hub_source, split_files_with};
use mdlm::data::parquet::read_text_column;
use parquet::basic::Compression;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::TempDir;
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
    let offline = HubClient::at("http://127.0.0.1:9");
    let train = split_files_with(&src, "train", &hub, true, &offline).unwrap();
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
    let valid = split_files_with(&src, "validation", &hub, true, &offline).unwrap();
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
    let c = HubClient::at("http://127.0.0.1:9");
    let train = split_files_with(&src, "train", &hub, true, &c).unwrap();
    assert_eq!(read_files(&train, "article"), full);
    let t = split_files_with(&src, "test", &hub, true, &c).unwrap();
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
    let c = HubClient::at("http://127.0.0.1:9");
    let err = format!(
        "{:#}",
        split_files_with(&src, "validation", &hub, true, &c).unwrap_err()
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
        split_files_with(&src, "validation", &hub, true, &c).unwrap_err()
    );
    assert!(
        err.contains(&format!("snapshots/{COMMIT}/penn_treebank/validation/")),
        "{err}"
    );
}

/// Serves one dataset repo at `refs/convert/parquet` the way hf-hub's sync client reads it:
/// the revision API (`sha`, `siblings`) and `resolve/` downloads answering `Range` requests with
/// `206`, `Content-Range`, `ETag` and `X-Repo-Commit`. With `lfs`, `resolve/` answers as the Hub
/// does for LFS files: a `302` to another URL (standing in for the CDN) with `X-Linked-Etag`
/// and `X-Repo-Commit`, and the bytes come from there. Loopback only; it stops when dropped, after
/// `max_requests`, or after 60 s, whichever comes first.
struct HubServer {
    endpoint: String,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl HubServer {
    fn start(
        repo: &str,
        sha: &str,
        files: Vec<(String, Vec<u8>)>,
        max_requests: usize,
        lfs: bool,
    ) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let cdn = format!("{endpoint}/cdn/");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (repo, sha, log2, stop2) =
            (repo.to_string(), sha.to_string(), log.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut served = 0;
            while served < max_requests
                && Instant::now() < deadline
                && !stop2.load(Ordering::SeqCst)
            {
                match listener.accept() {
                    Ok((stream, _)) => {
                        served += 1;
                        answer(stream, &repo, &sha, &files, lfs.then_some(&cdn), &log2);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        HubServer {
            endpoint,
            log,
            stop,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// Answers one request (the connection is closed after it), logging `"<path> <range>"` before
/// responding: the client may act on the response before this thread could log it afterwards.
fn answer(
    stream: TcpStream,
    repo: &str,
    sha: &str,
    files: &[(String, Vec<u8>)],
    cdn: Option<&str>,
    log: &Mutex<Vec<String>>,
) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    log.lock()
        .unwrap()
        .push(format!("{path} {}", range.clone().unwrap_or_default()));
    let rev = PARQUET_REVISION.replace('/', "%2F");
    let api = format!("/api/datasets/{repo}/revision/{rev}");
    // Dataset files at the converted branch; model files (tokenizers) at `main`.
    let dataset_resolve = format!("/datasets/{repo}/resolve/{rev}/");
    let model_resolve = format!("/{repo}/resolve/main/");
    let resolve = if path.starts_with(&model_resolve) {
        model_resolve
    } else {
        dataset_resolve
    };
    let mut out = stream;
    if path == api {
        let siblings: Vec<serde_json::Value> = std::iter::once(".gitattributes")
            .chain(files.iter().map(|(n, _)| n.as_str()))
            .map(|n| serde_json::json!({ "rfilename": n }))
            .collect();
        let body = serde_json::json!({ "id": repo, "sha": sha, "siblings": siblings }).to_string();
        respond(
            &mut out,
            "200 OK",
            &[("Content-Type", "application/json".into())],
            body.as_bytes(),
        );
    } else if let (Some(cdn), Some((name, bytes))) = (
        cdn,
        path.strip_prefix(&resolve)
            .and_then(|f| files.iter().find(|(n, _)| n == f)),
    ) {
        respond(
            &mut out,
            "302 Found",
            &[
                ("Location", format!("{cdn}{name}")),
                ("X-Linked-Etag", format!("\"etag-{:016x}\"", fnv(bytes))),
                ("X-Repo-Commit", sha.to_string()),
            ],
            b"",
        );
    } else if let Some((_, bytes)) = path
        .strip_prefix(&resolve)
        .or_else(|| path.strip_prefix("/cdn/").filter(|_| cdn.is_some()))
        .and_then(|f| files.iter().find(|(n, _)| n == f))
    {
        let total = bytes.len();
        let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
            Some(r) => {
                let (a, b) = r.split_once('-').unwrap();
                let a: usize = a.parse().unwrap();
                let b = if b.is_empty() {
                    total - 1
                } else {
                    b.parse::<usize>().unwrap().min(total - 1)
                };
                (a, b)
            }
            None => (0, total - 1),
        };
        let mut headers = vec![("Content-Range", format!("bytes {start}-{end}/{total}"))];
        // The CDN knows nothing of commits: hf-hub must take them from the redirect.
        if path.starts_with(&resolve) {
            headers.push(("ETag", format!("\"etag-{:016x}\"", fnv(bytes))));
            headers.push(("X-Repo-Commit", sha.to_string()));
        }
        respond(
            &mut out,
            "206 Partial Content",
            &headers,
            &bytes[start..=end],
        );
    } else {
        respond(&mut out, "404 Not Found", &[], b"not found");
    }
}

fn respond(out: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes()).unwrap();
    out.write_all(body).unwrap();
    out.flush().unwrap();
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// hf-hub's ureq client sends every request through `ALL_PROXY` / `HTTPS_PROXY` / `HTTP_PROXY`
/// when one is set and has no `NO_PROXY` support, so a loopback server is unreachable then.
fn proxied() -> bool {
    let set = [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ]
    .into_iter()
    .find(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()));
    if let Some(k) = set {
        eprintln!("skipped: {k} is set and hf-hub would send loopback requests through it");
    }
    set.is_some()
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
    let server = HubServer::start(src.repo, COMMIT, files, 20, false);
    let client = HubClient::at(&server.endpoint);

    let train = split_files_with(&src, "train", &hub, false, &client).unwrap();
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
    let again = split_files_with(&src, "train", &hub, false, &client).unwrap();
    assert_eq!(again, train);
    let log = server.requests();
    assert_eq!((log.len(), downloads(&log)), (6, 4), "{log:#?}");

    // Offline, the cache hf-hub wrote is found through its ref; lm1b validates on test, which
    // was never downloaded.
    let offline = split_files_with(&src, "train", &hub, true, &client).unwrap();
    assert_eq!(offline, train);
    assert!(split_files_with(&src, "validation", &hub, true, &client).is_err());
    let valid = split_files_with(&src, "validation", &hub, false, &client).unwrap();
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
    let server = HubServer::start(owt().repo, COMMIT, files, 10, true);
    let client = HubClient::at(&server.endpoint);
    let got = split_files_with(&owt(), "train", &hub, false, &client).unwrap();
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
    let server = HubServer::start(owt().repo, COMMIT, files, 10, false);
    let err = format!(
        "{:#}",
        split_files_with(
            &owt(),
            "train",
            &hub,
            false,
            &HubClient::at(&server.endpoint)
        )
        .unwrap_err()
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
    // A port that was just free: nothing listens there.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let client = HubClient::at(&dead);
    let err = format!(
        "{:#}",
        split_files_with(&owt(), "train", &hub, false, &client).unwrap_err()
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
    let got = split_files_with(&owt(), "train", &hub, false, &client).unwrap();
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
    let server = HubServer::start("someone/gpt2-copy", COMMIT, files, 10, false);
    let client = HubClient::at(&server.endpoint);
    let t = HfTokenizer::from_hub("someone/gpt2-copy", &hub, false, &client).unwrap();
    assert_eq!(t.vocab_size(), 50257);
    // The config was fetched too: its pad token replaces the added [PAD].
    assert_eq!(t.pad_id(), 50256);
    let offline = HfTokenizer::from_hub("someone/gpt2-copy", &hub, true, &client).unwrap();
    assert_eq!(offline.encode("Hello world"), t.encode("Hello world"));
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
        HfTokenizer::from_hub("someone/other", &hub, true, &client)
            .err()
            .unwrap()
    );
    assert!(e.contains("not in the Hugging Face cache"), "{e}");
}
