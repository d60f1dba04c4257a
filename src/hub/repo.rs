//! Which repo, of which kind, at which revision: `owner/name[@revision]` as users write it.

use anyhow::{Result, bail};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

/// A repo at a revision (a branch, a tag or a commit; `main` unless given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoRef {
    pub id: String,
    pub kind: RepoKind,
    pub revision: String,
}

impl RepoRef {
    pub fn model(id: &str) -> RepoRef {
        RepoRef {
            id: id.to_string(),
            kind: RepoKind::Model,
            revision: "main".to_string(),
        }
    }

    pub fn dataset(id: &str, revision: &str) -> RepoRef {
        RepoRef {
            id: id.to_string(),
            kind: RepoKind::Dataset,
            revision: revision.to_string(),
        }
    }

    /// `owner/name` or `owner/name@revision`; a legacy id without an owner (`gpt2-large`) too.
    pub fn parse_model(spec: &str) -> Result<RepoRef> {
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) => (id, Some(rev)),
            None => (spec, None),
        };
        if !is_repo_id(id)
            || revision.is_some_and(|r| r.is_empty() || r.contains(char::is_whitespace))
        {
            bail!(
                "'{spec}' is neither an existing path nor a Hugging Face repo id (owner/name, optionally @revision)"
            );
        }
        let mut r = RepoRef::model(id);
        if let Some(rev) = revision {
            r.revision = rev.to_string();
        }
        Ok(r)
    }

    /// A full commit hash: the Hub serves it as is, and caches keep no ref for it.
    pub fn is_commit(&self) -> bool {
        self.revision.len() == 40 && self.revision.bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// hf-hub's handle for the same repo and revision.
    pub fn hf(&self) -> hf_hub::Repo {
        let kind = match self.kind {
            RepoKind::Model => hf_hub::RepoType::Model,
            RepoKind::Dataset => hf_hub::RepoType::Dataset,
        };
        hf_hub::Repo::with_revision(self.id.clone(), kind, self.revision.clone())
    }

    /// `models--owner--name`: the repo's folder in the cache.
    pub fn folder_name(&self) -> String {
        self.hf().folder_name()
    }

    /// The repo's page on the Hub at `endpoint`.
    pub fn page(&self, endpoint: &str) -> String {
        match self.kind {
            RepoKind::Model => format!("{endpoint}/{}", self.id),
            RepoKind::Dataset => format!("{endpoint}/datasets/{}", self.id),
        }
    }
}

impl fmt::Display for RepoRef {
    /// `owner/name@revision`, as it would be passed back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.revision)
    }
}

/// The Hub's repo names: one or two parts of letters, digits, `-`, `_` and `.`, neither starting
/// nor ending with `-` or `.`, without `--` or `..`.
fn is_repo_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() <= 2
        && id.len() <= 96
        && !id.contains("--")
        && !id.contains("..")
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_with_and_without_revision() {
        let r = RepoRef::parse_model("kuleshov-group/mdlm-owt").unwrap();
        assert_eq!(
            (r.id.as_str(), r.revision.as_str()),
            ("kuleshov-group/mdlm-owt", "main")
        );
        let r = RepoRef::parse_model("kuleshov-group/mdlm-owt@v1.0").unwrap();
        assert_eq!(r.revision, "v1.0");
        assert!(!r.is_commit());
        let c = "0123456789abcdef0123456789abcdef01234567";
        assert!(
            RepoRef::parse_model(&format!("a/b@{c}"))
                .unwrap()
                .is_commit()
        );
        assert_eq!(RepoRef::parse_model("gpt2-large").unwrap().id, "gpt2-large");
        assert_eq!(r.folder_name(), "models--kuleshov-group--mdlm-owt");
        for bad in [
            "a/b/c", "/a", "a/", "a@", "", "a b/c", "-a/b", "a/b.", "a--b/c", "x/y@a b",
        ] {
            assert!(RepoRef::parse_model(bad).is_err(), "{bad}");
        }
    }
}
