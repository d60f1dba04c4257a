//! The local cache, laid out as `huggingface_hub` lays it out: `<repo folder>/refs/<revision>`
//! holds a commit hash, `snapshots/<commit>/<file>` links into `blobs/`.

use super::RepoRef;
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub` (`huggingface_hub`'s
/// order). Without any of the three there is no cache to share: a relative path would scatter
/// one per working directory, so that is an error.
pub fn cache_dir() -> Result<PathBuf> {
    let var = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("HF_HUB_CACHE") {
        return Ok(d);
    }
    if let Some(d) = var("HF_HOME") {
        return Ok(d.join("hub"));
    }
    match var("HOME") {
        Some(home) => Ok(home.join(".cache/huggingface/hub")),
        None => bail!(
            "cannot place the Hugging Face cache: HF_HUB_CACHE, HF_HOME and HOME are all unset; set one of them"
        ),
    }
}

pub fn snapshot_dir(cache: &Path, repo: &RepoRef, commit: &str) -> PathBuf {
    cache
        .join(repo.folder_name())
        .join("snapshots")
        .join(commit)
}

/// The commit the revision stands for in the cache: the one its ref names, else the revision
/// itself when a snapshot is named after it (a commit asked for by hash has no ref).
pub fn cached_commit(cache: &Path, repo: &RepoRef) -> Option<String> {
    let root = cache.join(repo.folder_name());
    // A revision with slashes (`refs/convert/parquet`) is a path under `refs/` in both libraries.
    if let Ok(c) = std::fs::read_to_string(root.join("refs").join(&repo.revision)) {
        let c = c.trim();
        if !c.is_empty() {
            return Some(c.to_string());
        }
    }
    root.join("snapshots")
        .join(&repo.revision)
        .is_dir()
        .then(|| repo.revision.clone())
}

/// `file` of the revision's cached snapshot, when it is there and complete (`is_file` follows
/// the link into `blobs/`, and a blob exists only once its download finished).
pub fn cached_file(cache: &Path, repo: &RepoRef, file: &str) -> Option<PathBuf> {
    let commit = cached_commit(cache, repo)?;
    let p = snapshot_dir(cache, repo, &commit).join(file);
    p.is_file().then_some(p)
}

/// Points the revision's ref at `commit`; a commit revision keeps no ref, as in
/// `huggingface_hub`.
pub fn write_ref(cache: &Path, repo: &RepoRef, commit: &str) -> std::io::Result<()> {
    let path = cache
        .join(repo.folder_name())
        .join("refs")
        .join(&repo.revision);
    if repo.is_commit() {
        // hf-hub writes one for every download; drop it so the layout stays Python's.
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, commit)
}
