//! Bounded fuzzing of the parsers that read user files: the reference's Lightning `.ckpt` (zip
//! container and pickle), our safetensors checkpoints, config YAML (a checkpoint's config and
//! `--config-dir` trees) and overrides, and `tokenizer.json`. Each case mutates a real input a
//! few thousand times with fixed seeds and requires `Ok` or an error for every one, never a
//! panic; an abort (a C++ exception escaping libtorch) would end the process and fail it too.
//! A failure names the case and the seed, so it replays exactly.

mod support;

use mdlm::checkpoint::{self as native, lightning};
use mdlm::config::{self, Config};
use mdlm::data::{HfTokenizer, Tokenizer};
use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use support::TempDir;
use tch::{Device, Kind, Tensor};

/// xorshift64*: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that sit on parsers' edges: zero, sign bits, all ones, digits and delimiters.
const EDGES: &[u8] = &[
    0x00, 0x01, 0x7F, 0x80, 0xFF, b'0', b'9', b'-', b'{', b'}', b'[', b']', b':', b'"', b'\n', b'.',
];

/// One random mutation of `bytes`, restricted to `bytes[lo..hi]` where positions are drawn.
fn mutate_in(rng: &mut Rng, bytes: &[u8], lo: usize, hi: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let hi = hi.min(b.len()).max(lo + 1);
    let at = |rng: &mut Rng| lo + rng.below(hi - lo);
    match rng.below(6) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                let i = at(rng).min(b.len().saturating_sub(1));
                if !b.is_empty() {
                    b[i] = rng.next() as u8;
                }
            }
        }
        1 => b.truncate(at(rng)),
        2 => {
            let i = at(rng).min(b.len());
            let n = 1 + rng.below(16);
            let ins: Vec<u8> = (0..n).map(|_| EDGES[rng.below(EDGES.len())]).collect();
            b.splice(i..i, ins);
        }
        3 => {
            let i = at(rng).min(b.len());
            let n = (1 + rng.below(64)).min(b.len() - i);
            b.drain(i..i + n);
        }
        4 => {
            let i = at(rng).min(b.len());
            let n = (1 + rng.below(32)).min(b.len() - i);
            let chunk = b[i..i + n].to_vec();
            let j = at(rng).min(b.len());
            b.splice(j..j, chunk);
        }
        _ => {
            let i = at(rng).min(b.len());
            let n = (1 + rng.below(8)).min(b.len() - i);
            let v = EDGES[rng.below(EDGES.len())];
            b[i..i + n].fill(v);
        }
    }
    b
}

fn mutate(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    mutate_in(rng, bytes, 0, bytes.len())
}

/// Runs `f` on every seed in `seeds`; a panic fails the test with the case and seed.
fn never_panics(case: &str, seeds: std::ops::Range<u64>, mut f: impl FnMut(&mut Rng)) {
    // The default hook would print every caught panic; the assertion below reports the first.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = None;
    for seed in seeds {
        let mut rng = Rng::new(seed);
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(&mut rng))) {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed = Some((seed, msg));
            break;
        }
    }
    std::panic::set_hook(hook);
    if let Some((seed, msg)) = failed {
        panic!("{case}: seed {seed} panicked: {msg}");
    }
}

fn parity_dir() -> std::path::PathBuf {
    std::env::var_os("MDLM_PARITY_DIR")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/parity"))
}

/// The archive's entries, in order, as (name, bytes).
fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            (f.name().to_string(), b)
        })
        .collect()
}

/// A stored (uncompressed) archive, as `torch.save` writes one.
fn rezip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, b) in entries {
        w.start_file(name, opts).unwrap();
        w.write_all(b).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn lightning_checkpoints_container_and_pickle() {
    let ckpt = std::fs::read(parity_dir().join("lightning_ckpt/model.ckpt")).unwrap();
    assert!(lightning::read_bytes(&ckpt).is_ok(), "the fixture itself");
    never_panics("ckpt bytes", 0..300, |rng| {
        let _ = lightning::read_bytes(&mutate(rng, &ckpt));
    });
    // Inside a valid container, so that the pickle machine itself sees the damage.
    let entries = unzip(&ckpt);
    let pkl = entries
        .iter()
        .position(|(n, _)| n.ends_with("data.pkl"))
        .expect("data.pkl");
    assert!(lightning::read_bytes(&rezip(&entries)).is_ok(), "rezipped");
    never_panics("ckpt pickle", 0..700, |rng| {
        let mut e = entries.clone();
        e[pkl].1 = mutate(rng, &e[pkl].1);
        let _ = lightning::read_bytes(&rezip(&e));
    });
}

#[test]
fn native_checkpoint_headers() {
    let tmp = TempDir::new("fuzz-native");
    let path = tmp.path().join("ck.safetensors");
    let tensors = vec![
        (
            "backbone.w".to_string(),
            Tensor::arange(12, (Kind::Float, Device::Cpu)).view([3, 4]),
        ),
        (
            "ema.backbone.w".to_string(),
            Tensor::ones([3, 4], (Kind::Float, Device::Cpu)),
        ),
        ("step".to_string(), Tensor::from_slice(&[7i64])),
    ];
    let state = serde_json::json!({"global_step": 7, "epoch": 0});
    native::save(&path, &tensors, &state, "model:\n  name: tiny\n").unwrap();
    let good = std::fs::read(&path).unwrap();
    assert!(native::load(&path).is_ok(), "the file itself");
    let header_end = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let file = tmp.path().join("m.safetensors");
    never_panics("native header", 0..1500, |rng| {
        // Mostly the length prefix and the JSON header; sometimes anywhere.
        let m = if rng.below(4) == 0 {
            mutate(rng, &good)
        } else {
            mutate_in(rng, &good, 0, header_end)
        };
        std::fs::write(&file, m).unwrap();
        let _ = native::load(&file);
    });
}

#[test]
fn config_yaml_overrides_and_config_trees() {
    let yaml = config::compose(&["experiment=shakespeare".to_string()])
        .unwrap()
        .to_yaml();
    assert!(Config::from_yaml(&yaml).is_ok());
    never_panics("config yaml", 0..2000, |rng| {
        let m = mutate(rng, yaml.as_bytes());
        let _ = Config::from_yaml(&String::from_utf8_lossy(&m));
    });

    // Overrides built from pieces users type, right and wrong.
    const KEYS: &[&str] = &[
        "model",
        "model.length",
        "loader.global_batch_size",
        "trainer.max_steps",
        "sampling.steps",
        "noise",
        "experiment",
        "data",
        "optim.lr",
        "lr_scheduler",
        "x.y.z",
        "",
        "model..length",
        "hydra.run.dir",
    ];
    const VALUES: &[&str] = &[
        "small",
        "tiny",
        "0",
        "-1",
        "1e400",
        "nan",
        "inf",
        "true",
        "null",
        "[1,2]",
        "{a: 1}",
        "${model.length}",
        "${oops",
        "'",
        "\"",
        "shakespeare",
        "ar",
        "~",
        "=",
        "",
        "99999999999999999999",
    ];
    never_panics("overrides", 0..1000, |rng| {
        let n = 1 + rng.below(4);
        let overrides: Vec<String> = (0..n)
            .map(|_| {
                let prefix = ["", "+", "++", "~"][rng.below(4)];
                let key = KEYS[rng.below(KEYS.len())];
                match rng.below(5) {
                    0 => format!("{prefix}{key}"),
                    _ => format!("{prefix}{key}={}", VALUES[rng.below(VALUES.len())]),
                }
            })
            .collect();
        let _ = config::compose(&overrides);
    });

    // A `--config-dir` tree with one damaged file.
    let tmp = TempDir::new("fuzz-configs");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    copy_tree(&src, tmp.path());
    let targets = [
        "config.yaml",
        "experiment/shakespeare.yaml",
        "model/tiny.yaml",
    ];
    let originals: Vec<Vec<u8>> = targets
        .iter()
        .map(|t| std::fs::read(tmp.path().join(t)).unwrap())
        .collect();
    let args = ["experiment=shakespeare".to_string()];
    assert!(config::compose_from_dir(tmp.path(), &args).is_ok());
    never_panics("config tree", 0..400, |rng| {
        let k = rng.below(targets.len());
        let path = tmp.path().join(targets[k]);
        std::fs::write(&path, mutate(rng, &originals[k])).unwrap();
        let _ = config::compose_from_dir(tmp.path(), &args);
        std::fs::write(&path, &originals[k]).unwrap();
    });
}

fn copy_tree(src: &Path, dst: &Path) {
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let to = dst.join(p.file_name().unwrap());
        if p.is_dir() {
            std::fs::create_dir_all(&to).unwrap();
            copy_tree(&p, &to);
        } else {
            std::fs::copy(&p, &to).unwrap();
        }
    }
}

/// A byte-level BPE `tokenizer.json` small enough to parse thousands of times: the shape of
/// GPT-2's, with a vocabulary of a few pieces.
fn small_tokenizer_json() -> String {
    let added = serde_json::json!([{"id": 5, "content": "<|endoftext|>", "single_word": false,
        "lstrip": false, "rstrip": false, "normalized": true, "special": true}]);
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
                           "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
                  "byte_fallback": false,
                  "vocab": {"a": 0, "b": 1, "ab": 2, "\u{0120}": 3, "\u{0120}ab": 4,
                            "<|endoftext|>": 5},
                  "merges": ["a b", "\u{0120} ab"]}
    })
    .to_string()
}

#[test]
fn tokenizer_json_files() {
    let tmp = TempDir::new("fuzz-tokenizer");
    let file = tmp.path().join("tokenizer.json");
    let text = "ab ab ba a<|endoftext|>b";
    let good = small_tokenizer_json();
    std::fs::write(&file, &good).unwrap();
    let t = HfTokenizer::from_file("fuzz", &file).unwrap();
    assert_eq!(t.decode(&t.encode(text).unwrap()).unwrap(), text);
    let try_file = |bytes: &[u8]| {
        std::fs::write(&file, bytes).unwrap();
        if let Ok(t) = HfTokenizer::from_file("fuzz", &file)
            && let Ok(ids) = t.encode(text)
        {
            let _ = t.decode(&ids);
            let _ = t.decode(&[0, 5, 4000, u32::MAX]);
        }
    };
    never_panics("tokenizer.json bytes", 0..1500, |rng| {
        try_file(&mutate(rng, good.as_bytes()))
    });
    // Well-formed JSON with one value changed: reaches the tokenizer's own checks.
    let value: serde_json::Value = serde_json::from_str(&good).unwrap();
    never_panics("tokenizer.json values", 0..1500, |rng| {
        let mut v = value.clone();
        replace_random_leaf(rng, &mut v);
        try_file(v.to_string().as_bytes())
    });
    // The real GPT-2 file, damaged a few times (it is 2 MB: parsing is the cost).
    let gpt2 =
        std::fs::read(support::shared_data().join("../assets/tokenizers/gpt2/tokenizer.json"))
            .unwrap();
    never_panics("gpt2 tokenizer.json", 0..12, |rng| {
        try_file(&mutate(rng, &gpt2))
    });
}

/// Replaces one scalar somewhere in `v` (or drops a key) with a value of another kind.
fn replace_random_leaf(rng: &mut Rng, v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(m) if !m.is_empty() => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[rng.below(keys.len())];
            if rng.below(8) == 0 {
                m.remove(k);
            } else {
                replace_random_leaf(rng, m.get_mut(k).unwrap());
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = rng.below(a.len());
            replace_random_leaf(rng, &mut a[i]);
        }
        _ => {
            *v = match rng.below(7) {
                0 => Value::Null,
                1 => serde_json::json!(-1),
                2 => serde_json::json!(u64::MAX),
                3 => serde_json::json!(1e300),
                4 => serde_json::json!(""),
                5 => serde_json::json!("\u{0120}\u{0120}zz"),
                _ => serde_json::json!([]),
            }
        }
    }
}
