//! The three splits every corpus is read as; its own module so that the corpora (`corpus.rs`) and
//! the preparation built on them (`prepare.rs`) both depend on it, not on each other.

use anyhow::{Result, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    pub fn parse(name: &str) -> Result<Split> {
        Ok(match name {
            "train" => Split::Train,
            "validation" | "valid" => Split::Validation,
            "test" => Split::Test,
            other => bail!("unknown split '{other}' (train, validation, test)"),
        })
    }
}
