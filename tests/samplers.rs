//! Samplers against independent truth: an oracle denoiser defined by an explicit joint
//! distribution over 3-token sequences, whose p(x0 | xt) is the exact posterior by enumeration.
//! An exact sampler must reproduce the joint; one that unmasks positions together draws them
//! independently and gives the product of the marginals instead.
//!
//! Every random draw comes from a seeded SplitMix64 through `Uniforms`, never from libtorch's
//! process-global generator (tests run in parallel threads).

use mdlm::diffusion::subs::NEG_INFINITY;
use mdlm::diffusion::{Diffusion, Parameterization};
use mdlm::sample::categorical::{ReplayUniforms, Uniforms};
use mdlm::sample::ddpm::DrawMode;
use mdlm::sample::{self, ConfidenceRule, Denoiser, Held, Predictor, SampleSpec};
use std::cell::{Cell, RefCell};
use tch::{Device, Kind, Tensor};

const L: usize = 3;
/// Real tokens 0..K; the mask is K.
const K: usize = 3;
const MASK: i64 = K as i64;
const V: i64 = K as i64 + 1;
const CELLS: usize = 27;
/// Tolerance in standard errors of a cell frequency.
const Z_TOL: f64 = 5.0;

// ---------------------------------------------------------------------------------------------
// Seeded draws

struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on [0, 1) with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// float64 uniforms from a seeded SplitMix64; keeps every draw when `record` is on.
struct SeededUniforms {
    rng: SplitMix,
    record: Option<Vec<Tensor>>,
}

impl SeededUniforms {
    fn new(seed: u64) -> Self {
        SeededUniforms {
            rng: SplitMix(seed),
            record: None,
        }
    }

    fn recording(seed: u64) -> Self {
        SeededUniforms {
            rng: SplitMix(seed),
            record: Some(Vec::new()),
        }
    }
}

impl Uniforms for SeededUniforms {
    fn next(&mut self, shape: &[i64], device: Device) -> Tensor {
        let n: i64 = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| self.rng.next_f64()).collect();
        let t = Tensor::from_slice(&v).view(shape).to_device(device);
        if let Some(r) = &mut self.record {
            r.push(t.copy());
        }
        t
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle

/// A correlated joint over {0,1,2}^3: repeated tokens are likely, and every other weight is
/// distinct so that no two positions tie in confidence.
fn joint() -> Vec<f64> {
    let mut w: Vec<f64> = (0..CELLS).map(|i| 1.0 + 0.053 * i as f64).collect();
    for (seq, extra) in [([0, 0, 0], 20.0), ([1, 1, 1], 13.0), ([2, 2, 2], 7.0)] {
        w[cell(&seq)] += extra;
    }
    w[cell(&[0, 0, 1])] += 4.0;
    w[cell(&[1, 2, 2])] += 3.0;
    let z: f64 = w.iter().sum();
    w.iter().map(|x| x / z).collect()
}

fn cell(seq: &[usize]) -> usize {
    seq[0] * 9 + seq[1] * 3 + seq[2]
}

fn seq_of(c: usize) -> [usize; L] {
    [c / 9, (c / 3) % 3, c % 3]
}

/// Posterior marginals p(x0_i = v | the unmasked positions of `xt`) by enumeration; an unmasked
/// position is certain of its token. `None` entries are masked.
fn posterior(p: &[f64], xt: &[Option<usize>; L]) -> [[f64; K]; L] {
    let mut out = [[0.0; K]; L];
    let mut z = 0.0;
    for (c, pc) in p.iter().enumerate() {
        let s = seq_of(c);
        if (0..L).all(|i| xt[i].is_none_or(|t| t == s[i])) {
            z += pc;
            for i in 0..L {
                out[i][s[i]] += pc;
            }
        }
    }
    for row in &mut out {
        for v in row.iter_mut() {
            *v /= z;
        }
    }
    out
}

/// p(x0 | xt) of `joint` for every one of the 4^3 inputs, as a lookup table.
struct Oracle {
    /// `[64, L, V]` log-probabilities; the mask column and impossible tokens at -1e6.
    table: Tensor,
    calls: Cell<usize>,
    sigmas: RefCell<Vec<Tensor>>,
}

impl Oracle {
    fn new(p: &[f64]) -> Oracle {
        let mut flat = Vec::with_capacity(64 * L * V as usize);
        for code in 0..64usize {
            let xt: [Option<usize>; L] = std::array::from_fn(|i| {
                let t = (code >> (2 * i)) & 3;
                (t < K).then_some(t)
            });
            let post = posterior(p, &xt);
            for row in post {
                // The mask column (last) is impossible, like SUBS's.
                for pv in row.into_iter().chain([0.0]) {
                    flat.push(if pv > 0.0 { pv.ln() } else { NEG_INFINITY });
                }
            }
        }
        Oracle {
            table: Tensor::from_slice(&flat)
                .view([64, L as i64, V])
                .to_kind(Kind::Float),
            calls: Cell::new(0),
            sigmas: RefCell::new(Vec::new()),
        }
    }
}

impl Denoiser for Oracle {
    fn log_probs(&self, x: &Tensor, sigma: &Tensor) -> Tensor {
        self.calls.set(self.calls.get() + 1);
        self.sigmas.borrow_mut().push(sigma.copy());
        let code = x.select(1, 0) + x.select(1, 1) * 4 + x.select(1, 2) * 16; // [B]
        self.table.index_select(0, &code)
    }

    fn calls(&self) -> usize {
        self.calls.get()
    }
}

fn diffusion(parameterization: Parameterization) -> Diffusion {
    Diffusion {
        parameterization,
        ..Diffusion::reference_subs(V, MASK)
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing frequencies

fn rows_of(tokens: &Tensor) -> Vec<Vec<i64>> {
    Vec::<Vec<i64>>::try_from(tokens.to_device(Device::Cpu)).unwrap()
}

/// Frequency of each of the 27 sequences; panics on a mask or an out-of-range token.
fn frequencies(tokens: &Tensor) -> Vec<f64> {
    let rows = rows_of(tokens);
    let mut counts = vec![0.0; CELLS];
    for r in &rows {
        let s: Vec<usize> = r
            .iter()
            .map(|&t| {
                assert!((0..K as i64).contains(&t), "token {t} in a finished sample");
                t as usize
            })
            .collect();
        counts[cell(&s)] += 1.0;
    }
    counts.iter().map(|c| c / rows.len() as f64).collect()
}

/// Largest |frequency - p| in standard errors over the cells with p > 0, and the chi-square
/// statistic (26 degrees of freedom for a full joint).
fn deviation(freq: &[f64], p: &[f64], n: usize) -> (f64, f64) {
    let mut z_max: f64 = 0.0;
    let mut chi2 = 0.0;
    for (f, q) in freq.iter().zip(p) {
        if *q == 0.0 {
            assert_eq!(*f, 0.0, "mass on an impossible cell");
            continue;
        }
        let se = (q * (1.0 - q) / n as f64).sqrt();
        z_max = z_max.max((f - q).abs() / se);
        chi2 += n as f64 * (f - q).powi(2) / q;
    }
    (z_max, chi2)
}

fn product_of_marginals(p: &[f64]) -> Vec<f64> {
    let m = posterior(p, &[None; L]);
    (0..CELLS)
        .map(|c| {
            let s = seq_of(c);
            (0..L).map(|i| m[i][s[i]]).product()
        })
        .collect()
}

/// The joint restricted to `fixed` (position, token) and renormalised.
fn conditional(p: &[f64], fixed: &[(usize, usize)]) -> Vec<f64> {
    let keep: Vec<f64> = (0..CELLS)
        .map(|c| {
            let s = seq_of(c);
            if fixed.iter().all(|&(i, t)| s[i] == t) {
                p[c]
            } else {
                0.0
            }
        })
        .collect();
    let z: f64 = keep.iter().sum();
    keep.iter().map(|x| x / z).collect()
}

fn run(
    den: &dyn Denoiser,
    diff: &Diffusion,
    spec: &SampleSpec,
    u: &mut dyn Uniforms,
) -> sample::SampleOut {
    sample::sample(den, diff, spec, Device::Cpu, u, true, &mut || {}).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Exactness

const N: i64 = 20_000;

#[test]
fn first_hitting_reproduces_the_joint_with_one_call_per_token() {
    let p = joint();
    let den = Oracle::new(&p);
    let diff = diffusion(Parameterization::Subs);
    let spec = SampleSpec::plain(Predictor::FirstHitting, 0, N, L as i64);
    let out = run(&den, &diff, &spec, &mut SeededUniforms::new(1));
    assert_eq!(out.forward_calls, L);
    assert_eq!(out.trajectory.len(), L + 1);
    for (i, x) in out.trajectory.iter().enumerate() {
        let masked = x.eq(MASK).sum_dim_intlist(-1, false, Kind::Int64);
        assert!(masked.eq((L - i) as i64).all().int64_value(&[]) == 1);
    }
    let (z, chi2) = deviation(&frequencies(&out.tokens), &p, N as usize);
    println!(
        "first_hitting: max deviation {z:.2} SE (tolerance {Z_TOL}), chi2 {chi2:.1} on 26 dof"
    );
    assert!(z < Z_TOL);
    // The sigma handed to the denoiser follows each row's own clock: finite, positive,
    // decreasing from sigma(1) = -ln(eps).
    let sigmas = den.sigmas.borrow();
    // The k-th unmasking of n = 3 happens at the k-th largest of 3 uniform masking points on
    // [0, mc(1)]: move chance mc(1) Beta(n - k + 1, k), whose mean and variance are known.
    let mc1 = 1.0 - 1e-3;
    for (k, s) in (1..=L).zip(sigmas.iter()) {
        let mc = s.to_kind(Kind::Double).neg().expm1().neg();
        let (a, b) = ((L - k + 1) as f64, k as f64);
        let mean = mc1 * a / (a + b);
        let sd = mc1 * (a * b / ((a + b).powi(2) * (a + b + 1.0))).sqrt();
        let got = mc.mean(Kind::Double).double_value(&[]);
        let z = (got - mean).abs() / (sd / (N as f64).sqrt());
        println!(
            "first_hitting: unmasking {k} at mean move chance {got:.4}, expected {mean:.4} ({z:.2} SE)"
        );
        assert!(z < Z_TOL, "unmasking {k}");
    }
    let start = -(1e-3f64).ln();
    let mut prev = Tensor::full([N], start + 1e-3, (Kind::Float, Device::Cpu));
    for s in sigmas.iter() {
        assert!(s.isfinite().all().int64_value(&[]) == 1);
        assert!(s.gt(0.0).all().int64_value(&[]) == 1);
        assert!(s.le_tensor(&prev).all().int64_value(&[]) == 1);
        prev = s.copy();
    }
}

#[test]
fn ddpm_with_many_steps_reproduces_the_joint() {
    let p = joint();
    let den = Oracle::new(&p);
    let diff = diffusion(Parameterization::Subs);
    let mut spec = SampleSpec::plain(Predictor::Ddpm, 1000, N, L as i64);
    // Same distribution as the reference draw (unit-tested in ddpm.rs), far fewer uniforms.
    spec.draws = DrawMode::Sparse;
    let out = run(&den, &diff, &spec, &mut SeededUniforms::new(2));
    let (z, chi2) = deviation(&frequencies(&out.tokens), &p, N as usize);
    println!("ddpm 1000 steps: max deviation {z:.2} SE (tolerance {Z_TOL}), chi2 {chi2:.1}");
    assert!(z < Z_TOL);
}

/// One step unmasks all three positions at once, each from its own marginal: the test above can
/// tell that apart from the joint.
#[test]
fn ddpm_with_one_step_gives_the_product_of_marginals_not_the_joint() {
    let p = joint();
    let den = Oracle::new(&p);
    let diff = diffusion(Parameterization::Subs);
    let spec = SampleSpec::plain(Predictor::Ddpm, 1, N, L as i64);
    let out = run(&den, &diff, &spec, &mut SeededUniforms::new(3));
    let freq = frequencies(&out.tokens);
    let (z_joint, _) = deviation(&freq, &p, N as usize);
    let (z_prod, _) = deviation(&freq, &product_of_marginals(&p), N as usize);
    println!("ddpm 1 step: {z_joint:.1} SE from the joint, {z_prod:.2} SE from the product");
    assert!(z_joint > 10.0 * Z_TOL);
    assert!(z_prod < Z_TOL);
}

#[test]
fn ddpm_cache_makes_ddpm_draws_with_fewer_calls() {
    let p = joint();
    let diff = diffusion(Parameterization::Subs);
    for draws in [DrawMode::Reference, DrawMode::Sparse] {
        let mut spec = SampleSpec::plain(Predictor::Ddpm, 200, 4, L as i64);
        spec.draws = draws;
        let mut rec = SeededUniforms::recording(4);
        let fresh = run(&Oracle::new(&p), &diff, &spec, &mut rec);
        let recorded = rec.record.unwrap();
        let replay = |predictor| {
            let den = Oracle::new(&p);
            let spec = SampleSpec {
                predictor,
                ..spec.clone()
            };
            let mut u = ReplayUniforms::new(recorded.iter().map(|t| t.copy()).collect());
            let out = run(&den, &diff, &spec, &mut u);
            assert_eq!(u.remaining(), 0, "{predictor:?} left draws unused");
            out
        };
        let ddpm = replay(Predictor::Ddpm);
        let cached = replay(Predictor::DdpmCache);
        assert!(ddpm.tokens.equal(&fresh.tokens));
        for (a, b) in ddpm.trajectory.iter().zip(&cached.trajectory) {
            assert!(a.equal(b), "{draws:?}: ddpm_cache left ddpm's path");
        }
        assert!(cached.tokens.equal(&ddpm.tokens));
        println!(
            "{draws:?}: ddpm {} calls, ddpm_cache {}",
            ddpm.forward_calls, cached.forward_calls
        );
        assert_eq!(ddpm.forward_calls, 201);
        // A step calls the network only after a step that changed x, and each change unmasks
        // at least one of the 4 x 3 positions: at most 1 + 12 calls, plus noise removal.
        assert!(cached.forward_calls <= 14);
    }
}

/// Per-row caching (`cache_rows`) follows the batch-wide cache's path draw for draw (the oracle
/// treats rows independently, as the network does) while evaluating far fewer rows.
#[test]
fn ddpm_cache_per_row_follows_the_batch_cache_with_fewer_rows() {
    let p = joint();
    let diff = diffusion(Parameterization::Subs);
    let mut spec = SampleSpec::plain(Predictor::DdpmCache, 200, 64, L as i64);
    spec.draws = DrawMode::Sparse;
    let mut rec = SeededUniforms::recording(21);
    let batch_wide = Oracle::new(&p);
    let a = run(&batch_wide, &diff, &spec, &mut rec);
    let recorded = rec.record.unwrap();
    spec.cache_rows = true;
    let per_row = Oracle::new(&p);
    let mut u = ReplayUniforms::new(recorded.iter().map(|t| t.copy()).collect());
    let b = run(&per_row, &diff, &spec, &mut u);
    assert_eq!(u.remaining(), 0);
    for (x, y) in a.trajectory.iter().zip(&b.trajectory) {
        assert!(x.equal(y), "per-row caching left the batch cache's path");
    }
    assert!(a.tokens.equal(&b.tokens));
    let rows = |o: &Oracle| -> i64 { o.sigmas.borrow().iter().map(|s| s.size()[0]).sum() };
    let (rows_a, rows_b) = (rows(&batch_wide), rows(&per_row));
    println!("rows evaluated: batch-wide cache {rows_a}, per-row cache {rows_b}");
    // Each row changes at most 3 times (3 positions), so it is evaluated at most 1 + 3 times,
    // plus the noise-removal pass over the batch.
    assert!(rows_b <= 64 * 4 + 64, "{rows_b}");
    assert!(rows_b * 4 < rows_a, "{rows_b} vs {rows_a}");
}

// ---------------------------------------------------------------------------------------------
// Confidence decoding

/// Most-confident-first argmax decoding computed on the joint directly: repeatedly commit the
/// masked position whose posterior mode is most probable, to that mode.
fn greedy(p: &[f64], start: [Option<usize>; L]) -> [usize; L] {
    let mut xt = start;
    while xt.iter().any(|t| t.is_none()) {
        let post = posterior(p, &xt);
        let mut best: Option<(f64, usize, usize)> = None;
        for i in (0..L).filter(|&i| xt[i].is_none()) {
            let (v, pv) = (0..K)
                .map(|v| (v, post[i][v]))
                .fold((0, -1.0), |a, b| if b.1 > a.1 { b } else { a });
            if let Some((bp, _, _)) = best {
                assert!((pv - bp).abs() > 1e-4, "the oracle ties two positions");
            }
            if best.is_none_or(|(bp, _, _)| pv > bp) {
                best = Some((pv, i, v));
            }
        }
        let (_, i, v) = best.unwrap();
        xt[i] = Some(v);
    }
    xt.map(|t| t.unwrap())
}

#[test]
fn confidence_with_a_tiny_nucleus_is_greedy_most_confident_first() {
    let p = joint();
    let diff = diffusion(Parameterization::Subs);
    let b = 8;
    let expected = greedy(&p, [None; L]);
    // Also when a position is held: decoding continues greedily around it.
    let held_expected = greedy(&p, [None, Some(2), None]);
    for rule in [ConfidenceRule::Schedule, ConfidenceRule::Threshold(2.0)] {
        for held in [false, true] {
            let den = Oracle::new(&p);
            let mut spec = SampleSpec::plain(Predictor::Confidence, L as i64, b, L as i64);
            spec.top_p = 1e-9;
            spec.confidence = rule;
            let want = if held {
                let tokens = Tensor::full([b, L as i64], 2, (Kind::Int64, Device::Cpu));
                let mask = Tensor::from_slice(&[false, true, false])
                    .view([1, 3])
                    .expand([b, 3], false);
                spec.held = Some(Held {
                    tokens,
                    held: mask.contiguous(),
                });
                held_expected
            } else {
                expected
            };
            let out = run(&den, &diff, &spec, &mut SeededUniforms::new(5));
            for r in rows_of(&out.tokens) {
                let got: Vec<usize> = r.iter().map(|&t| t as usize).collect();
                assert_eq!(got, want, "{rule:?}, held {held}");
            }
            // One commit per step: as many calls as free positions.
            assert_eq!(out.forward_calls, if held { L - 1 } else { L });
        }
    }
}

/// Committing everything in the first step draws each position from its own marginal.
#[test]
fn confidence_threshold_zero_commits_everything_at_once() {
    let p = joint();
    let den = Oracle::new(&p);
    let diff = diffusion(Parameterization::Subs);
    let mut spec = SampleSpec::plain(Predictor::Confidence, 5, N, L as i64);
    spec.confidence = ConfidenceRule::Threshold(0.0);
    let out = run(&den, &diff, &spec, &mut SeededUniforms::new(6));
    assert_eq!(out.forward_calls, 1);
    let (z, _) = deviation(
        &frequencies(&out.tokens),
        &product_of_marginals(&p),
        N as usize,
    );
    println!("confidence threshold 0: {z:.2} SE from the product of marginals");
    assert!(z < Z_TOL);
}

/// Independent positions with fixed distributions, any length: lets the commit counts and
/// thresholds be checked on longer rows.
struct Independent {
    /// `[L, V]` log-probabilities, mask column at -1e6.
    rows: Tensor,
    calls: Cell<usize>,
}

impl Denoiser for Independent {
    fn log_probs(&self, x: &Tensor, _sigma: &Tensor) -> Tensor {
        self.calls.set(self.calls.get() + 1);
        let b = x.size()[0];
        let lp = self.rows.unsqueeze(0).expand([b, -1, -1], false);
        // SUBS: an unmasked position is certain of its token.
        let onehot = Tensor::full_like(&lp, NEG_INFINITY).scatter_value(2, &x.unsqueeze(-1), 0.0);
        lp.where_self(&x.eq(MASK).unsqueeze(-1), &onehot)
    }

    fn calls(&self) -> usize {
        self.calls.get()
    }
}

fn independent(length: usize, seed: u64) -> (Independent, Vec<f64>) {
    let mut rng = SplitMix(seed);
    let mut flat = Vec::new();
    let mut top = Vec::new();
    for _ in 0..length {
        let w: Vec<f64> = (0..K).map(|_| 0.05 + rng.next_f64()).collect();
        let z: f64 = w.iter().sum();
        top.push(w.iter().cloned().fold(0.0, f64::max) / z);
        flat.extend(w.iter().map(|x| (x / z).ln()));
        flat.push(NEG_INFINITY);
    }
    let rows = Tensor::from_slice(&flat)
        .view([length as i64, V])
        .to_kind(Kind::Float);
    (
        Independent {
            rows,
            calls: Cell::new(0),
        },
        top,
    )
}

#[test]
fn confidence_schedule_commits_ceil_of_masked_over_steps_left() {
    let (length, steps) = (10usize, 4i64);
    let (den, _) = independent(length, 7);
    let diff = diffusion(Parameterization::Subs);
    let spec = SampleSpec::plain(Predictor::Confidence, steps, 16, length as i64);
    let out = run(&den, &diff, &spec, &mut SeededUniforms::new(8));
    let mut left = length as i64;
    let mut expected = vec![left];
    for s in (1..=steps).rev() {
        left -= (left + s - 1) / s;
        expected.push(left);
    }
    let got: Vec<Vec<i64>> = out
        .trajectory
        .iter()
        .map(|x| {
            rows_of(
                &x.eq(MASK)
                    .sum_dim_intlist(-1, false, Kind::Int64)
                    .unsqueeze(0),
            )[0]
            .clone()
        })
        .collect();
    for (step, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(
            g.iter().all(|c| c == e),
            "step {step}: masked {g:?}, expected {e}"
        );
    }
    assert_eq!(out.forward_calls, steps as usize);
}

/// With argmax candidates, confidence is each position's top probability, so the first step
/// commits exactly the positions at or above the threshold.
#[test]
fn confidence_threshold_commits_exactly_the_confident_positions() {
    let length = 12usize;
    let (den, top) = independent(length, 9);
    let diff = diffusion(Parameterization::Subs);
    let mut sorted = top.clone();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
    // Halfway between the 4th and 5th most confident: 4 commits in step one.
    let c = (sorted[3] + sorted[4]) / 2.0;
    let mut spec = SampleSpec::plain(Predictor::Confidence, 20, 4, length as i64);
    spec.top_p = 1e-9;
    spec.confidence = ConfidenceRule::Threshold(c);
    let out = run(&den, &diff, &spec, &mut SeededUniforms::new(10));
    let first = rows_of(&out.trajectory[1].ne(MASK).to_kind(Kind::Int64));
    for r in first {
        let committed: Vec<bool> = r.iter().map(|&v| v == 1).collect();
        let want: Vec<bool> = top.iter().map(|&t| t >= c).collect();
        assert_eq!(committed, want);
    }
    // Later steps (nothing else reaches c) commit one position each, the most confident first.
    assert_eq!(out.forward_calls, 1 + length - 4);
}

// ---------------------------------------------------------------------------------------------
// Held positions

#[test]
fn a_held_prefix_is_kept_and_the_rest_follows_the_conditional() {
    let p = joint();
    let diff = diffusion(Parameterization::Subs);
    let prefix = Tensor::full([N, 1], 1, (Kind::Int64, Device::Cpu));
    for (predictor, steps) in [(Predictor::FirstHitting, 0), (Predictor::Ddpm, 500)] {
        let den = Oracle::new(&p);
        let mut spec = SampleSpec::plain(predictor, steps, N, L as i64);
        spec.draws = DrawMode::Sparse;
        spec.held = Some(Held::prefix(&prefix, L as i64));
        let out = run(&den, &diff, &spec, &mut SeededUniforms::new(11));
        assert!(out.tokens.select(1, 0).eq(1).all().int64_value(&[]) == 1);
        let (z, _) = deviation(
            &frequencies(&out.tokens),
            &conditional(&p, &[(0, 1)]),
            N as usize,
        );
        println!("{predictor:?} with prefix [1]: max deviation {z:.2} SE");
        assert!(z < Z_TOL, "{predictor:?}");
        if predictor == Predictor::FirstHitting {
            assert_eq!(out.forward_calls, L - 1);
        }
    }
}

#[test]
fn first_hitting_infills_around_a_held_middle() {
    let p = joint();
    let diff = diffusion(Parameterization::Subs);
    let den = Oracle::new(&p);
    let mut spec = SampleSpec::plain(Predictor::FirstHitting, 0, N, L as i64);
    let mask = Tensor::from_slice(&[false, true, false])
        .view([1, 3])
        .expand([N, 3], false);
    spec.held = Some(Held {
        tokens: Tensor::full([N, L as i64], 2, (Kind::Int64, Device::Cpu)),
        held: mask.contiguous(),
    });
    let out = run(&den, &diff, &spec, &mut SeededUniforms::new(12));
    let (z, _) = deviation(
        &frequencies(&out.tokens),
        &conditional(&p, &[(1, 2)]),
        N as usize,
    );
    println!("first_hitting infilling around [_, 2, _]: max deviation {z:.2} SE");
    assert!(z < Z_TOL);
}

/// A non-SUBS denoiser that ignores its input and prefers token 0 everywhere: the argmax of
/// ddpm's noise removal would overwrite held positions, so only explicit pinning keeps them.
struct Rogue {
    calls: Cell<usize>,
}

impl Denoiser for Rogue {
    fn log_probs(&self, x: &Tensor, _sigma: &Tensor) -> Tensor {
        self.calls.set(self.calls.get() + 1);
        let (b, l) = x.size2().unwrap();
        let row = Tensor::from_slice(&[0.7f32, 0.2, 0.1, 1e-30]).log();
        row.view([1, 1, V]).expand([b, l, V], false).contiguous()
    }

    fn calls(&self) -> usize {
        self.calls.get()
    }
}

#[test]
fn no_predictor_changes_a_held_position() {
    let (b, length) = (64i64, 6i64);
    let mut rng = SplitMix(13);
    let held: Vec<bool> = (0..b * length).map(|_| rng.next_f64() < 0.5).collect();
    let tokens: Vec<i64> = (0..b * length)
        .map(|_| 1 + (rng.next_u64() % 2) as i64)
        .collect();
    let held = Held {
        tokens: Tensor::from_slice(&tokens).view([b, length]),
        held: Tensor::from_slice(&held).view([b, length]),
    };
    let (oracle, _) = independent(length as usize, 14);
    let rogue = Rogue {
        calls: Cell::new(0),
    };
    let subs = diffusion(Parameterization::Subs);
    let d3pm = diffusion(Parameterization::D3pm);
    let cases: [(&dyn Denoiser, &Diffusion, Predictor); 7] = [
        (&oracle, &subs, Predictor::Ddpm),
        (&oracle, &subs, Predictor::DdpmCache),
        (&oracle, &subs, Predictor::Analytic),
        (&oracle, &subs, Predictor::FirstHitting),
        (&oracle, &subs, Predictor::Confidence),
        (&rogue, &d3pm, Predictor::Ddpm),
        (&rogue, &d3pm, Predictor::Confidence),
    ];
    for (den, diff, predictor) in cases {
        let mut spec = SampleSpec::plain(predictor, 8, b, length);
        spec.held = Some(held.clone());
        let out = run(den, diff, &spec, &mut SeededUniforms::new(15));
        for (i, x) in out.trajectory.iter().chain([&out.tokens]).enumerate() {
            let kept = x
                .masked_select(&held.held)
                .equal(&held.tokens.masked_select(&held.held));
            assert!(
                kept,
                "{predictor:?} on {:?}: state {i} changed a held position",
                diff.parameterization
            );
        }
    }
}

#[test]
fn bad_settings_are_refused_before_sampling() {
    let p = joint();
    let den = Oracle::new(&p);
    let diff = diffusion(Parameterization::Subs);
    let mut u = SeededUniforms::new(16);
    let base = SampleSpec::plain(Predictor::Ddpm, 4, 2, L as i64);
    let bad = [
        SampleSpec {
            temperature: 0.0,
            ..base.clone()
        },
        SampleSpec {
            top_p: 0.0,
            ..base.clone()
        },
        SampleSpec {
            predictor: Predictor::Analytic,
            temperature: 0.5,
            ..base.clone()
        },
        SampleSpec {
            held: Some(Held::prefix(
                &Tensor::full([2, 1], MASK, (Kind::Int64, Device::Cpu)),
                3,
            )),
            ..base.clone()
        },
        SampleSpec {
            held: Some(Held::prefix(
                &Tensor::full([3, 1], 0, (Kind::Int64, Device::Cpu)),
                3,
            )),
            ..base.clone()
        },
    ];
    for spec in bad {
        assert!(
            sample::sample(&den, &diff, &spec, Device::Cpu, &mut u, false, &mut || {}).is_err()
        );
    }
    assert_eq!(den.calls(), 0);
}

#[test]
fn semi_ar_continues_a_prompt() {
    use mdlm::sample::semi_ar::{SemiArSpec, sample_semi_ar_prompted};
    let p = joint();
    let diff = diffusion(Parameterization::Subs);
    // One window of the whole length: the output is that window, drawn given its prompt.
    let den = Oracle::new(&p);
    let spec = SemiArSpec {
        batch: N,
        length: L as i64,
        stride_length: L as i64,
        num_strides: 0,
        dt: 1.0 / 250.0,
    };
    let prompt = Tensor::full([N, 1], 2, (Kind::Int64, Device::Cpu));
    let mut u = SeededUniforms::new(17);
    let out =
        sample_semi_ar_prompted(&den, &diff, &spec, Some(&prompt), Device::Cpu, &mut u).unwrap();
    let (z, _) = deviation(
        &frequencies(&out.tokens),
        &conditional(&p, &[(0, 2)]),
        N as usize,
    );
    println!("semi_ar with prompt [2]: max deviation {z:.2} SE");
    assert!(z < Z_TOL);
    // Several windows: the prompt opens the output, and the stride structure is unchanged.
    let (den, _) = independent(6, 18);
    let spec = SemiArSpec {
        batch: 5,
        length: 6,
        stride_length: 2,
        num_strides: 2,
        dt: 0.1,
    };
    let prompt = Tensor::from_slice(&[2i64, 0, 1, 1])
        .view([1, 4])
        .expand([5, 4], false);
    let out =
        sample_semi_ar_prompted(&den, &diff, &spec, Some(&prompt), Device::Cpu, &mut u).unwrap();
    assert_eq!(out.tokens.size(), [5, 3 * 2 + 4]);
    assert!(out.tokens.narrow(1, 0, 4).equal(&prompt));
    assert_eq!(out.tokens.eq(MASK).any().int64_value(&[]), 0);
}

/// With independent positions every exact sampler draws each position from its own marginal, so
/// a temperature of 1/2 must give frequencies proportional to p^2, and a nucleus below the top
/// probability must give the argmax alone.
#[test]
fn temperature_and_nucleus_reach_the_draws() {
    let length = 4usize;
    let (den, _) = independent(length, 19);
    let marg: Vec<Vec<f64>> = Vec::<Vec<f64>>::try_from(den.rows.exp().to_kind(Kind::Double))
        .unwrap()
        .into_iter()
        .map(|r| r[..K].to_vec())
        .collect();
    let diff = diffusion(Parameterization::Subs);
    for predictor in [
        Predictor::FirstHitting,
        Predictor::Ddpm,
        Predictor::DdpmCache,
        Predictor::Confidence,
    ] {
        // One confidence step commits every position from its own filtered marginal.
        let steps = if predictor == Predictor::Confidence {
            1
        } else {
            20
        };
        let mut spec = SampleSpec::plain(predictor, steps, N, length as i64);
        spec.temperature = 0.5;
        let out = run(&den, &diff, &spec, &mut SeededUniforms::new(20));
        let rows = rows_of(&out.tokens);
        let mut z_max: f64 = 0.0;
        for (i, m) in marg.iter().enumerate() {
            let z2: f64 = m.iter().map(|p| p * p).sum();
            for (v, p) in m.iter().enumerate() {
                let q = p * p / z2;
                let f = rows.iter().filter(|r| r[i] == v as i64).count() as f64 / N as f64;
                z_max = z_max.max((f - q).abs() / (q * (1.0 - q) / N as f64).sqrt());
            }
        }
        println!("{predictor:?} at temperature 0.5: max deviation {z_max:.2} SE");
        assert!(z_max < Z_TOL, "{predictor:?}");
        let mut spec = SampleSpec::plain(predictor, steps, 64, length as i64);
        spec.top_p = 0.3;
        let out = run(&den, &diff, &spec, &mut SeededUniforms::new(21));
        let argmax = den
            .rows
            .argmax(-1, false)
            .unsqueeze(0)
            .expand([64, -1], false);
        assert!(out.tokens.equal(&argmax), "{predictor:?} with top_p 0.3");
    }
}
