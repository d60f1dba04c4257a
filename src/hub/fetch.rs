//! Files of a repo revision: from the cache when they are there, else listed and downloaded
//! through hf-hub, checked, and recorded under the revision's ref.

use super::cache::{cache_dir, cached_commit, snapshot_dir, write_ref};
use super::client::{HubClient, offline_var};
use super::error::{Attempt, explain};
use super::progress::DownloadBar;
use super::{RepoKind, RepoRef};
use anyhow::{Context, Result, bail};
use hf_hub::api::sync::{Api, ApiBuilder, ApiRepo};
use std::path::{Path, PathBuf};

/// What a model repo's configuration is called.
pub const CONFIG_FILE: &str = "config.json";

/// The cache, the client, and whether the network may be used.
#[derive(Debug, Clone)]
pub struct Hub {
    pub cache: PathBuf,
    /// Why the network is off (the variable that says so), when it is.
    pub offline: Option<String>,
    pub client: HubClient,
}

/// A revision as the Hub lists it: the commit it resolves to and every file at that commit.
#[derive(Debug, Clone)]
pub struct Listing {
    pub commit: String,
    pub files: Vec<String>,
}

/// The folder holding a revision's files (`snapshots/<commit>`).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub repo: RepoRef,
    pub commit: String,
    pub dir: PathBuf,
}

impl Snapshot {
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        let p = self.dir.join(name);
        p.is_file().then_some(p)
    }
}

impl Hub {
    /// The cache and client the environment describes, offline when the variable for `kind` says
    /// so.
    pub fn from_env(kind: RepoKind) -> Result<Hub> {
        Ok(Hub {
            cache: cache_dir()?,
            offline: offline_var(kind).map(|v| format!("{v} is set")),
            client: HubClient::from_env(),
        })
    }

    /// Lookups in `cache` only.
    pub fn offline(cache: &Path) -> Hub {
        Hub {
            cache: cache.to_path_buf(),
            offline: Some("offline lookup".to_string()),
            client: HubClient::at(super::DEFAULT_ENDPOINT),
        }
    }

    /// `spec` as a local folder, else as `owner/name[@revision]`: its `config.json` first, which
    /// `check` must accept before the (large) `files` are fetched, so a wrong repo costs no
    /// weights download.
    pub fn model_dir(
        &self,
        spec: &str,
        check: impl FnOnce(&Path) -> Result<()>,
        files: &[&str],
    ) -> Result<PathBuf> {
        let p = Path::new(spec);
        if p.is_dir() {
            return Ok(p.to_path_buf());
        }
        let repo = RepoRef::parse_model(spec)?;
        let config = self.snapshot(&repo, &[CONFIG_FILE], &[])?;
        check(&config.dir.join(CONFIG_FILE))?;
        let all: Vec<&str> = std::iter::once(CONFIG_FILE)
            .chain(files.iter().copied())
            .collect();
        Ok(self.snapshot(&repo, &all, &[])?.dir)
    }

    /// As [`Hub::model_dir`] through the Hub the environment describes; a local folder needs
    /// neither a cache nor a network.
    pub fn model_dir_from_env(
        spec: &str,
        check: impl FnOnce(&Path) -> Result<()>,
        files: &[&str],
    ) -> Result<PathBuf> {
        if Path::new(spec).is_dir() {
            return Ok(PathBuf::from(spec));
        }
        Hub::from_env(RepoKind::Model)?.model_dir(spec, check, files)
    }

    /// `cache`, downloading into it through `client` where needed.
    pub fn online(cache: &Path, client: HubClient) -> Hub {
        Hub {
            cache: cache.to_path_buf(),
            offline: None,
            client,
        }
    }

    /// The revision's snapshot holding every `required` file, and each `optional` one the repo
    /// has. A snapshot already cached with all of `required` is used without asking the Hub (so a
    /// second run makes no request); otherwise the revision is listed and what is missing
    /// downloaded.
    pub fn snapshot(
        &self,
        repo: &RepoRef,
        required: &[&str],
        optional: &[&str],
    ) -> Result<Snapshot> {
        if let Some(commit) = cached_commit(&self.cache, repo) {
            let dir = snapshot_dir(&self.cache, repo, &commit);
            if required.iter().all(|f| dir.join(f).is_file()) {
                tracing::debug!(repo = %repo, dir = %dir.display(), "using the cached snapshot");
                return Ok(Snapshot {
                    repo: repo.clone(),
                    commit,
                    dir,
                });
            }
        }
        if let Some(why) = &self.offline {
            let one = required.len() == 1;
            bail!(
                "{} of '{repo}' {} not in the Hugging Face cache (looked in {}/snapshots/<commit of {}>; the cache is HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub) and {why}, so nothing is downloaded; run once with the network to download {}, or pass a path to a local copy",
                required.join(" and "),
                if one { "is" } else { "are" },
                self.cache.join(repo.folder_name()).display(),
                repo.revision,
                if one { "it" } else { "them" },
            );
        }
        let listing = self.list(repo)?;
        let absent: Vec<&str> = required
            .iter()
            .copied()
            .filter(|f| !listing.files.iter().any(|l| l == f))
            .collect();
        if !absent.is_empty() {
            bail!(
                "'{repo}' (commit {}) has no {}; it holds: {} — check the repo id and revision",
                short(&listing.commit),
                absent.join(" and "),
                if listing.files.is_empty() {
                    "nothing".to_string()
                } else {
                    listing.files.join(", ")
                }
            );
        }
        let wanted: Vec<&str> = required
            .iter()
            .chain(
                optional
                    .iter()
                    .filter(|f| listing.files.iter().any(|l| l == *f)),
            )
            .copied()
            .collect();
        self.download(repo, &listing, &wanted)?;
        Ok(Snapshot {
            repo: repo.clone(),
            dir: snapshot_dir(&self.cache, repo, &listing.commit),
            commit: listing.commit,
        })
    }

    /// The revision's commit and files, from the Hub.
    pub fn list(&self, repo: &RepoRef) -> Result<Listing> {
        let info = self
            .api()?
            .repo(repo.hf())
            .info()
            .map_err(|e| explain(&e, &self.attempt(repo, None)))?;
        Ok(Listing {
            commit: info.sha,
            files: info.siblings.into_iter().map(|s| s.rfilename).collect(),
        })
    }

    /// `files` of the listed commit, downloaded where the cache lacks them; then the revision's
    /// ref names that commit, so offline runs find them.
    pub fn download(
        &self,
        repo: &RepoRef,
        listing: &Listing,
        files: &[&str],
    ) -> Result<Vec<PathBuf>> {
        let api = self.api()?;
        let handle = api.repo(repo.hf());
        let snap = snapshot_dir(&self.cache, repo, &listing.commit);
        let mut paths = Vec::with_capacity(files.len());
        for (i, f) in files.iter().enumerate() {
            // The listed commit's copy only: a stale ref would mix commits otherwise.
            let cached = snap.join(f);
            if cached.is_file() {
                paths.push(cached);
                continue;
            }
            tracing::info!(repo = %repo, file = %f, "downloading {}/{} from {}", i + 1, files.len(), self.client.endpoint);
            paths.push(self.download_one(&handle, repo, &cached, f)?);
        }
        write_ref(&self.cache, repo, &listing.commit)
            .with_context(|| format!("writing the ref of '{repo}' in {}", self.cache.display()))?;
        Ok(paths)
    }

    /// One file into `expected` (its place in the listed commit's snapshot), or one line on why
    /// not. The file is checked against the size the transfer announced: a server that ignores
    /// a resumed transfer's `Range` would otherwise leave the start of the file twice.
    fn download_one(
        &self,
        handle: &ApiRepo,
        repo: &RepoRef,
        expected: &Path,
        file: &str,
    ) -> Result<PathBuf> {
        let bar = DownloadBar::new(file, self.client.progress);
        let got = handle.download_with_progress(file, bar.clone());
        let rate = bar.done();
        let got = got.map_err(|e| explain(&e, &self.attempt(repo, Some(file))))?;
        let len = std::fs::metadata(&got)
            .with_context(|| format!("reading {}", got.display()))?
            .len();
        if len != bar.size() {
            let blob = std::fs::canonicalize(&got);
            let _ = std::fs::remove_file(&got);
            if let Ok(b) = blob {
                let _ = std::fs::remove_file(b);
            }
            bail!(
                "{file} of '{repo}' came out {len} bytes long where {} announced {}; the broken copy was deleted, run again (a mirror that ignores Range requests cannot resume)",
                self.client.endpoint,
                bar.size()
            );
        }
        if got != expected {
            bail!(
                "'{repo}' moved to another commit while downloading ({} was listed, {} was served); run again",
                expected.display(),
                got.display()
            );
        }
        tracing::info!(
            repo = %repo,
            file,
            bytes = len,
            "downloaded {file} ({} at {}/s)",
            DownloadBar::human(len),
            DownloadBar::human(rate as u64)
        );
        Ok(got)
    }

    fn api(&self) -> Result<Api> {
        ApiBuilder::from_cache(hf_hub::Cache::new(self.cache.clone()))
            .with_endpoint(self.client.endpoint.clone())
            .with_token(self.client.token.clone())
            .with_retries(self.client.retries)
            .with_progress(false)
            .with_user_agent("mdlm", env!("CARGO_PKG_VERSION"))
            .build()
            .context("building the Hugging Face Hub client")
    }

    fn attempt<'a>(&'a self, repo: &'a RepoRef, file: Option<&'a str>) -> Attempt<'a> {
        Attempt {
            repo,
            file,
            endpoint: &self.client.endpoint,
            cache: &self.cache,
            has_token: self.client.token.is_some(),
        }
    }
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}
