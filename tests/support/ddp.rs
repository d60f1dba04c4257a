//! Data-parallel runs of the `mdlm` binary over loopback: ranks started by hand (as torchrun or
//! srun would), and the comparison of two training runs that should have taken the same steps.

use mdlm::checkpoint;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `mdlm` with `vars` (a launcher's variables) and the test environment; stderr goes to `log`.
pub fn spawn(cache: &Path, a: &[String], vars: &[(&str, String)], log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mdlm"))
        .args(a)
        .env("MDLM_CACHE", cache)
        .env("OMP_NUM_THREADS", "1")
        .env("HF_HUB_OFFLINE", "1")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("starting mdlm")
}

/// `mdlm` as rank `rank` of `world`, launched torchrun-style.
pub fn rank(cache: &Path, a: &[String], rank: usize, world: usize, port: u16, log: &Path) -> Child {
    let vars = [
        ("RANK", rank.to_string()),
        ("WORLD_SIZE", world.to_string()),
        ("MASTER_ADDR", "127.0.0.1".to_string()),
        ("MASTER_PORT", port.to_string()),
    ];
    spawn(cache, a, &vars, log)
}

/// Waits for `c` at most `limit`; kills it and fails the test past that.
pub fn wait_for(c: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > limit {
            let _ = c.kill();
            let _ = c.wait();
            panic!("{what} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for every rank; fails with the log of the first that failed.
pub fn wait_all(ranks: Vec<Child>, logs: &[std::path::PathBuf], limit: Duration) {
    for (i, mut r) in ranks.into_iter().enumerate() {
        let s = wait_for(&mut r, limit, &format!("rank {i}"));
        assert!(
            s.success(),
            "rank {i} failed:\n{}",
            std::fs::read_to_string(&logs[i]).unwrap_or_default()
        );
    }
}

/// `(train/loss, grad_norm)` per logged step of a run.
pub fn steps(run: &Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("train/loss").is_some())
        .map(|r| {
            (
                r["train/loss"].as_f64().unwrap(),
                r["grad_norm"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Two runs that took the same optimizer steps on the same global batches end at the same
/// parameters (and EMA) up to rounding — far closer than training moved them — with the same
/// step count. Returns the largest difference.
pub fn assert_same_parameters(a: &Path, b: &Path, steps: u64) -> f64 {
    let ca = checkpoint::load(&a.join("checkpoints/last.safetensors")).unwrap();
    let cb = checkpoint::load(&b.join("checkpoints/last.safetensors")).unwrap();
    assert_eq!(ca.state["global_step"], steps);
    assert_eq!(cb.state["global_step"], steps);
    let (mut max_diff, mut max_moved, mut compared) = (0f64, 0f64, 0);
    for (k, ta) in &ca.tensors {
        if k.starts_with("optim.") {
            continue;
        }
        let tb = &cb.tensors[k];
        assert_eq!(ta.size(), tb.size(), "{k}");
        let d = (ta - tb).abs().max().double_value(&[]);
        max_diff = max_diff.max(d);
        compared += 1;
        // Training moved the weights: the EMA (decay 0.9999) still sits near the start.
        if let Some(e) = ca.tensors.get(&format!("ema.{k}")) {
            max_moved = max_moved.max((ta - e).abs().max().double_value(&[]));
        }
    }
    eprintln!("max |param difference| over {compared} tensors (incl. EMA): {max_diff:.3e}");
    assert!(compared > 10);
    // The weights moved far more than they differ: the comparison is not between two untouched
    // initialisations.
    assert!(
        max_moved > 1e-2,
        "training moved weights by only {max_moved}"
    );
    assert!(
        max_diff < 1e-3 && max_diff < max_moved / 100.0,
        "parameters differ by {max_diff} (moved {max_moved})"
    );
    max_diff
}

/// Per step, the averaged loss and the norm of the averaged gradient agree: a reduction that
/// summed instead of averaging would double the norm.
pub fn assert_same_steps(a: &[(f64, f64)], b: &[(f64, f64)]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x.0 - y.0).abs() < 1e-4 * x.0, "losses {a:?} vs {b:?}");
        assert!(
            (x.1 - y.1).abs() < 1e-3 * x.1,
            "gradient norms {a:?} vs {b:?}"
        );
    }
}
