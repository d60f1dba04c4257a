//! hf-hub's errors as one line each, naming the repo, the revision, and what to do about it.

use super::RepoRef;
use hf_hub::api::sync::ApiError;
use std::path::Path;

/// What was being done when the error came.
pub(super) struct Attempt<'a> {
    pub repo: &'a RepoRef,
    /// `None` while listing the revision.
    pub file: Option<&'a str>,
    pub endpoint: &'a str,
    pub cache: &'a Path,
    pub has_token: bool,
}

impl Attempt<'_> {
    fn what(&self) -> String {
        match self.file {
            Some(f) => format!("{f} of '{}'", self.repo),
            None => format!("'{}'", self.repo),
        }
    }

    fn token_hint(&self) -> &'static str {
        if self.has_token {
            "the token in use (HF_TOKEN, else the token file) cannot read it: use one of an account with access"
        } else {
            "no token is set: set HF_TOKEN (or log in, which writes the token file)"
        }
    }
}

pub(super) fn explain(e: &ApiError, at: &Attempt) -> anyhow::Error {
    anyhow::anyhow!(line(e, at))
}

fn line(e: &ApiError, at: &Attempt) -> String {
    let endpoint = at.endpoint;
    match e {
        ApiError::TooManyRetries(inner) => line(inner, at),
        ApiError::RequestError(r) => match r.as_ref() {
            ureq::Error::Status(code, resp) => status(
                *code,
                resp.header("X-Error-Code"),
                resp.header("X-Error-Message"),
                at,
            ),
            ureq::Error::Transport(t) => format!(
                "cannot reach the Hugging Face Hub at {endpoint} for {} ({t}); check the network or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to work from the cache at {} alone",
                at.what(),
                at.cache.display()
            ),
        },
        ApiError::IoError(io) => format!(
            "downloading {} from {endpoint} broke off ({io}); nothing partial is used: the bytes so far stay in {}/blobs/*.part and the next run resumes from there",
            at.what(),
            at.cache.join(at.repo.folder_name()).display()
        ),
        ApiError::InvalidResume => format!(
            "the partial download of {} in {}/blobs/ is longer than the file; delete the *.part files there and run again",
            at.what(),
            at.cache.join(at.repo.folder_name()).display()
        ),
        ApiError::LockAcquisition(p) => format!(
            "another process is downloading {} (it holds {}); wait for it to finish, or delete that lock if no download runs",
            at.what(),
            p.display()
        ),
        ApiError::MissingHeader(_) | ApiError::InvalidHeader(_) | ApiError::ParseIntError(_) => {
            format!(
                "{endpoint} did not answer for {} as the Hugging Face Hub does ({e}); check HF_ENDPOINT",
                at.what()
            )
        }
    }
}

/// The Hub names the cause in `X-Error-Code`; a mirror may send the status alone.
fn status(code: u16, error_code: Option<&str>, message: Option<&str>, at: &Attempt) -> String {
    let (id, rev, endpoint) = (&at.repo.id, &at.repo.revision, at.endpoint);
    let said = message
        .map(|m| format!(": {}", m.split_whitespace().collect::<Vec<_>>().join(" ")))
        .unwrap_or_default();
    match (code, error_code) {
        (_, Some("RepoNotFound")) => format!(
            "Hugging Face repo '{id}' was not found at {endpoint} ({code}{said}) while fetching {}; check the name (owner/name), and if it is private, {}",
            at.what(),
            at.token_hint()
        ),
        (_, Some("RevisionNotFound")) => format!(
            "revision '{rev}' of '{id}' was not found at {endpoint} ({code}); pass a branch, tag or commit the repo has ({id}@<revision>), or leave @{rev} out for main"
        ),
        (_, Some("EntryNotFound")) => format!(
            "{} does not exist at {endpoint} ({code}); the repo does not hold the file mdlm needs at revision '{rev}' — check the repo id",
            at.what()
        ),
        // A gated repo, or a 401/403 without the Hub's code: a token (and, for a gated repo,
        // accepted conditions) is what is missing.
        (401 | 403, code_name) => {
            let why = match (code_name, code) {
                (Some("GatedRepo"), _) => format!(
                    "'{id}' is gated ({code}{said}), so {} cannot be fetched",
                    at.what()
                ),
                (_, 401) => format!(
                    "{} needs authentication at {endpoint} (401{said}); the repo may be private or gated",
                    at.what()
                ),
                _ => format!(
                    "access to {} was refused at {endpoint} (403{said}); the repo is private or gated",
                    at.what()
                ),
            };
            format!(
                "{why}: accept its conditions on {} if it has any, and {}",
                at.repo.page(endpoint),
                at.token_hint()
            )
        }
        (404, _) => format!(
            "{} was not found at {endpoint} (404): the repo, its revision '{rev}' or the file does not exist; check {id}@{rev}",
            at.what()
        ),
        (429, _) => format!(
            "the Hub at {endpoint} is rate-limiting requests for {} (429); wait a minute and run again (a token, HF_TOKEN, raises the limit)",
            at.what()
        ),
        (c, _) if c >= 500 => format!(
            "the Hub at {endpoint} failed on {} ({c}{said}); run again later",
            at.what()
        ),
        (c, _) => format!("the Hub at {endpoint} answered {c}{said} for {}", at.what()),
    }
}
