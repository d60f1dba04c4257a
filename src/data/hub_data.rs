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

use crate::hub::{Hub, RepoKind, RepoRef, cached_commit, snapshot_dir};
use anyhow::{Context, Result, anyhow};
use std::path::{Path, PathBuf};

/// The branch the Hub's Parquet converter writes to.
pub const PARQUET_REVISION: &str = "refs/convert/parquet";

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

    fn repo(&self) -> RepoRef {
        RepoRef::dataset(self.repo, PARQUET_REVISION)
    }
}

/// The split's Parquet files, in file-name order, as local paths, through the Hub the
/// environment describes ([`Hub::from_env`]).
pub fn split_files(src: &HubSource, split: &str) -> Result<Vec<PathBuf>> {
    split_files_with(src, split, &Hub::from_env(RepoKind::Dataset)?)
}

/// As [`split_files`], through `hub`: from its cache when offline, else listed on the Hub and
/// downloaded into the cache where missing.
pub fn split_files_with(src: &HubSource, split: &str, hub: &Hub) -> Result<Vec<PathBuf>> {
    let hub_split = src.try_split_name(split).ok_or_else(|| {
        anyhow!(
            "dataset '{}': unknown split '{split}' (train, validation, test)",
            src.dataset
        )
    })?;
    if hub.offline.is_some() {
        return cached_split(src, hub_split, &hub.cache).map_err(|looked| {
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
    download_split(src, hub_split, hub)
}

/// The split's files in the cache, or where they were looked for.
fn cached_split(
    src: &HubSource,
    hub_split: &str,
    cache: &Path,
) -> std::result::Result<Vec<PathBuf>, String> {
    let repo = src.repo();
    let Some(commit) = cached_commit(cache, &repo) else {
        // Both libraries keep the revision as a relative path under `refs/`.
        let ref_file = cache
            .join(repo.folder_name())
            .join("refs")
            .join(&repo.revision);
        return Err(format!("cannot read {}", ref_file.display()));
    };
    let config_dir = snapshot_dir(cache, &repo, &commit).join(src.config);
    for dir in [hub_split.to_string(), format!("partial-{hub_split}")] {
        let d = config_dir.join(&dir);
        // `is_file` follows the snapshot symlinks into `blobs/`; a dangling one is skipped.
        let files = super::source::list_files(&d, &["parquet"]).map_err(|e| format!("{e:#}"))?;
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

fn download_split(src: &HubSource, hub_split: &str, hub: &Hub) -> Result<Vec<PathBuf>> {
    let repo = src.repo();
    let listing = match hub.list(&repo) {
        Ok(l) => l,
        Err(e) => {
            // As huggingface_hub does on a failed connection: a complete earlier download is
            // still good, so use it rather than fail.
            if let Ok(files) = cached_split(src, hub_split, &hub.cache) {
                tracing::warn!(
                    dataset = src.dataset,
                    error = %e,
                    "cannot list the dataset on the Hub; using the cached files"
                );
                return Ok(files);
            }
            return Err(e).with_context(|| format!("dataset '{}'", src.dataset));
        }
    };
    let names: Vec<&str> = listing.files.iter().map(String::as_str).collect();
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
    let wanted: Vec<&str> = files.iter().map(String::as_str).collect();
    hub.download(&repo, &listing, &wanted)
        .with_context(|| format!("dataset '{}'", src.dataset))
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
}
