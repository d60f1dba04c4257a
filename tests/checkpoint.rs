//! The native checkpoint format: round trip, atomic replacement, and the errors a user sees.

use mdlm::checkpoint::{self, Checkpoint, FORMAT, VERSION};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mdlm-ckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sample_tensors(seed: i64) -> Vec<(String, Tensor)> {
    let opts = (Kind::Float, Device::Cpu);
    vec![
        (
            "backbone.blocks.0.attn_qkv.weight".into(),
            det(&[6, 4], seed, 1),
        ),
        (
            "backbone.vocab_embed.embedding".into(),
            det(&[5, 4], seed, 2),
        ),
        (
            "ema.backbone.blocks.0.attn_qkv.weight".into(),
            det(&[6, 4], seed, 3).to_kind(Kind::BFloat16),
        ),
        ("ema.num_updates".into(), Tensor::from(7i64)),
        ("optim.step".into(), Tensor::from_slice(&[3i64, 3, 2])),
        ("optim.scalar_f64".into(), Tensor::from(0.125f64)),
        ("empty".into(), Tensor::zeros([0, 3], opts)),
        // A non-contiguous view must be stored as its logical values.
        (
            "transposed".into(),
            Tensor::arange(6, (Kind::Float, Device::Cpu))
                .reshape([2, 3])
                .tr(),
        ),
    ]
}

fn assert_same(a: &Tensor, b: &Tensor, name: &str) {
    assert_eq!(a.kind(), b.kind(), "{name}: kind");
    assert_eq!(a.size(), b.size(), "{name}: shape");
    assert!(a.equal(b), "{name}: values differ");
}

const CONFIG: &str = "model:\n  hidden_size: 4\nlr_scheduler: constant_warmup\n";

#[test]
fn round_trip_keeps_every_dtype_value_and_metadata() {
    let dir = scratch("round-trip");
    let path = dir.join("last.safetensors");
    let tensors = sample_tensors(0);
    let state = json!({"global_step": 12, "epoch": 1, "loader": {"position": [3, 4]}, "note": "x"});
    checkpoint::save(&path, &tensors, &state, CONFIG).unwrap();
    let ckpt = checkpoint::load(&path).unwrap();
    assert_eq!(ckpt.tensors.len(), tensors.len());
    for (name, t) in &tensors {
        assert_same(&ckpt.tensors[name], t, name);
    }
    assert_eq!(ckpt.state, state);
    assert_eq!(ckpt.config_yaml, CONFIG);

    // The header carries the tags as plain safetensors metadata, readable by any tool.
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["format"], FORMAT);
    assert_eq!(meta["version"], VERSION.to_string());
    // No temp file is left next to the checkpoint.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("last.safetensors")]);
}

#[test]
fn tensor_list_feeds_state_loaders() {
    let dir = scratch("list");
    let path = dir.join("c.safetensors");
    checkpoint::save(&path, &sample_tensors(1), &json!({}), "").unwrap();
    let ckpt = checkpoint::load(&path).unwrap();
    let list = ckpt.tensor_list();
    assert_eq!(list.len(), ckpt.tensors.len());
    assert!(list.iter().any(|(k, _)| k == "ema.num_updates"));
}

fn previous_checkpoint(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("last.safetensors");
    checkpoint::save(
        &path,
        &sample_tensors(2),
        &json!({"global_step": 100}),
        CONFIG,
    )
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

fn assert_previous_intact(path: &Path, bytes: &[u8]) {
    assert_eq!(
        std::fs::read(path).unwrap(),
        bytes,
        "previous checkpoint changed"
    );
    let ckpt = checkpoint::load(path).unwrap();
    assert_eq!(ckpt.state["global_step"], 100);
    for (name, t) in sample_tensors(2) {
        assert_same(&ckpt.tensors[&name], &t, &name);
    }
}

#[test]
fn save_failing_midway_leaves_previous_checkpoint_and_no_temp_file() {
    let dir = scratch("midway");
    let (path, bytes) = previous_checkpoint(&dir);
    let newer = sample_tensors(3);
    // Fail inside the header, inside the tensor data, and one byte before the end.
    for fail_after in [3u64, 200, bytes.len() as u64 - 1] {
        let err = checkpoint::testing::save_interrupted_after(
            &path,
            &newer,
            &json!({"global_step": 200}),
            CONFIG,
            fail_after,
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("simulated failure"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert_previous_intact(&path, &bytes);
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "a failed save left a temp file behind");
    }
}

#[test]
fn leftover_partial_file_from_a_killed_save_is_harmless() {
    let dir = scratch("leftover");
    let (path, bytes) = previous_checkpoint(&dir);
    // What a process killed in the middle of a save leaves: a partial temp file beside the target.
    let partial = dir.join(".last.safetensors.partial-999999-0");
    std::fs::write(&partial, &bytes[..bytes.len() / 2]).unwrap();
    assert_previous_intact(&path, &bytes);
    // The next save replaces the checkpoint and clears the fragment.
    checkpoint::save(
        &path,
        &sample_tensors(4),
        &json!({"global_step": 300}),
        CONFIG,
    )
    .unwrap();
    assert!(!partial.exists());
    assert_eq!(checkpoint::load(&path).unwrap().state["global_step"], 300);
}

#[test]
fn failing_rename_leaves_target_untouched() {
    let dir = scratch("rename");
    // A non-empty folder where the file should go makes the final rename fail.
    let target = dir.join("blocked.safetensors");
    std::fs::create_dir_all(target.join("inside")).unwrap();
    let err = checkpoint::save(&target, &sample_tensors(5), &json!({}), "").unwrap_err();
    assert!(format!("{err:#}").contains("renaming"), "{err:#}");
    assert!(target.join("inside").is_dir());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

    // And a folder that does not exist is reported with the path.
    let missing = dir.join("no/such/dir/c.safetensors");
    let err = checkpoint::save(&missing, &sample_tensors(5), &json!({}), "").unwrap_err();
    assert!(format!("{err:#}").contains("no/such/dir"), "{err:#}");
}

#[test]
fn truncated_file_is_rejected_as_truncated_or_corrupt() {
    let dir = scratch("truncated");
    let (path, bytes) = previous_checkpoint(&dir);
    for cut in [0, 5, 20, bytes.len() / 2, bytes.len() - 1] {
        let short = dir.join(format!("short-{cut}.safetensors"));
        std::fs::write(&short, &bytes[..cut]).unwrap();
        let msg = format!("{:#}", checkpoint::load(&short).err().unwrap());
        assert!(msg.contains("truncated or corrupt"), "cut {cut}: {msg}");
        assert!(
            msg.contains(&short.display().to_string()),
            "cut {cut}: {msg}"
        );
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
    let _ = path;
    let text = dir.join("notes.safetensors");
    std::fs::write(&text, "this is not a checkpoint at all, just some text").unwrap();
    let msg = format!("{:#}", checkpoint::load(&text).err().unwrap());
    assert!(msg.contains("truncated or corrupt"), "{msg}");
}

#[test]
fn missing_file_names_the_path() {
    let path = scratch("missing").join("nope.safetensors");
    let msg = format!("{:#}", checkpoint::load(&path).err().unwrap());
    assert!(
        msg.contains("does not exist") && msg.contains("nope.safetensors"),
        "{msg}"
    );
}

fn write_plain_safetensors(path: &Path, metadata: Option<HashMap<String, String>>) {
    let t = Tensor::ones([2], (Kind::Float, Device::Cpu));
    let data: Vec<u8> = Vec::<f32>::try_from(&t)
        .unwrap()
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &data).unwrap();
    safetensors::serialize_to_file([("backbone.w", view)], metadata, path).unwrap();
}

#[test]
fn other_safetensors_files_are_not_checkpoints() {
    let dir = scratch("format");
    let plain = dir.join("model.safetensors");
    write_plain_safetensors(&plain, None);
    let msg = format!("{:#}", checkpoint::load(&plain).err().unwrap());
    assert!(msg.contains("not an mdlm checkpoint"), "{msg}");

    let other = dir.join("other.safetensors");
    write_plain_safetensors(
        &other,
        Some(HashMap::from([("format".into(), "pt".into())])),
    );
    let msg = format!("{:#}", checkpoint::load(&other).err().unwrap());
    assert!(
        msg.contains("not an mdlm checkpoint") && msg.contains("\"pt\""),
        "{msg}"
    );

    let newer = dir.join("newer.safetensors");
    write_plain_safetensors(
        &newer,
        Some(HashMap::from([
            ("format".into(), FORMAT.into()),
            ("version".into(), (VERSION + 1).to_string()),
            ("state".into(), "{}".into()),
            ("config".into(), String::new()),
        ])),
    );
    let msg = format!("{:#}", checkpoint::load(&newer).err().unwrap());
    assert!(msg.contains("newer than this build"), "{msg}");
}

fn ckpt_of(tensors: &[(&str, Tensor)]) -> Checkpoint {
    Checkpoint {
        tensors: tensors
            .iter()
            .map(|(k, t)| (k.to_string(), t.shallow_clone()))
            .collect(),
        state: json!({}),
        config_yaml: String::new(),
    }
}

fn model_params() -> Vec<(String, Tensor)> {
    let opts = (Kind::Float, Device::Cpu);
    vec![
        (
            "backbone.a.weight".into(),
            Tensor::zeros([2, 3], opts).set_requires_grad(true),
        ),
        (
            "backbone.b.bias".into(),
            Tensor::zeros([3], opts).set_requires_grad(true),
        ),
    ]
}

#[test]
fn load_into_copies_and_checks_keys_and_shapes() {
    let opts = (Kind::Float, Device::Cpu);
    let a = det(&[2, 3], 0, 4);
    let b = det(&[3], 0, 5);
    let ea = det(&[2, 3], 0, 6);
    let eb = det(&[3], 0, 7);
    let good = ckpt_of(&[
        ("backbone.a.weight", a.shallow_clone()),
        ("backbone.b.bias", b.shallow_clone()),
        ("ema.backbone.a.weight", ea.shallow_clone()),
        ("ema.backbone.b.bias", eb.shallow_clone()),
        ("ema.num_updates", Tensor::from(3i64)),
        ("optim.step", Tensor::from_slice(&[1i64, 1])),
    ]);
    let params = model_params();
    // The root scope ignores `ema.` and `optim.`.
    checkpoint::load_into(&params, "", &good).unwrap();
    assert!(params[0].1.equal(&a) && params[1].1.equal(&b));
    assert!(params[0].1.requires_grad());
    // Building a model on the EMA weights; `ema.num_updates` is outside the parameters' modules.
    let ema_params = model_params();
    checkpoint::load_into(&ema_params, "ema.", &good).unwrap();
    assert!(ema_params[0].1.equal(&ea) && ema_params[1].1.equal(&eb));

    let mismatch = ckpt_of(&[
        ("backbone.a.weight", Tensor::zeros([3, 2], opts)),
        ("backbone.b.bias", b.shallow_clone()),
    ]);
    let msg = format!(
        "{}",
        checkpoint::load_into(&params, "", &mismatch).unwrap_err()
    );
    assert!(
        msg.contains("shape mismatch for backbone.a.weight")
            && msg.contains("[3, 2]")
            && msg.contains("[2, 3]"),
        "{msg}"
    );

    let missing = ckpt_of(&[("backbone.a.weight", a.shallow_clone())]);
    let msg = format!(
        "{}",
        checkpoint::load_into(&params, "", &missing).unwrap_err()
    );
    assert!(msg.contains("missing key backbone.b.bias"), "{msg}");

    let extra = ckpt_of(&[
        ("backbone.a.weight", a.shallow_clone()),
        ("backbone.b.bias", b.shallow_clone()),
        ("backbone.c.weight", b.shallow_clone()),
    ]);
    let fresh = model_params();
    let msg = format!("{}", checkpoint::load_into(&fresh, "", &extra).unwrap_err());
    assert!(msg.contains("unexpected key backbone.c.weight"), "{msg}");
    // A failed load changes nothing.
    assert_eq!(
        f64::try_from(fresh[0].1.abs().sum(Kind::Double)).unwrap(),
        0.0
    );

    let ema_extra = ckpt_of(&[
        ("ema.backbone.a.weight", ea.shallow_clone()),
        ("ema.backbone.b.bias", eb.shallow_clone()),
        ("ema.backbone.c.weight", eb.shallow_clone()),
    ]);
    let msg = format!(
        "{}",
        checkpoint::load_into(&fresh, "ema.", &ema_extra).unwrap_err()
    );
    assert!(
        msg.contains("unexpected key ema.backbone.c.weight"),
        "{msg}"
    );
}

/// Deterministic "random-looking" values: libtorch's global generator is shared by the tests of
/// this binary, which run in parallel, so reseeding it cannot make a tensor reproducible.
fn det(shape: &[i64], seed: i64, salt: i64) -> Tensor {
    let n: i64 = shape.iter().product();
    let phase = (seed * 31 + salt) as f64;
    (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.7311 + phase)
        .sin()
        .reshape(shape)
        * 1.7
}
