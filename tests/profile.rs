//! The profiler's hook is global to the process, so its tests live in their own test binary:
//! in the library's unit tests, ops of tests running beside it would be recorded too.

mod support;

use mdlm::profile::{self, Recorder};
use support::*;
use tch::{Kind, Tensor};

/// `linear` dispatches addmm/matmul inside itself: one top-level op, whatever it calls.
#[test]
fn nested_aten_ops_count_once_and_spans_split_steps() {
    let x = Tensor::ones([4, 3], (Kind::Float, tch::Device::Cpu));
    let w = Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu));
    let mut rec = Recorder::start().unwrap();
    for _ in 0..2 {
        rec.span("step", || {
            let y = x.linear(&w, None::<Tensor>);
            let _ = (&y + 1.0).sum(Kind::Float);
        });
    }
    // A lap is a span from the previous span's end.
    let _ = x.exp();
    rec.lap("lap");
    // A thread that opted out is never recorded, however long it runs inside a span.
    let worker = std::thread::spawn(|| {
        profile::ignore_this_thread();
        let t = Tensor::ones([8], (Kind::Float, tch::Device::Cpu));
        for _ in 0..50 {
            let _ = t.cos();
        }
    });
    rec.span("step", || worker.join().unwrap());
    let r = rec.stop();
    let (n, per) = r.ops_per("step");
    assert_eq!(n, 3);
    let count = |name: &str| per.get(name).map(|s| s.count * n as f64);
    assert_eq!(count("aten::linear"), Some(2.0), "{per:?}");
    assert_eq!(count("aten::add"), Some(2.0), "{per:?}");
    assert_eq!(count("aten::sum"), Some(2.0), "{per:?}");
    assert!(!per.contains_key("aten::mm") && !per.contains_key("aten::addmm"));
    assert!(
        !r.events.iter().any(|e| e.name.contains("cos")),
        "ignored thread recorded"
    );
    let (laps, per_lap) = r.ops_per("lap");
    assert_eq!(laps, 1);
    assert_eq!(
        per_lap.get("aten::exp").map(|s| s.count),
        Some(1.0),
        "{per_lap:?}"
    );
    assert!(!per_lap.contains_key("aten::linear"));
    // What linear ran inside is kept, as nested events, for the trace.
    assert!(
        r.events
            .iter()
            .any(|e| !e.top && e.name.starts_with("aten::"))
    );
    let dir = std::env::temp_dir().join(format!("mdlm-prof-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trace.json");
    r.write_chrome_trace(&path).unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let evs = doc["traceEvents"].as_array().unwrap();
    assert_eq!(evs.len(), r.events.len() + r.spans.len());
    assert!(
        evs.iter()
            .all(|e| e["ph"] == "X" && e["dur"].as_f64().unwrap() >= 0.0)
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Three steps recorded after two of warm-up: the trace's step track and the printed table agree.
fn assert_profiled(dir: &std::path::Path, err: &str, op: &str) {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("trace.json")).unwrap()).unwrap();
    let evs = doc["traceEvents"].as_array().unwrap();
    let steps = evs.iter().filter(|e| e["cat"] == "step").count();
    assert_eq!(steps, 3, "recorded steps in the trace");
    assert!(
        evs.iter().any(|e| e["cat"] == "op" && e["name"] == op),
        "{op} not in the trace"
    );
    assert!(err.contains("ops per step (3 recorded)"), "{err}");
    assert!(err.contains(op), "{err}");
}

#[test]
fn trainer_profile_records_training_and_sampler_steps() {
    let tmp = TempDir::new("profile");
    shakespeare_cache(tmp.path());
    let run = tmp.path().join("run");
    let mut train_args = args(&["train"], tiny_overrides(&run));
    train_args.extend(["trainer.max_steps=6", "trainer.profile=true"].map(String::from));
    let out = mdlm(tmp.path(), &train_args);
    assert!(out.status.success(), "train failed:\n{}", stderr(&out));
    assert_profiled(&run, &stderr(&out), "aten::linear");

    let sample_dir = tmp.path().join("samples");
    let mut s_args = args(&["sample-eval"], tiny_overrides(&sample_dir));
    s_args.extend([
        format!(
            "eval.checkpoint_path={}",
            run.join("checkpoints/last.safetensors").display()
        ),
        "sampling.steps=8".into(),
        "sampling.num_sample_batches=1".into(),
        "trainer.profile=true".into(),
    ]);
    let out = mdlm(tmp.path(), &s_args);
    assert!(
        out.status.success(),
        "sample-eval failed:\n{}",
        stderr(&out)
    );
    assert_profiled(&sample_dir, &stderr(&out), "aten::linear");
}
