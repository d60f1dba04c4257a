//! Every file under `configs/`, compiled into the binary so `mdlm` runs from any directory.
//! Keep this list in step with the folder: the test `embedded_matches_disk` fails otherwise.

/// `(path relative to configs/, contents)`, sorted by path.
pub(crate) const FILES: &[(&str, &str)] = &[
    (
        "callbacks/checkpoint_every_n_steps.yaml",
        include_str!("../../configs/callbacks/checkpoint_every_n_steps.yaml"),
    ),
    (
        "callbacks/checkpoint_monitor.yaml",
        include_str!("../../configs/callbacks/checkpoint_monitor.yaml"),
    ),
    (
        "callbacks/learning_rate_monitor.yaml",
        include_str!("../../configs/callbacks/learning_rate_monitor.yaml"),
    ),
    ("config.yaml", include_str!("../../configs/config.yaml")),
    (
        "data/ag_news.yaml",
        include_str!("../../configs/data/ag_news.yaml"),
    ),
    (
        "data/lambada.yaml",
        include_str!("../../configs/data/lambada.yaml"),
    ),
    (
        "data/lm1b-gpt2.yaml",
        include_str!("../../configs/data/lm1b-gpt2.yaml"),
    ),
    (
        "data/lm1b-streaming.yaml",
        include_str!("../../configs/data/lm1b-streaming.yaml"),
    ),
    (
        "data/lm1b.yaml",
        include_str!("../../configs/data/lm1b.yaml"),
    ),
    (
        "data/openwebtext-split.yaml",
        include_str!("../../configs/data/openwebtext-split.yaml"),
    ),
    (
        "data/openwebtext-streaming.yaml",
        include_str!("../../configs/data/openwebtext-streaming.yaml"),
    ),
    (
        "data/openwebtext.yaml",
        include_str!("../../configs/data/openwebtext.yaml"),
    ),
    ("data/ptb.yaml", include_str!("../../configs/data/ptb.yaml")),
    (
        "data/scientific_papers_arxiv.yaml",
        include_str!("../../configs/data/scientific_papers_arxiv.yaml"),
    ),
    (
        "data/scientific_papers_pubmed.yaml",
        include_str!("../../configs/data/scientific_papers_pubmed.yaml"),
    ),
    (
        "data/shakespeare.yaml",
        include_str!("../../configs/data/shakespeare.yaml"),
    ),
    (
        "data/squad.yaml",
        include_str!("../../configs/data/squad.yaml"),
    ),
    (
        "data/text8-crop.yaml",
        include_str!("../../configs/data/text8-crop.yaml"),
    ),
    (
        "data/text8.yaml",
        include_str!("../../configs/data/text8.yaml"),
    ),
    (
        "data/wikitext103.yaml",
        include_str!("../../configs/data/wikitext103.yaml"),
    ),
    (
        "data/wikitext2.yaml",
        include_str!("../../configs/data/wikitext2.yaml"),
    ),
    (
        "experiment/shakespeare.yaml",
        include_str!("../../configs/experiment/shakespeare.yaml"),
    ),
    (
        "lr_scheduler/constant_warmup.yaml",
        include_str!("../../configs/lr_scheduler/constant_warmup.yaml"),
    ),
    (
        "lr_scheduler/cosine_decay_warmup.yaml",
        include_str!("../../configs/lr_scheduler/cosine_decay_warmup.yaml"),
    ),
    (
        "model/medium.yaml",
        include_str!("../../configs/model/medium.yaml"),
    ),
    (
        "model/small-ar.yaml",
        include_str!("../../configs/model/small-ar.yaml"),
    ),
    (
        "model/small.yaml",
        include_str!("../../configs/model/small.yaml"),
    ),
    (
        "model/tiny-ar.yaml",
        include_str!("../../configs/model/tiny-ar.yaml"),
    ),
    (
        "model/tiny-char.yaml",
        include_str!("../../configs/model/tiny-char.yaml"),
    ),
    (
        "model/tiny-dimamba.yaml",
        include_str!("../../configs/model/tiny-dimamba.yaml"),
    ),
    (
        "model/tiny.yaml",
        include_str!("../../configs/model/tiny.yaml"),
    ),
    ("noise/ar.yaml", include_str!("../../configs/noise/ar.yaml")),
    (
        "noise/cosine.yaml",
        include_str!("../../configs/noise/cosine.yaml"),
    ),
    (
        "noise/cosinesqr.yaml",
        include_str!("../../configs/noise/cosinesqr.yaml"),
    ),
    (
        "noise/geometric.yaml",
        include_str!("../../configs/noise/geometric.yaml"),
    ),
    (
        "noise/linear.yaml",
        include_str!("../../configs/noise/linear.yaml"),
    ),
    (
        "noise/loglinear.yaml",
        include_str!("../../configs/noise/loglinear.yaml"),
    ),
    (
        "noise/polynomial.yaml",
        include_str!("../../configs/noise/polynomial.yaml"),
    ),
    (
        "strategy/ddp.yaml",
        include_str!("../../configs/strategy/ddp.yaml"),
    ),
    (
        "strategy/fsdp.yaml",
        include_str!("../../configs/strategy/fsdp.yaml"),
    ),
];

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path: PathBuf = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }

    #[test]
    fn embedded_matches_disk() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut on_disk = Vec::new();
        walk(&root, &root, &mut on_disk);
        on_disk.sort();
        let embedded: Vec<String> = super::FILES.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(
            embedded, on_disk,
            "src/config/embedded.rs must list every file under configs/ (sorted)"
        );
        for (p, text) in super::FILES {
            assert_eq!(*text, std::fs::read_to_string(root.join(p)).unwrap(), "{p}");
        }
    }
}
