//! The CI-sized training-curve check (issue 12): mdlm trains the DiT on the same blocks, with the
//! same configuration, as the original did for `tests/ref_curves/dit_ci.json`, and its final
//! validation NELBO (EMA weights, whole validation split) may not be more than 2% (or 3 standard
//! errors of the original's mean over seeds, whichever is larger) above the original's. Step
//! parity cannot see initialisation or dropout; this can. `cargo bench --bench train_curve` runs
//! the longer curves (DiT 600 steps over seeds, AR, DiMamba).
//!
//! Its own test binary, so it has the machine to itself (cargo runs test binaries one at a time).

mod support;

use support::curve::{DIT_CI, blocks_sha256, limit, load_ref, table, train_mdlm};
use support::{TempDir, full_shakespeare_cache};

#[test]
fn dit_training_curve_follows_the_original() {
    let r = load_ref(DIT_CI.name);
    let tmp = TempDir::new("curve");
    full_shakespeare_cache(tmp.path());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let run = tmp.path().join("run");
    let ours = train_mdlm(tmp.path(), &DIT_CI, 0, &run, threads);
    assert_eq!(
        blocks_sha256(tmp.path()),
        r.data_sha256,
        "mdlm prepared other blocks than the original trained on: regenerate the curve (benches/ref/curves.sh dit_ci)"
    );
    let t = table(&r, &ours);
    println!("{t}");
    let &(step, last) = ours.last().expect("no validation ran");
    assert_eq!(
        step, DIT_CI.steps,
        "the last validation is not at the last step"
    );
    let line = limit(&r);
    assert!(
        last <= line,
        "final val NELBO {last:.4} is above {line:.4} (the original: {:.4} ± {:.4} over {} seeds)\n{t}",
        r.final_mean,
        r.final_se,
        r.seeds
    );
}
