//! A dataset's Parquet files from the Hugging Face Hub, through the Hub's automatic Parquet
//! conversion: revision `refs/convert/parquet`, files `<config>/<split>/NNNN.parquet`, or
//! `<config>/partial-<split>/` when the converter stopped early on a large split (it then holds
//! only the first few GB of rows).
//!
//! Files live in the hf-hub cache layout that Python's `huggingface_hub` also writes:
//! `datasets--<owner>--<name>/refs/refs/convert/parquet` holds the commit hash (the revision's
//! slashes become folders, as in both libraries), and
//! `snapshots/<commit>/<config>/<split>/*.parquet` the files. So a cache filled by
//! `huggingface-cli download --repo-type dataset --revision refs/convert/parquet ...` works
//! offline here, and one filled here works for Python.

use anyhow::{Context, Result, anyhow};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// The branch the Hub's Parquet converter writes to.
pub const PARQUET_REVISION: &str = "refs/convert/parquet";

/// Where the Hub is unless `HF_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where one mdlm dataset lives on the Hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubSource {
    /// The mdlm name it was looked up by, for messages.
    pub dataset: &'static str,
    pub repo: &'static str,
    pub config: &'static str,
    /// The text column of the Parquet files.
    pub column: &'static str,
    /// The Hub split read for each mdlm split.
    pub train: &'static str,
    pub validation: &'static str,
    pub test: &'static str,
}

/// mdlm names with a Hub source.
pub const HUB_DATASETS: [&str; 11] = [
    "wikitext103",
    "wikitext2",
    "ptb",
    "lambada",
    "ag_news",
    "lm1b",
    "openwebtext",
    "openwebtext-train",
    "openwebtext-valid",
    "scientific_papers_arxiv",
    "scientific_papers_pubmed",
];

const fn source(
    dataset: &'static str,
    repo: &'static str,
    config: &'static str,
    column: &'static str,
    [train, validation, test]: [&'static str; 3],
) -> HubSource {
    HubSource {
        dataset,
        repo,
        config,
        column,
        train,
        validation,
        test,
    }
}

const ALL: [&str; 3] = ["train", "validation", "test"];

/// The Hub source of an mdlm dataset name, `None` for a name without one (see [`HUB_DATASETS`]).
pub fn hub_source(dataset: &str) -> Option<HubSource> {
    Some(match dataset {
        "wikitext103" => source(
            "wikitext103",
            "Salesforce/wikitext",
            "wikitext-103-raw-v1",
            "text",
            ALL,
        ),
        "wikitext2" => source(
            "wikitext2",
            "Salesforce/wikitext",
            "wikitext-2-raw-v1",
            "text",
            ALL,
        ),
        "ptb" => source(
            "ptb",
            "ptb-text-only/ptb_text_only",
            "penn_treebank",
            "sentence",
            ALL,
        ),
        // The reference only evaluates on LAMBADA, whose one split is test.
        "lambada" => source(
            "lambada",
            "EleutherAI/lambada_openai",
            "default",
            "text",
            ["test"; 3],
        ),
        // No validation split on the Hub: the reference validates on test. `text` is title and
        // description already joined by the dataset.
        "ag_news" => source(
            "ag_news",
            "fancyzhx/ag_news",
            "default",
            "text",
            ["train", "test", "test"],
        ),
        // The canonical `lm1b` moved to this repo; its converted branch has `plain_text/train`
        // (9 files) and `plain_text/test`, seen on the Hub's file browser, not fetched from here.
        "lm1b" => source(
            "lm1b",
            "billion-word-benchmark/lm1b",
            "plain_text",
            "text",
            ["train", "test", "test"],
        ),
        // OpenWebText has only a train split; the reference's validation set is its last 100,000
        // documents, which the caller holds out, not this table. The converted split may be
        // `partial-train` (the full corpus exceeds the converter's size limit).
        "openwebtext" | "openwebtext-train" | "openwebtext-valid" => source(
            match dataset {
                "openwebtext-train" => "openwebtext-train",
                "openwebtext-valid" => "openwebtext-valid",
                _ => "openwebtext",
            },
            "Skylion007/openwebtext",
            "plain_text",
            "text",
            ["train"; 3],
        ),
        // Converted only partially (`partial-train`, ...), by the converter's commit history.
        "scientific_papers_arxiv" => source(
            "scientific_papers_arxiv",
            "armanc/scientific_papers",
            "arxiv",
            "article",
            ALL,
        ),
        "scientific_papers_pubmed" => source(
            "scientific_papers_pubmed",
            "armanc/scientific_papers",
            "pubmed",
            "article",
            ALL,
        ),
        _ => return None,
    })
}

impl HubSource {
    /// The Hub split for an mdlm split (`train`, `validation` or `valid`, `test`), `None` for
    /// another name.
    pub fn try_split_name(&self, split: &str) -> Option<&'static str> {
        match split {
            "train" => Some(self.train),
            "validation" | "valid" => Some(self.validation),
            "test" => Some(self.test),
            _ => None,
        }
    }

    /// As [`HubSource::try_split_name`]; another split name is a caller bug and panics.
    pub fn split_name(&self, split: &str) -> &'static str {
        self.try_split_name(split)
            .unwrap_or_else(|| panic!("split '{split}' is not one of train, validation, test"))
    }

    fn repo(&self) -> Repo {
        Repo::with_revision(
            self.repo.to_string(),
            RepoType::Dataset,
            PARQUET_REVISION.to_string(),
        )
    }
}

/// `huggingface_hub`'s reading of a boolean environment variable.
pub fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

/// `HF_HUB_OFFLINE` or `HF_DATASETS_OFFLINE` is truthy.
pub fn offline_from_env() -> bool {
    ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| is_truthy(&v)))
}

/// How to reach the Hub: the endpoint, an access token, and whether to draw download bars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubClient {
    pub endpoint: String,
    pub token: Option<String>,
    pub progress: bool,
}

impl HubClient {
    /// `HF_ENDPOINT` (else the public Hub) and `HF_TOKEN` (else hf-hub reads the token file next
    /// to the cache, `$HF_HOME/token`).
    pub fn from_env() -> HubClient {
        let non_empty = |k| std::env::var(k).ok().filter(|v| !v.is_empty());
        HubClient {
            endpoint: non_empty("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            token: non_empty("HF_TOKEN"),
            progress: true,
        }
    }

    /// A client for `endpoint` without a token or bars (tests, local mirrors).
    pub fn at(endpoint: &str) -> HubClient {
        HubClient {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: None,
            progress: false,
        }
    }
}

/// The split's Parquet files, in file-name order, as local paths: from the hf-hub cache at `cache`
/// (usually [`super::hf::hub_cache_dir`]) when `offline`, else listed on the Hub and downloaded
/// into that cache where missing. The Hub is reached as [`HubClient::from_env`] says.
pub fn split_files(
    src: &HubSource,
    split: &str,
    cache: &Path,
    offline: bool,
) -> Result<Vec<PathBuf>> {
    split_files_with(src, split, cache, offline, &HubClient::from_env())
}

/// As [`split_files`], with the Hub client given.
pub fn split_files_with(
    src: &HubSource,
    split: &str,
    cache: &Path,
    offline: bool,
    client: &HubClient,
) -> Result<Vec<PathBuf>> {
    let hub_split = src.try_split_name(split).ok_or_else(|| {
        anyhow!(
            "dataset '{}': unknown split '{split}' (train, validation, test)",
            src.dataset
        )
    })?;
    if offline {
        return cached_split(src, hub_split, cache).map_err(|looked| {
            anyhow!(
                "dataset '{}' (Hub repo {}, revision {PARQUET_REVISION}, split {}/{hub_split}) is not in the Hugging Face cache: {looked}; unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE to download it, put the converted Parquet files there (`huggingface-cli download --repo-type dataset --revision {PARQUET_REVISION} {} --include '{}/*{hub_split}/*'`), or use local raw files",
                src.dataset,
                src.repo,
                src.config,
                src.repo,
                src.config,
            )
        });
    }
    download_split(src, hub_split, cache, client)
}

/// The split's files in the cache, or where they were looked for.
fn cached_split(
    src: &HubSource,
    hub_split: &str,
    cache: &Path,
) -> std::result::Result<Vec<PathBuf>, String> {
    let repo = src.repo();
    let root = cache.join(repo.folder_name());
    // hf-hub and huggingface_hub both push the revision as a relative path under `refs/`.
    let ref_file = root.join("refs").join(repo.revision());
    let commit = match std::fs::read_to_string(&ref_file) {
        Ok(c) => c.trim().to_string(),
        Err(e) => return Err(format!("cannot read {} ({e})", ref_file.display())),
    };
    let config_dir = root.join("snapshots").join(&commit).join(src.config);
    for dir in [hub_split.to_string(), format!("partial-{hub_split}")] {
        let d = config_dir.join(&dir);
        // `is_file` follows the snapshot symlinks into `blobs/`; a dangling one is skipped.
        let files = super::source::list_files(&d, &["parquet"]);
        if !files.is_empty() {
            if dir.starts_with("partial-") {
                tracing::warn!(
                    dataset = src.dataset,
                    dir = %d.display(),
                    "only a partial conversion of the split is cached (the Hub converted the first rows only)"
                );
            }
            return Ok(files);
        }
    }
    Err(format!(
        "no *.parquet in {0}/{hub_split}/ or {0}/partial-{hub_split}/",
        config_dir.display()
    ))
}

fn download_split(
    src: &HubSource,
    hub_split: &str,
    cache: &Path,
    client: &HubClient,
) -> Result<Vec<PathBuf>> {
    let api = ApiBuilder::from_cache(Cache::new(cache.to_path_buf()))
        .with_endpoint(client.endpoint.clone())
        .with_progress(client.progress)
        .with_retries(3);
    let api = match &client.token {
        Some(t) => api.with_token(Some(t.clone())),
        None => api,
    };
    let api = api.build().context("building the Hub client")?;
    let repo = api.repo(src.repo());
    let info = match repo.info() {
        Ok(info) => info,
        Err(e) => {
            // As huggingface_hub does on a failed connection: a complete earlier download is
            // still good, so use it rather than fail.
            if let Ok(files) = cached_split(src, hub_split, cache) {
                tracing::warn!(
                    dataset = src.dataset,
                    error = %e,
                    "cannot list the dataset on the Hub; using the cached files"
                );
                return Ok(files);
            }
            return Err(anyhow!(e)).with_context(|| {
                format!(
                    "listing dataset '{}' (Hub repo {}, revision {PARQUET_REVISION}) at {}; check the network or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 and provide the files in the cache at {}",
                    src.dataset,
                    src.repo,
                    client.endpoint,
                    cache.display()
                )
            });
        }
    };
    let names: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let files = pick_split_files(&names, src.config, hub_split).ok_or_else(|| {
        let mut dirs: Vec<&str> = names
            .iter()
            .filter_map(|n| n.rsplit_once('/').map(|(d, _)| d))
            .collect();
        dirs.sort_unstable();
        dirs.dedup();
        anyhow!(
            "dataset '{}': Hub repo {} at revision {PARQUET_REVISION} has no {}/{hub_split}/*.parquet or {}/partial-{hub_split}/*.parquet (folders there: {})",
            src.dataset,
            src.repo,
            src.config,
            src.config,
            if dirs.is_empty() { "none".to_string() } else { dirs.join(", ") }
        )
    })?;
    if files.first().is_some_and(|f| f.contains("/partial-")) {
        tracing::warn!(
            dataset = src.dataset,
            repo = src.repo,
            "the Hub converted only the first rows of this split (partial-{hub_split})"
        );
    }
    let snapshot = cache
        .join(src.repo().folder_name())
        .join("snapshots")
        .join(&info.sha);
    let mut paths = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        // Files of the listed commit only: a stale ref would let hf-hub's `get` mix commits.
        let cached = snapshot.join(f);
        if cached.is_file() {
            paths.push(cached);
            continue;
        }
        tracing::info!(
            dataset = src.dataset,
            file = %f,
            "downloading {}/{} from {}",
            i + 1,
            files.len(),
            src.repo
        );
        let p = repo.download(f).with_context(|| {
            format!(
                "downloading {f} of Hub repo {} (revision {PARQUET_REVISION}) from {} into {}",
                src.repo,
                client.endpoint,
                cache.display()
            )
        })?;
        paths.push(p);
    }
    // Offline runs follow the ref; point it at the commit these files came from.
    Cache::new(cache.to_path_buf())
        .repo(src.repo())
        .create_ref(&info.sha)
        .with_context(|| format!("writing the {PARQUET_REVISION} ref in {}", cache.display()))?;
    Ok(paths)
}

/// The split's files among a revision's file names, in name order: the full `<config>/<split>/`
/// when present, else `<config>/partial-<split>/`.
pub fn pick_split_files(names: &[&str], config: &str, split: &str) -> Option<Vec<String>> {
    for dir in [split.to_string(), format!("partial-{split}")] {
        let prefix = format!("{config}/{dir}/");
        let mut files: Vec<String> = names
            .iter()
            .filter(|n| {
                n.strip_prefix(&prefix)
                    .is_some_and(|rest| !rest.contains('/') && rest.ends_with(".parquet"))
            })
            .map(|n| n.to_string())
            .collect();
        if !files.is_empty() {
            files.sort();
            return Some(files);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_has_a_source_with_its_own_name() {
        for name in HUB_DATASETS {
            let s = hub_source(name).unwrap_or_else(|| panic!("{name} has no source"));
            assert_eq!(s.dataset, name);
        }
        assert_eq!(hub_source("shakespeare"), None);
    }

    #[test]
    fn split_mapping_follows_the_reference() {
        let ag = hub_source("ag_news").unwrap();
        assert_eq!(ag.split_name("train"), "train");
        assert_eq!(ag.split_name("validation"), "test");
        let lambada = hub_source("lambada").unwrap();
        assert_eq!(lambada.split_name("train"), "test");
        let wt = hub_source("wikitext103").unwrap();
        assert_eq!(wt.split_name("valid"), "validation");
        assert_eq!(wt.try_split_name("dev"), None);
        assert_eq!(hub_source("ptb").unwrap().column, "sentence");
    }

    #[test]
    fn full_split_is_preferred_over_partial_and_sorted() {
        let names = [
            "cfg/partial-train/0000.parquet",
            "cfg/train/0001.parquet",
            "cfg/train/0000.parquet",
            "cfg/train/nested/0000.parquet",
            "cfg/train/README.md",
            "cfg/trainx/0000.parquet",
            "other/train/0000.parquet",
        ];
        assert_eq!(
            pick_split_files(&names, "cfg", "train").unwrap(),
            ["cfg/train/0000.parquet", "cfg/train/0001.parquet"]
        );
        let partial = [
            "cfg/partial-test/0001.parquet",
            "cfg/partial-test/0000.parquet",
        ];
        assert_eq!(
            pick_split_files(&partial, "cfg", "test").unwrap(),
            [
                "cfg/partial-test/0000.parquet",
                "cfg/partial-test/0001.parquet"
            ]
        );
        assert_eq!(pick_split_files(&names, "cfg", "validation"), None);
    }

    #[test]
    fn truthy_values_are_huggingface_hubs() {
        for v in ["1", "true", "TRUE", "yes", "on", " 1 "] {
            assert!(is_truthy(v), "{v}");
        }
        for v in ["", "0", "false", "no", "off", "2"] {
            assert!(!is_truthy(v), "{v}");
        }
    }
}
