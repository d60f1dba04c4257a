//! TensorBoard event files, read back by a decoder written here from the format's description
//! (TFRecord framing with masked CRC32C; the field numbers of tensorboard/compat/proto's
//! event.proto, summary.proto and tensor.proto), not by mdlm's encoder. Every record's checksums
//! are verified, and every scalar must equal, as f32, what metrics.jsonl holds at that step.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use support::*;

// ---- the independent reader ----

/// CRC32C bit by bit: reflected Castagnoli polynomial, initial and final XOR with all ones.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// TensorFlow's mask, spelled as its record-format docs write it.
#[allow(clippy::manual_rotate)]
fn masked(data: &[u8]) -> u32 {
    let c = crc32c(data);
    ((c >> 15) | (c << 17)).wrapping_add(0xa282_ead8)
}

/// The records of a TFRecord file, each checksum verified; the file must end on a record.
fn records(bytes: &[u8], file: &Path) -> Vec<Vec<u8>> {
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        assert!(
            i + 12 <= bytes.len(),
            "{}: truncated header",
            file.display()
        );
        let len_bytes = &bytes[i..i + 8];
        assert_eq!(
            u32_at(i + 8),
            masked(len_bytes),
            "{}: length CRC",
            file.display()
        );
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let data = &bytes[i + 12..i + 12 + len];
        assert_eq!(
            u32_at(i + 12 + len),
            masked(data),
            "{}: data CRC",
            file.display()
        );
        out.push(data.to_vec());
        i += 12 + len + 4;
    }
    out
}

#[derive(Debug)]
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

/// A protobuf message's fields in order, as (field number, value).
fn fields(msg: &[u8]) -> Vec<(u64, Field<'_>)> {
    let mut i = 0;
    let varint = |i: &mut usize| -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = msg[*i];
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return v;
            }
            shift += 7;
        }
    };
    let mut out = Vec::new();
    while i < msg.len() {
        let key = varint(&mut i);
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut i)),
            1 => {
                i += 8;
                Field::Fixed64(msg[i - 8..i].try_into().unwrap())
            }
            2 => {
                let n = varint(&mut i) as usize;
                i += n;
                Field::Bytes(&msg[i - n..i])
            }
            5 => {
                i += 4;
                Field::Fixed32(msg[i - 4..i].try_into().unwrap())
            }
            w => panic!("wire type {w} in an event"),
        };
        out.push((key >> 3, field));
    }
    out
}

fn bytes_of(msg: &[u8], field: u64) -> Option<&[u8]> {
    fields(msg).into_iter().find_map(|(n, f)| match f {
        Field::Bytes(b) if n == field => Some(b),
        _ => None,
    })
}

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Scalar(f32),
    Text(String),
}

#[derive(Debug, Default)]
struct Event {
    step: i64,
    wall_time: f64,
    file_version: Option<String>,
    /// `session_log.status == START`.
    session_start: bool,
    values: Vec<(String, Value)>,
}

/// `Summary.Value`: tag 1, simple_value 2, or a text tensor 8 (plugin "text" in metadata 9).
fn summary_value(v: &[u8]) -> (String, Value) {
    let tag = String::from_utf8(bytes_of(v, 1).expect("a tag").to_vec()).unwrap();
    for (n, f) in fields(v) {
        match (n, f) {
            (2, Field::Fixed32(b)) => return (tag, Value::Scalar(f32::from_le_bytes(b))),
            (8, Field::Bytes(tensor)) => {
                let md = bytes_of(v, 9).expect("text metadata");
                let plugin = bytes_of(bytes_of(md, 1).expect("plugin_data"), 1).unwrap();
                assert_eq!(plugin, b"text", "{tag}");
                let dtype = fields(tensor).into_iter().find_map(|(n, f)| match f {
                    Field::Varint(d) if n == 1 => Some(d),
                    _ => None,
                });
                assert_eq!(dtype, Some(7), "{tag}: DT_STRING");
                let s = bytes_of(tensor, 8).expect("string_val");
                return (tag, Value::Text(String::from_utf8(s.to_vec()).unwrap()));
            }
            _ => {}
        }
    }
    panic!("{tag}: neither a scalar nor a text tensor")
}

/// `Event`: wall_time 1, step 2, file_version 3, summary 5 (values 1), session_log 7 (status 1).
fn event(data: &[u8]) -> Event {
    let mut e = Event::default();
    for (n, f) in fields(data) {
        match (n, f) {
            (1, Field::Fixed64(b)) => e.wall_time = f64::from_le_bytes(b),
            (2, Field::Varint(s)) => e.step = s as i64,
            (3, Field::Bytes(b)) => e.file_version = Some(String::from_utf8(b.to_vec()).unwrap()),
            (5, Field::Bytes(summary)) => {
                for (n, f) in fields(summary) {
                    if let (1, Field::Bytes(v)) = (n, f) {
                        e.values.push(summary_value(v));
                    }
                }
            }
            (7, Field::Bytes(log)) => {
                e.session_start = fields(log)
                    .iter()
                    .any(|(n, f)| *n == 1 && matches!(f, Field::Varint(1)))
            }
            (n, f) => panic!("unexpected event field {n}: {f:?}"),
        }
    }
    e
}

/// The event files of `<dir>/tb` in the order TensorBoard reads them (by name), decoded.
fn event_files(dir: &Path) -> Vec<(PathBuf, Vec<Event>)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join("tb"))
        .unwrap_or_else(|e| panic!("{}/tb: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.starts_with("events.out.tfevents."), "{name}");
            let events: Vec<Event> = records(&std::fs::read(&p).unwrap(), &p)
                .iter()
                .map(|r| event(r))
                .collect();
            let first = events.first().expect("an empty event file");
            assert_eq!(first.file_version.as_deref(), Some("brain.Event:2"));
            assert!(first.wall_time > 1.6e9, "wall time {}", first.wall_time);
            (p, events)
        })
        .collect()
}

/// Every (tag, step) of the files with its value; a pair in two places fails.
fn by_tag_and_step(files: &[(PathBuf, Vec<Event>)]) -> BTreeMap<(String, i64), Value> {
    let mut all = BTreeMap::new();
    for (p, events) in files {
        for e in events {
            for (tag, v) in &e.values {
                let old = all.insert((tag.clone(), e.step), v.clone());
                assert!(
                    old.is_none(),
                    "({tag}, {}) logged twice (again in {})",
                    e.step,
                    p.display()
                );
            }
        }
    }
    all
}

fn text_at(all: &BTreeMap<(String, i64), Value>, tag: &str, step: i64) -> String {
    match all.get(&(tag.to_string(), step)) {
        Some(Value::Text(t)) => t.clone(),
        other => panic!("({tag}, {step}): {other:?}"),
    }
}

/// The indented code block's lines back as text.
fn unindent(markdown: &str) -> String {
    markdown
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect()
}

/// metrics.jsonl's numbers under their TensorBoard tags, as f32.
fn expected_scalars(run: &Path) -> BTreeMap<(String, i64), Value> {
    let keys = [
        ("train/loss", "train/loss"),
        ("lr", "train/lr"),
        ("grad_norm", "train/grad_norm"),
        ("tokens_per_s", "train/tokens_per_s"),
        ("val/nll", "val/nll"),
        ("val/bpd", "val/bpd"),
        ("val/ppl", "val/ppl"),
    ];
    let mut want = BTreeMap::new();
    for line in std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
    {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = r["step"].as_i64().unwrap();
        for (key, tag) in keys {
            if let Some(v) = r.get(key).and_then(|v| v.as_f64()) {
                want.insert((tag.to_string(), step), Value::Scalar(v as f32));
            }
        }
    }
    want
}

#[test]
fn the_reader_computes_the_standard_crc32c() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
}

// ---- the runs ----

#[test]
fn a_run_and_its_resumption_log_every_metric_once() {
    let tmp = TempDir::new("tb-train");
    shakespeare_cache(tmp.path());
    let run = tmp.path().join("run");
    let train = |steps: u64| {
        let mut a = args(&["train"], tiny_overrides(&run));
        a.extend([
            format!("trainer.max_steps={steps}"),
            // One optimizer step per batch here: validation (and samples) every 2 steps.
            "trainer.val_check_interval=2".to_string(),
            "sampling.steps=16".to_string(),
        ]);
        let o = mdlm(tmp.path(), &a);
        assert!(o.status.success(), "train failed:\n{}", stderr(&o));
    };
    let s = 4;
    train(s);
    let first_config = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    let first = event_files(&run);
    assert_eq!(first.len(), 1);
    // A session start at step 0 (TensorBoard takes a run's first start as its beginning).
    assert!(first[0].1.iter().any(|e| e.session_start && e.step == 0));
    let all = by_tag_and_step(&first);
    assert_eq!(unindent(&text_at(&all, "config", 0)), first_config);
    assert_eq!(
        all.keys()
            .filter(|(t, _)| t.starts_with("train/"))
            .map(|(_, st)| *st)
            .max(),
        Some(s as i64)
    );

    // Resumed from checkpoints/last.safetensors (step S) to 2S: a second file, only later steps.
    train(2 * s);
    let files = event_files(&run);
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files[0].1.len(), first[0].1.len(), "the first file changed");
    let resumed = &files[1].1;
    assert!(
        resumed
            .iter()
            .any(|e| e.session_start && e.step == s as i64 + 1),
        "no session start at step {}",
        s + 1
    );
    for e in resumed.iter().filter(|e| !e.values.is_empty()) {
        assert!(e.step > s as i64, "the resumed file logs step {}", e.step);
    }
    let all = by_tag_and_step(&files);
    let config = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert_eq!(unindent(&text_at(&all, "config", s as i64 + 1)), config);

    // Every scalar equals metrics.jsonl's (both runs append to it), and nothing else is a scalar.
    let got: BTreeMap<_, _> = all
        .iter()
        .filter(|(_, v)| matches!(v, Value::Scalar(_)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let want = expected_scalars(&run);
    assert_eq!(got, want);
    for tag in [
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
    ] {
        let steps: Vec<i64> = want.keys().filter(|(t, _)| t == tag).map(|k| k.1).collect();
        assert_eq!(steps, (1..=2 * s as i64).collect::<Vec<_>>(), "{tag}");
    }
    let val_steps: Vec<i64> = want
        .keys()
        .filter(|(t, _)| t == "val/nll")
        .map(|k| k.1)
        .collect();
    assert_eq!(val_steps, [2, 4, 6, 8]);

    // Samples at every validation: sampling.num_sample_log (2) decoded rows.
    for step in val_steps {
        let t = text_at(&all, "samples", step);
        assert!(
            t.contains("**sample 0**") && t.contains("**sample 1**") && !t.contains("**sample 2**"),
            "{t}"
        );
    }
}

#[test]
fn ppl_eval_and_sample_eval_log_their_results() {
    let tmp = TempDir::new("tb-eval");
    shakespeare_cache(tmp.path());
    let ckpt = train_tiny(tmp.path(), &tmp.path().join("run"), 2);
    let ck = format!("eval.checkpoint_path={}", ckpt.display());

    let dir = tmp.path().join("ppl");
    let mut a = args(&["ppl-eval"], tiny_overrides(&dir));
    a.push(ck.clone());
    let o = mdlm(tmp.path(), &a);
    assert!(o.status.success(), "ppl-eval failed:\n{}", stderr(&o));
    let m = metrics_of(&dir);
    let all = by_tag_and_step(&event_files(&dir));
    for key in ["nll", "bpd", "ppl"] {
        // At the checkpoint's training step (2).
        let tag = format!("eval/shakespeare/validation/{key}");
        let want = m[format!("val/{key}").as_str()].as_f64().unwrap() as f32;
        assert_eq!(
            all.get(&(tag.clone(), 2)),
            Some(&Value::Scalar(want)),
            "{tag}"
        );
    }
    assert_eq!(all.len(), 3, "{all:?}");

    let gen_ppl = uniform_gen_ppl(&tmp.path().join("evaluator"));
    let dir = tmp.path().join("samples");
    let mut a = args(&["sample-eval"], tiny_overrides(&dir));
    a.extend([
        ck,
        "sampling.steps=8".to_string(),
        "loader.eval_global_batch_size=3".to_string(),
    ]);
    a.extend(gen_ppl);
    let o = mdlm(tmp.path(), &a);
    assert!(o.status.success(), "sample-eval failed:\n{}", stderr(&o));
    let m = metrics_of(&dir);
    let all = by_tag_and_step(&event_files(&dir));
    for (key, tag) in [
        ("gen_ppl", "eval/gen_ppl"),
        ("unigram_entropy", "eval/unigram_entropy"),
    ] {
        let want = m[key].as_f64().unwrap() as f32;
        assert_eq!(
            all.get(&(tag.to_string(), 2)),
            Some(&Value::Scalar(want)),
            "{tag}"
        );
    }
    // The printed samples (sampling.num_sample_log = 2 of the 3), each as its code block.
    let texts: Vec<String> = std::fs::read_to_string(dir.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(texts.len(), 3);
    let shown = text_at(&all, "samples", 2);
    for (i, t) in texts.iter().take(2).enumerate() {
        let block: String = t.lines().map(|l| format!("    {l}\n")).collect();
        assert!(
            shown.contains(&format!("**sample {i}**\n\n{block}")),
            "{shown}"
        );
    }
    assert!(!shown.contains("**sample 2**"));
}
