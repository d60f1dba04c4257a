//! Data parallelism on torch.distributed's Gloo backend, over loopback: two ranks with half the
//! batch each train to the parameters and validation NLL of one process with the whole batch, as
//! do 2 "nodes" x 2 processes started torchrun-style and through a stand-in `srun`; a killed rank
//! makes its peer fail within the timeout, naming it, and both resume from the last checkpoint; a
//! two-process checkpoint resumes on one process; batch-arithmetic errors come before any process
//! group.

mod support;

use mdlm::checkpoint;
use mdlm::dist::launch::free_port;
use std::path::Path;
use std::time::{Duration, Instant};
use support::ddp::*;
use support::*;

/// Training settings under which two runs that take the same steps on the same global batches
/// can be compared parameter for parameter (see the first test).
const COMPARABLE: &[&str] = &[
    "optim.lr=1e-1",
    "optim.eps=1",
    "lr_scheduler.num_warmup_steps=0",
    "trainer.dist_timeout_s=60",
];

fn overrides(run: &Path, extra: &[&str]) -> Vec<String> {
    let mut o = args(&["train"], tiny_overrides(run));
    o.extend(extra.iter().map(|s| s.to_string()));
    o
}

fn val_nlls(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("val/nll").is_some())
        .map(|r| (r["step"].as_u64().unwrap(), r["val/nll"].as_f64().unwrap()))
        .collect()
}

#[test]
fn two_ranks_with_half_the_batch_equal_one_process_with_all_of_it() {
    let tmp = TempDir::new("dist-eq");
    shakespeare_cache(tmp.path());
    // Accumulation on (2 micro-batches per step) so averaging once per optimizer step is what
    // is compared; the global batch is 8 either way. optim.eps=1: Adam divides each gradient
    // entry by its own magnitude, so entries that are zero up to rounding (the zero-initialised
    // adaLN layers' first gradients are sums with heavy cancellation) would step by +-lr on a
    // rounding coin flip and the comparison would measure that coin, not data parallelism. With
    // eps=1 the step is proportional to the gradient, so rounding stays rounding.
    let common = [
        "trainer.max_steps=6",
        "trainer.val_check_interval=6",
        "optim.lr=1e-1",
        "optim.eps=1",
        "lr_scheduler.num_warmup_steps=0",
        "trainer.dist_timeout_s=60",
    ];
    assert_eq!(&common[2..], COMPARABLE);
    let one = tmp.path().join("one");
    let mut a = overrides(&one, &common);
    a.push("loader.batch_size=4".into());
    let o = mdlm(tmp.path(), &a);
    assert!(o.status.success(), "one process:\n{}", stderr(&o));

    let two = tmp.path().join("two");
    let mut a = overrides(&two, &common);
    a.extend(["trainer.devices=2".into(), "loader.batch_size=2".into()]);
    let t = Instant::now();
    let o = mdlm(tmp.path(), &a);
    assert!(o.status.success(), "two ranks:\n{}", stderr(&o));
    assert!(stderr(&o).contains("starting 2 ranks"), "{}", stderr(&o));
    assert!(t.elapsed() < Duration::from_secs(120));
    // Accumulation communicates once per optimizer step, not per micro-batch.
    assert!(
        stderr(&o).contains("gradients exchanged 6 times in 6 optimizer steps of 12 micro-batches"),
        "{}",
        stderr(&o)
    );
    // Only rank 0 writes a TensorBoard event file (and draws the validation samples in it).
    let event_files = std::fs::read_dir(two.join("tb")).unwrap().count();
    assert_eq!(
        event_files,
        1,
        "event files in {}",
        two.join("tb").display()
    );

    assert_same_parameters(&one, &two, 6);
    let (sa, sb) = (steps(&one), steps(&two));
    assert_eq!(sa.len(), 6);
    assert_same_steps(&sa, &sb);

    // val_check_interval counts micro-batches: validation after steps 3 and 6.
    let (va, vb) = (val_nlls(&one), val_nlls(&two));
    assert_eq!(va.len(), 2);
    assert_eq!(va.len(), vb.len());
    for (a, b) in va.iter().zip(&vb) {
        assert_eq!(a.0, b.0);
        let rel = (a.1 - b.1).abs() / a.1;
        eprintln!(
            "step {}: validation NLL one {} two {} (rel {rel:.2e})",
            a.0, a.1, b.1
        );
        assert!(rel < 1e-5, "validation NLL {va:?} vs {vb:?}");
    }
}

#[test]
fn a_killed_rank_fails_its_peer_in_time_and_both_resume() {
    let tmp = TempDir::new("dist-kill");
    shakespeare_cache(tmp.path());
    let run = tmp.path().join("run");
    let timeout_s = 10;
    let base = |max_steps: u64| {
        overrides(
            &run,
            &[
                &format!("trainer.max_steps={max_steps}"),
                "trainer.val_check_interval=100000",
                "callbacks.checkpoint_every_n_steps.every_n_train_steps=3",
                "loader.batch_size=4",
                &format!("trainer.dist_timeout_s={timeout_s}"),
            ],
        )
    };
    let a = base(1_000_000);
    let port = free_port().unwrap();
    let logs = [tmp.path().join("r0.log"), tmp.path().join("r1.log")];
    let mut r0 = rank(tmp.path(), &a, 0, 2, port, &logs[0]);
    let mut r1 = rank(tmp.path(), &a, 1, 2, port, &logs[1]);
    let last = run.join("checkpoints/last.safetensors");
    let t = Instant::now();
    while !last.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s:\n{}",
            std::fs::read_to_string(&logs[0]).unwrap_or_default()
        );
        assert!(r0.try_wait().unwrap().is_none(), "rank 0 ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    r1.kill().unwrap();
    r1.wait().unwrap();
    let killed = Instant::now();
    let status = wait_for(
        &mut r0,
        Duration::from_secs(timeout_s + 30),
        "rank 0 after its peer was killed",
    );
    let log0 = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(
        !status.success(),
        "rank 0 succeeded without its peer:\n{log0}"
    );
    assert!(killed.elapsed() < Duration::from_secs(timeout_s + 15));
    let err = log0
        .lines()
        .rev()
        .find(|l| l.starts_with("error: "))
        .unwrap_or("");
    assert!(
        err.contains("lost rank 1"),
        "error does not name rank 1: {err}\n{log0}"
    );

    let step = checkpoint::load(&last).unwrap().state["global_step"]
        .as_u64()
        .unwrap();
    assert!(
        step >= 3 && step.is_multiple_of(3),
        "checkpoint at step {step}"
    );
    let a = base(step + 3);
    let port = free_port().unwrap();
    let mut r0 = rank(tmp.path(), &a, 0, 2, port, &logs[0]);
    let mut r1 = rank(tmp.path(), &a, 1, 2, port, &logs[1]);
    for (i, r) in [&mut r0, &mut r1].into_iter().enumerate() {
        let s = wait_for(r, Duration::from_secs(120), "resumed rank");
        assert!(
            s.success(),
            "resumed rank {i} failed:\n{}",
            std::fs::read_to_string(&logs[i]).unwrap()
        );
    }
    let log0 = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(log0.contains("resuming from"), "{log0}");
    let end = checkpoint::load(&last).unwrap();
    assert_eq!(end.state["global_step"].as_u64(), Some(step + 3));
}

#[test]
fn batch_arithmetic_errors_come_before_any_process_group() {
    let tmp = TempDir::new("dist-arith");
    shakespeare_cache(tmp.path());
    let run = tmp.path().join("run");
    // The local launcher: 3 x 2 ranks x accumulate 2 = 12, not 8; no rank is started.
    let o = mdlm(
        tmp.path(),
        &overrides(&run, &["trainer.devices=2", "loader.batch_size=3"]),
    );
    let e = error_line(&o);
    assert!(e.contains("loader.global_batch_size=8"), "{e}");
    assert!(e.contains("loader.batch_size=3"), "{e}");
    assert!(!stderr(&o).contains("starting 2 ranks"));

    // A launched rank whose world disagrees with trainer.devices fails at once instead of waiting
    // (up to the 60 s timeout) for peers at the rendezvous.
    let port = free_port().unwrap();
    let log = tmp.path().join("r.log");
    let a = overrides(&run, &["trainer.devices=4", "trainer.dist_timeout_s=60"]);
    let mut c = rank(tmp.path(), &a, 1, 2, port, &log);
    let s = wait_for(
        &mut c,
        Duration::from_secs(20),
        "a rank with a wrong world size",
    );
    assert!(!s.success());
    let l = std::fs::read_to_string(&log).unwrap();
    assert!(
        l.contains("trainer.devices=4") && l.contains("started 2"),
        "{l}"
    );
}

/// `max_steps` comparable steps (global batch 8) into `run`, with `extra`.
fn comparable(run: &Path, max_steps: u64, extra: &[&str]) -> Vec<String> {
    let mut a = overrides(run, COMPARABLE);
    a.extend([
        format!("trainer.max_steps={max_steps}"),
        "trainer.val_check_interval=100000".to_string(),
        "callbacks.checkpoint_every_n_steps.every_n_train_steps=5".to_string(),
    ]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn one_process(tmp: &Path, max_steps: u64) -> std::path::PathBuf {
    let one = tmp.join("one");
    let o = mdlm(tmp, &comparable(&one, max_steps, &["loader.batch_size=8"]));
    assert!(o.status.success(), "one process:\n{}", stderr(&o));
    one
}

#[test]
fn two_nodes_of_two_processes_equal_one_process() {
    let tmp = TempDir::new("dist-nodes");
    shakespeare_cache(tmp.path());
    let one = one_process(tmp.path(), 10);
    let nodes = ["trainer.num_nodes=2", "trainer.devices=2"];

    // torchrun on each of two "nodes": global RANK = NODE_RANK * LOCAL_WORLD_SIZE + LOCAL_RANK.
    let torchrun = tmp.path().join("torchrun");
    let a = comparable(&torchrun, 10, &nodes);
    let port = free_port().unwrap();
    let logs: Vec<_> = (0..4)
        .map(|i| tmp.path().join(format!("t{i}.log")))
        .collect();
    let ranks: Vec<_> = (0..4)
        .map(|i| {
            let vars = [
                ("RANK", i.to_string()),
                ("LOCAL_RANK", (i % 2).to_string()),
                ("NODE_RANK", (i / 2).to_string()),
                ("LOCAL_WORLD_SIZE", "2".to_string()),
                ("WORLD_SIZE", "4".to_string()),
                ("MASTER_ADDR", "127.0.0.1".to_string()),
                ("MASTER_PORT", port.to_string()),
            ];
            spawn(tmp.path(), &a, &vars, &logs[i])
        })
        .collect();
    wait_all(ranks, &logs, Duration::from_secs(180));
    let log0 = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(log0.contains("batch 2 x 4 ranks x accumulate 1"), "{log0}");
    assert_same_parameters(&one, &torchrun, 10);
    assert_same_steps(&steps(&one), &steps(&torchrun));

    // The same job as an sbatch script runs it: srun (a stand-in that sets slurm's variables
    // per task) starts 2 nodes x 2 tasks; the rendezvous host is the node list's first.
    let slurm = tmp.path().join("slurm");
    let mut cmd = vec![env!("CARGO_BIN_EXE_mdlm").to_string()];
    cmd.extend(comparable(&slurm, 10, &nodes));
    let srun = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/srun");
    let o = std::process::Command::new(&srun)
        .args(["--nodes=2", "--ntasks-per-node=2"])
        .args(&cmd)
        .env("MDLM_CACHE", tmp.path())
        .env("OMP_NUM_THREADS", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("MASTER_PORT", free_port().unwrap().to_string())
        .env("SRUN_LOG_DIR", tmp.path())
        .output()
        .unwrap();
    let task0 = std::fs::read_to_string(tmp.path().join("task0.log")).unwrap_or_default();
    assert!(o.status.success(), "srun: {}\ntask 0:\n{task0}", stderr(&o));
    assert!(
        task0.contains("batch 2 x 4 ranks x accumulate 1"),
        "{task0}"
    );
    assert_same_parameters(&one, &slurm, 10);
    assert_same_steps(&steps(&one), &steps(&slurm));
}

#[test]
fn a_two_process_checkpoint_resumes_on_one_process() {
    let tmp = TempDir::new("dist-2to1");
    shakespeare_cache(tmp.path());
    // Uninterrupted on two processes (the local launcher) ...
    let whole = tmp.path().join("whole");
    let o = mdlm(tmp.path(), &comparable(&whole, 10, &["trainer.devices=2"]));
    assert!(o.status.success(), "two processes:\n{}", stderr(&o));
    // ... and stopped at step 5 on two, resumed to step 10 on one with the same global batch.
    let split = tmp.path().join("split");
    let o = mdlm(tmp.path(), &comparable(&split, 5, &["trainer.devices=2"]));
    assert!(o.status.success(), "first half:\n{}", stderr(&o));
    let o = mdlm(
        tmp.path(),
        &comparable(&split, 10, &["loader.batch_size=8"]),
    );
    assert!(
        o.status.success(),
        "resumed on one process:\n{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("resuming from"), "{}", stderr(&o));
    assert!(stderr(&o).contains("batch 8 x 1 ranks"), "{}", stderr(&o));
    assert_same_parameters(&whole, &split, 10);
    let (w, s) = (steps(&whole), steps(&split));
    assert_eq!(w.len(), 10);
    assert_same_steps(&w, &s);
}
