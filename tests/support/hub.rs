//! A Hugging Face Hub on 127.0.0.1 that answers as the real one does for what hf-hub asks: the
//! revision API (`/api/{models,datasets}/<id>/revision/<rev>`: `sha`, `siblings`), and
//! `resolve/` downloads answering `Range` with `206`, `Content-Range`, `ETag` and
//! `X-Repo-Commit`. LFS files (`*.safetensors`, `*.parquet` in an `lfs()` repo) answer with a
//! `302` to a CDN path, `X-Linked-Etag` and `X-Repo-Commit`, and the bytes come from there.
//! Errors carry the Hub's `X-Error-Code`: `RepoNotFound` (401, as the Hub answers without
//! saying whether a private repo exists), `RevisionNotFound` and `EntryNotFound` (404),
//! `GatedRepo` (401 without a token, 403 with a wrong one). Every request is logged as
//! `"<path> <range>"` before it is answered. One request per connection; the server stops when
//! dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Model,
    Dataset,
}

/// One repo at one commit, reachable by its branch name or the commit itself.
#[derive(Clone, Debug)]
pub struct Repo {
    pub kind: Kind,
    pub id: String,
    pub sha: String,
    pub branch: String,
    pub files: Vec<(String, Vec<u8>)>,
    pub lfs: bool,
    /// The token a gated repo's files need.
    pub gated: Option<String>,
}

impl Repo {
    pub fn model(id: &str, sha: &str, files: Vec<(String, Vec<u8>)>) -> Repo {
        Repo {
            kind: Kind::Model,
            id: id.to_string(),
            sha: sha.to_string(),
            branch: "main".to_string(),
            files,
            lfs: false,
            gated: None,
        }
    }

    pub fn dataset(id: &str, sha: &str, branch: &str, files: Vec<(String, Vec<u8>)>) -> Repo {
        Repo {
            kind: Kind::Dataset,
            branch: branch.to_string(),
            ..Repo::model(id, sha, files)
        }
    }

    pub fn lfs(mut self) -> Repo {
        self.lfs = true;
        self
    }

    pub fn gated(mut self, token: &str) -> Repo {
        self.gated = Some(token.to_string());
        self
    }

    fn is_lfs(&self, file: &str) -> bool {
        self.lfs && (file.ends_with(".safetensors") || file.ends_with(".parquet"))
    }
}

/// Files in a folder, as a repo's `(name, bytes)`.
pub fn folder_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

struct State {
    repos: Vec<Repo>,
    log: Mutex<Vec<String>>,
    /// The file whose transfers (not `bytes=0-0` probes) break off halfway, and how many more.
    cut: Mutex<(String, usize)>,
    /// Answer transfers with the whole file and `200`, as a server without Range support.
    ignore_range: AtomicBool,
    stop: AtomicBool,
}

pub struct HubServer {
    pub endpoint: String,
    state: Arc<State>,
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
    }
}

impl HubServer {
    pub fn start(repos: Vec<Repo>) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            repos,
            log: Mutex::new(Vec::new()),
            cut: Mutex::new((String::new(), 0)),
            ignore_range: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let s = state.clone();
        std::thread::spawn(move || {
            // A test that forgets to drop it must not leave a thread behind for long.
            let deadline = Instant::now() + Duration::from_secs(600);
            while Instant::now() < deadline && !s.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => answer(stream, &s),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        HubServer { endpoint, state }
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }

    /// The next `n` transfers of `file` send half the bytes, then close the connection.
    pub fn cut_transfers(&self, file: &str, n: usize) {
        *self.state.cut.lock().unwrap() = (file.to_string(), n);
    }

    pub fn ignore_range(&self, on: bool) {
        self.state.ignore_range.store(on, Ordering::SeqCst);
    }
}

/// The endpoint of a port that was free a moment ago: nothing listens there.
pub fn dead_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

/// hf-hub's ureq client sends every request through `ALL_PROXY` / `HTTPS_PROXY` / `HTTP_PROXY`
/// when one is set and has no `NO_PROXY` support, so a loopback server is unreachable then.
pub fn proxied() -> bool {
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

pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

struct Request {
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

fn read_request(stream: &TcpStream) -> Request {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let (mut range, mut authorization) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            } else if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    Request {
        path,
        range,
        authorization,
    }
}

enum Route<'a> {
    Api(Kind, &'a str, String),
    Resolve(Kind, &'a str, String, &'a str),
    Cdn(usize, &'a str),
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    let decode = |r: &str| r.replace("%2F", "/");
    if let Some(rest) = path.strip_prefix("/cdn/")
        && let Some((i, file)) = rest.split_once('/')
        && let Ok(i) = i.parse()
    {
        return Route::Cdn(i, file);
    }
    for (prefix, kind) in [
        ("/api/models/", Kind::Model),
        ("/api/datasets/", Kind::Dataset),
    ] {
        if let Some(rest) = path.strip_prefix(prefix)
            && let Some((id, rev)) = rest.split_once("/revision/")
        {
            return Route::Api(kind, id, decode(rev));
        }
    }
    let (kind, rest) = match path.strip_prefix("/datasets/") {
        Some(r) => (Kind::Dataset, r),
        None => (Kind::Model, path.trim_start_matches('/')),
    };
    match rest.split_once("/resolve/") {
        Some((id, tail)) => match tail.split_once('/') {
            Some((rev, file)) => Route::Resolve(kind, id, decode(rev), file),
            None => Route::Unknown,
        },
        None => Route::Unknown,
    }
}

fn answer(stream: TcpStream, s: &State) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let req = read_request(&stream);
    s.log.lock().unwrap().push(format!(
        "{} {}",
        req.path,
        req.range.clone().unwrap_or_default()
    ));
    let mut out = stream;
    let found = |kind: Kind, id: &str| {
        s.repos
            .iter()
            .enumerate()
            .find(|(_, r)| r.kind == kind && r.id == id)
    };
    let error = |out: &mut TcpStream, status: &str, code: &str| {
        respond(
            out,
            status,
            &[
                ("X-Error-Code", code.to_string()),
                ("X-Error-Message", format!("{code} for {}", req.path)),
            ],
            b"{}",
        )
    };
    match route(&req.path) {
        Route::Api(kind, id, rev) => {
            let Some((_, repo)) = found(kind, id) else {
                return error(&mut out, "401 Unauthorized", "RepoNotFound");
            };
            if rev != repo.branch && rev != repo.sha {
                return error(&mut out, "404 Not Found", "RevisionNotFound");
            }
            let siblings: Vec<serde_json::Value> = std::iter::once(".gitattributes")
                .chain(repo.files.iter().map(|(n, _)| n.as_str()))
                .map(|n| serde_json::json!({ "rfilename": n }))
                .collect();
            let body = serde_json::json!({ "id": repo.id, "sha": repo.sha, "siblings": siblings })
                .to_string();
            respond(
                &mut out,
                "200 OK",
                &[("Content-Type", "application/json".into())],
                body.as_bytes(),
            );
        }
        Route::Resolve(kind, id, rev, file) => {
            let Some((index, repo)) = found(kind, id) else {
                return error(&mut out, "401 Unauthorized", "RepoNotFound");
            };
            if rev != repo.branch && rev != repo.sha {
                return error(&mut out, "404 Not Found", "RevisionNotFound");
            }
            if let Some(token) = &repo.gated {
                match req.authorization.as_deref() {
                    None => return error(&mut out, "401 Unauthorized", "GatedRepo"),
                    Some(a) if a != format!("Bearer {token}") => {
                        return error(&mut out, "403 Forbidden", "GatedRepo");
                    }
                    Some(_) => {}
                }
            }
            let Some((name, bytes)) = repo.files.iter().find(|(n, _)| n == file) else {
                return error(&mut out, "404 Not Found", "EntryNotFound");
            };
            let etag = format!("\"etag-{:016x}\"", fnv(bytes));
            if repo.is_lfs(name) {
                // The CDN knows nothing of commits: hf-hub must take them from the redirect.
                let location = format!("{}/cdn/{index}/{name}", endpoint_of(&out));
                return respond(
                    &mut out,
                    "302 Found",
                    &[
                        ("Location", location),
                        ("X-Linked-Etag", etag),
                        ("X-Linked-Size", bytes.len().to_string()),
                        ("X-Repo-Commit", repo.sha.clone()),
                    ],
                    b"",
                );
            }
            let headers = [("ETag", etag), ("X-Repo-Commit", repo.sha.clone())];
            transfer(&mut out, s, req.range.as_deref(), name, bytes, &headers);
        }
        Route::Cdn(index, file) => {
            match s
                .repos
                .get(index)
                .and_then(|r| r.files.iter().find(|(n, _)| n == file))
            {
                Some((name, bytes)) => {
                    transfer(&mut out, s, req.range.as_deref(), name, bytes, &[])
                }
                None => respond(&mut out, "404 Not Found", &[], b"not found"),
            }
        }
        Route::Unknown => respond(&mut out, "404 Not Found", &[], b"not found"),
    }
}

fn endpoint_of(stream: &TcpStream) -> String {
    format!("http://{}", stream.local_addr().unwrap())
}

/// The requested bytes of a file: a `0-0` probe always whole; a transfer possibly cut short or
/// answered as a server without Range support would.
fn transfer(
    out: &mut TcpStream,
    s: &State,
    range: Option<&str>,
    name: &str,
    bytes: &[u8],
    headers: &[(&str, String)],
) {
    let total = bytes.len();
    let (start, end) = match range.and_then(|r| r.strip_prefix("bytes=")) {
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
    let probe = range == Some("bytes=0-0");
    let mut headers = headers.to_vec();
    if !probe && s.ignore_range.load(Ordering::SeqCst) {
        return respond(out, "200 OK", &headers, bytes);
    }
    headers.push(("Content-Range", format!("bytes {start}-{end}/{total}")));
    let body = &bytes[start..=end];
    let cut = !probe && {
        let mut c = s.cut.lock().unwrap();
        let hit = c.0 == name && c.1 > 0;
        if hit {
            c.1 -= 1;
        }
        hit
    };
    if cut {
        // Announce the whole range, send half of it, hang up.
        let _ = write_head(out, "206 Partial Content", &headers, body.len());
        let _ = out.write_all(&body[..body.len() / 2]);
        let _ = out.flush();
        return;
    }
    respond(out, "206 Partial Content", &headers, body);
}

fn write_head(
    out: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    len: usize,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())
}

/// The client may hang up early (it has what it needs); that is not the server's failure.
fn respond(out: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let _ = write_head(out, status, headers, body.len())
        .and_then(|_| out.write_all(body))
        .and_then(|_| out.flush());
}
