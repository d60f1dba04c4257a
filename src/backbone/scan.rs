//! The selective scan of Mamba (Gu & Dao, 2023, "Mamba: Linear-Time Sequence Modeling with
//! Selective State Spaces"), as `selective_scan_ref` in mamba-ssm 1.1.4 computes it:
//!
//! ```text
//! h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t      h: [B, D, N], h_0 = 0
//! y_t = sum_n C_t[n] h_t[., n]
//! ```
//!
//! with a diagonal `A [D, N]` (one decay per channel and state), and `delta, u [B, L, D]`,
//! `B, C [B, L, N]` per token. The `D * u` skip and the `silu(z)` gate are the caller's.
//!
//! [`sequential`] is the literal recurrence in plain tch ops, one token at a time: the oracle.
//! [`chunked`] is the fast form, in `scan.cpp`: a libtorch autograd function over chunks of `T`
//! tokens whose backward pass recomputes what it needs chunk by chunk (see Memory below). It
//! solves a chunk in one of two ways.
//!
//! On float32/float64 CPU tensors, by the recurrence itself, a loop over the `(batch, channel)`
//! lanes on libtorch's intra-op threads, with each chunk's decays `exp(delta_t A)` from libtorch's
//! vectorised `exp`. Exact for any decay, as `exp(delta A) <= 1` never overflows.
//!
//! Elsewhere (a GPU, bf16; [`chunked_closed_form`] forces it anywhere), in closed form: all `T`
//! tokens at once with cumulative sums, carrying only the `[B, D, N]` state between chunks:
//!
//! ```text
//! S_t = sum_{s<=t} delta_s A                   (log-decay since the chunk start, <= 0)
//! h_t = exp(S_t) h_0 + sum_{s<=t} exp(S_t - S_s) x_s,        x_s = delta_s B_s u_s
//!     = exp(S_t) (h_0 + cumsum_s(exp(-S_s) x_s))
//! ```
//!
//! `exp(-S_s)` grows with the decay inside the chunk and overflows float32 past ~e^88, and its
//! rounding grows with |S|. So a chunk is solved in closed form only while its largest decay
//! (over batch, channels and states) stays within [`MAX_CHUNK_DECAY`]; otherwise it is halved,
//! down to single tokens, which take the recurrence step itself ([`spans`] says which). Exact
//! for any input; as fast as the closed form while decays are moderate, which is where a Mamba
//! layer starts (|delta A| <= ~1.6 per token at initialisation). The check reads the decays of
//! all chunks of one halving level from the device at once: one read per call while no chunk
//! needs halving. (A log-space form, `logcumsumexp` over the sign-split x, is stable without the
//! check but was ~10x slower than the token loop on CPU, so it is not used.) Its backward pass is
//! the reverse scan `dL/dh_t = C_t dL/dy_t + exp(delta_{t+1} A) dL/dh_{t+1}` in the same closed
//! form over the same spans, `dL/dh_t = exp(-S_t) (sum_{s>=t} exp(S_s) q_s + exp(S_T) carry)`;
//! every input's gradient is then a product or a contraction with the recomputed states. (On a
//! CPU the closed form's `[B, T, D, N]` temporaries cost a memory pass per op, cumulative sums
//! along tokens worst of all: `cargo bench --bench dimamba` shows it 5-10x slower than the loop.)
//!
//! Memory: the forward pass keeps the inputs and the `[B, D, N]` state before each chunk (closed
//! form: each span, so up to one per token only where fast decay halves them), O(B (L/T) D N);
//! the backward pass walks the chunks in reverse, recomputing each one's states from its saved
//! start state. Temporaries exist for one chunk at a time: the loop's `[B, T, D, N]` decays plus
//! a `[T + 1, N]` buffer per lane, the closed form's few `[B, T, D, N]` products. Plain autograd
//! over the closed form's ops held five `[B, L, D, N]` tensors until the backward pass;
//! [`sequential`] stays plain tch ops (it is the oracle) and has that O(B L D N) cost.

use std::ffi::{c_char, c_int, c_void};
use tch::Tensor;

/// How the selective scan is evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanMode {
    /// [`chunked`] over chunks of this many tokens (the default): the unit of recomputation in
    /// the backward pass, and of the closed form off the CPU.
    Chunked(i64),
    /// One token at a time: the oracle the chunked form is tested against.
    Sequential,
}

/// The default chunk: large enough that a 1024-token sequence takes 16 steps of the chunk loop
/// and saves 15 states, small enough that one chunk's `[B, T, D, N]` temporaries stay a few MB
/// at `tiny-dimamba` width.
pub const DEFAULT_CHUNK: i64 = 64;

impl Default for ScanMode {
    fn default() -> Self {
        ScanMode::Chunked(DEFAULT_CHUNK)
    }
}

/// `u, delta [B, L, D]`, `a [D, N]` (negative), `b, c [B, L, N]` → `y [B, L, D]`, in the inputs'
/// floating kind.
pub fn selective_scan(
    u: &Tensor,
    delta: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    mode: ScanMode,
) -> Tensor {
    match mode {
        ScanMode::Chunked(t) => chunked(u, delta, a, b, c, t),
        ScanMode::Sequential => sequential(u, delta, a, b, c),
    }
}

/// The recurrence token by token.
pub fn sequential(u: &Tensor, delta: &Tensor, a: &Tensor, b: &Tensor, c: &Tensor) -> Tensor {
    let (bs, len, d) = u.size3().expect("u is [B, L, D]");
    let n = a.size()[1];
    let mut h = Tensor::zeros([bs, d, n], (u.kind(), u.device()));
    let mut ys = Vec::with_capacity(len as usize);
    for t in 0..len {
        let dt = delta.select(1, t).unsqueeze(-1); // [B, D, 1]
        let decay = (&dt * a).exp(); // [B, D, N]
        let input = (dt * u.select(1, t).unsqueeze(-1)) * b.select(1, t).unsqueeze(1); // [B, D, N]
        h = decay * h + input;
        ys.push((&h * c.select(1, t).unsqueeze(1)).sum_dim_intlist(-1, false, u.kind())); // [B, D]
    }
    Tensor::stack(&ys, 1) // [B, L, D]
}

/// The largest decay, `max |S|` inside a chunk, solved in closed form: `exp(60)` ~ 1e26 leaves
/// float32 room for |x| up to ~1e12, and rounding of S at that magnitude (~4e-6) stays well
/// inside float32 forward tolerances.
pub const MAX_CHUNK_DECAY: f64 = 60.0;

/// The scan over chunks of `chunk` tokens (the last chunk may be shorter), with the recomputing
/// backward pass; see the module documentation. On float32/float64 CPU tensors this is the
/// recurrence as a loop (exact at any decay), elsewhere the closed form over spans. Panics, as
/// tch's own ops do, on inputs of the wrong shapes.
pub fn chunked(
    u: &Tensor,
    delta: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    chunk: i64,
) -> Tensor {
    bridge(u, delta, a, b, c, chunk, false)
}

/// [`chunked`] in the closed form over [`spans`] whatever the device: what a GPU runs, here for
/// tests and benches on any machine.
pub fn chunked_closed_form(
    u: &Tensor,
    delta: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    chunk: i64,
) -> Tensor {
    bridge(u, delta, a, b, c, chunk, true)
}

fn bridge(
    u: &Tensor,
    delta: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    chunk: i64,
    closed_form: bool,
) -> Tensor {
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: the five tensors are live for the call; on success `out` is a fresh tensor that
    // nothing else owns.
    let err = unsafe {
        mdlm_selective_scan_chunked(
            u.as_ptr().cast(),
            delta.as_ptr().cast(),
            a.as_ptr().cast(),
            b.as_ptr().cast(),
            c.as_ptr().cast(),
            chunk,
            MAX_CHUNK_DECAY,
            closed_form.into(),
            &mut out,
        )
    };
    check(err).unwrap_or_else(|e| panic!("chunked selective scan (chunk {chunk}): {e}"));
    // SAFETY: as above.
    unsafe { Tensor::from_ptr(out.cast()) }
}

/// The `(start, len)` token spans [`chunked_closed_form`] solves for these decays: chunks of
/// `chunk` tokens, halved where their decay exceeds [`MAX_CHUNK_DECAY`]. The state before each
/// span but the first is what its forward pass saves for the backward, `spans(..).len() - 1`
/// states of `[B, D, N]`. (The CPU loop saves one per chunk after the first.)
pub fn spans(delta: &Tensor, a: &Tensor, chunk: i64) -> Vec<(i64, i64)> {
    let mut buf: *mut i64 = std::ptr::null_mut();
    let mut n = 0usize;
    // SAFETY: both tensors are live for the call; on success `buf` holds `2 n` int64 that we
    // free below.
    let err = unsafe {
        mdlm_selective_scan_spans(
            delta.as_ptr().cast(),
            a.as_ptr().cast(),
            chunk,
            MAX_CHUNK_DECAY,
            &mut buf,
            &mut n,
        )
    };
    check(err).unwrap_or_else(|e| panic!("selective scan spans (chunk {chunk}): {e}"));
    if buf.is_null() {
        return Vec::new();
    }
    // SAFETY: `buf` holds `2 n` initialised int64, malloc'd by the bridge and freed once here.
    let pairs = unsafe { std::slice::from_raw_parts(buf, 2 * n) }
        .chunks(2)
        .map(|p| (p[0], p[1]))
        .collect();
    unsafe { libc_free(buf.cast()) };
    pairs
}

unsafe extern "C" {
    fn mdlm_selective_scan_chunked(
        u: *const c_void,
        delta: *const c_void,
        a: *const c_void,
        b: *const c_void,
        c: *const c_void,
        chunk: i64,
        max_decay: f64,
        closed_form: c_int,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn mdlm_selective_scan_spans(
        delta: *const c_void,
        a: *const c_void,
        chunk: i64,
        max_decay: f64,
        spans: *mut *mut i64,
        n: *mut usize,
    ) -> *mut c_char;
    #[link_name = "free"]
    fn libc_free(p: *mut c_void);
}

/// The bridge's errors are malloc'd C strings, as the c10d bridge's are.
fn check(e: *mut c_char) -> Result<(), String> {
    crate::dist::ffi::check(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Deterministic pseudo-random values in (-1, 1) from a seed (no global RNG: tests run in
    /// parallel threads).
    fn wavy(shape: &[i64], seed: f64, kind: Kind) -> Tensor {
        let n: i64 = shape.iter().product();
        let i = Tensor::arange(n, (Kind::Double, Device::Cpu));
        ((&i * 0.7137 + seed).sin() * 43758.5453)
            .frac()
            .view(shape)
            .to_kind(kind)
    }

    struct Inputs {
        u: Tensor,
        delta: Tensor,
        a: Tensor,
        b: Tensor,
        c: Tensor,
    }

    /// Shapes and value ranges as in a Mamba layer: delta = softplus(.) > 0, A = -exp(A_log).
    /// `decay` scales A, to push chunks into the range where a naive exp(-S) would overflow.
    fn inputs(bs: i64, len: i64, d: i64, n: i64, seed: f64, decay: f64, kind: Kind) -> Inputs {
        Inputs {
            u: wavy(&[bs, len, d], seed, kind),
            delta: (wavy(&[bs, len, d], seed + 1.0, kind) * 2.0).softplus(),
            a: -(wavy(&[d, n], seed + 2.0, kind) + 1.5).exp() * decay,
            b: wavy(&[bs, len, n], seed + 3.0, kind),
            c: wavy(&[bs, len, n], seed + 4.0, kind),
        }
    }

    type Form = fn(&Tensor, &Tensor, &Tensor, &Tensor, &Tensor, i64) -> Tensor;

    /// Both evaluations of the chunked scan: the CPU loop and the closed form a GPU runs.
    const FORMS: [(&str, Form); 2] = [("loop", chunked), ("closed form", chunked_closed_form)];

    fn oracle(u: &Tensor, delta: &Tensor, a: &Tensor, b: &Tensor, c: &Tensor, _: i64) -> Tensor {
        sequential(u, delta, a, b, c)
    }

    fn max_rel_err(got: &Tensor, want: &Tensor) -> f64 {
        let scale = f64::try_from(want.abs().max()).unwrap().max(1e-12);
        f64::try_from((got - want).abs().max()).unwrap() / scale
    }

    #[test]
    fn chunked_equals_sequential_forward() {
        // Lengths below, at, between and above multiples of the chunk sizes.
        for (case, &(len, chunk)) in [(1, 4), (7, 4), (8, 4), (13, 5), (33, 8), (40, 64), (70, 16)]
            .iter()
            .enumerate()
        {
            // Slow decay: every chunk in closed form; fast decay: chunks split down to tokens.
            for (kind, tol, decay) in [
                (Kind::Double, 1e-12, 0.01),
                (Kind::Double, 1e-12, 1.0),
                (Kind::Float, 2e-5, 0.01),
                (Kind::Float, 2e-5, 1.0),
            ] {
                let x = inputs(2, len, 6, 4, case as f64 * 10.0, decay, kind);
                let want = sequential(&x.u, &x.delta, &x.a, &x.b, &x.c);
                for (form, f) in FORMS {
                    let got = f(&x.u, &x.delta, &x.a, &x.b, &x.c, chunk);
                    assert_eq!(got.size(), [2, len, 6]);
                    assert_eq!(got.kind(), kind);
                    let err = max_rel_err(&got, &want);
                    assert!(
                        err < tol,
                        "{form} L={len} chunk={chunk} {kind:?} decay {decay}: relative error {err}"
                    );
                }
            }
        }
    }

    /// Decays of hundreds per chunk, where the closed form exp(S_t) * cumsum(exp(-S_s) x_s) over
    /// the whole chunk would overflow float32: the chunk is split and stays finite and exact.
    #[test]
    fn chunked_is_stable_under_fast_decay() {
        let x = inputs(1, 48, 5, 3, 3.0, 1.0, Kind::Float);
        let s = (x.delta.unsqueeze(-1) * &x.a).cumsum(1, None::<Kind>);
        assert!(
            !bool::try_from((-&s).exp().isfinite().all()).unwrap(),
            "test inputs decay too slowly to overflow the factored form"
        );
        let want = sequential(&x.u, &x.delta, &x.a, &x.b, &x.c);
        for (form, f) in FORMS {
            let got = f(&x.u, &x.delta, &x.a, &x.b, &x.c, 48);
            assert!(bool::try_from(got.isfinite().all()).unwrap(), "{form}");
            let err = max_rel_err(&got, &want);
            assert!(err < 5e-5, "{form}: relative error {err}");
        }
    }

    /// The gradients of `sum(weight * scan(x))` with respect to every input of `x`.
    fn grads(x: &Inputs, scan: Form, chunk: i64, weight: &Tensor) -> Vec<Tensor> {
        let leaves: Vec<Tensor> = [&x.u, &x.delta, &x.a, &x.b, &x.c]
            .iter()
            .map(|t| t.detach().set_requires_grad(true))
            .collect();
        let y = scan(
            &leaves[0], &leaves[1], &leaves[2], &leaves[3], &leaves[4], chunk,
        );
        (y * weight).sum(Kind::Double).backward();
        leaves.iter().map(|l| l.grad()).collect()
    }

    #[test]
    fn chunked_gradients_equal_sequential_gradients() {
        for (len, chunk) in [(9, 4), (16, 16), (21, 8)] {
            let x = inputs(2, len, 5, 3, len as f64, 1.0, Kind::Double);
            let w = wavy(&[2, len, 5], 99.0, Kind::Double);
            let want = grads(&x, oracle, 0, &w);
            for (form, f) in FORMS {
                let got = grads(&x, f, chunk, &w);
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    let err = max_rel_err(g, e);
                    assert!(err < 1e-10, "{form} L={len} chunk={chunk} input {i}: {err}");
                }
            }
        }
    }

    /// The backward pass recomputes each span from its saved start state: over many chunks, with
    /// decays slow enough for whole chunks, fast enough to halve some, and fast enough to halve
    /// some down to single tokens (where exp(-S) alone would overflow float32),
    /// its gradients equal autograd's through the token-by-token oracle.
    #[test]
    fn recomputing_backward_equals_sequential_gradients_over_many_spans() {
        let (len, chunk) = (200, 16);
        for (kind, tol, decay) in [
            (Kind::Double, 1e-10, 0.01),
            (Kind::Double, 1e-10, 1.0),
            (Kind::Float, 1e-4, 0.01),
            (Kind::Float, 1e-4, 1.0),
            (Kind::Double, 1e-10, 8.0),
            (Kind::Float, 1e-4, 8.0),
        ] {
            let x = inputs(2, len, 6, 4, 7.0, decay, kind);
            let plan = spans(&x.delta, &x.a, chunk);
            let whole_chunks = ((len + chunk - 1) / chunk) as usize;
            if decay < 0.1 {
                assert_eq!(
                    plan.len(),
                    whole_chunks,
                    "{kind:?}: slow decay halved a chunk"
                );
            } else {
                assert!(
                    plan.len() > whole_chunks,
                    "{kind:?}: fast decay halved no chunk"
                );
            }
            if decay > 4.0 {
                assert!(
                    plan.iter().any(|&(_, t)| t == 1),
                    "{kind:?}: decay {decay} did not halve down to single tokens: {plan:?}"
                );
            }
            let w = wavy(&[2, len, 6], 11.0, kind);
            let want = grads(&x, oracle, 0, &w);
            for (form, f) in FORMS {
                let got = grads(&x, f, chunk, &w);
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.kind(), kind);
                    assert_eq!(g.size(), e.size());
                    let err = max_rel_err(g, e);
                    assert!(err < tol, "{form} {kind:?} decay {decay} input {i}: {err}");
                }
            }
        }
    }

    /// Higher-order gradients would silently be wrong (the backward pass records no graph), so
    /// asking for them is an error rather than a result.
    #[test]
    fn double_backward_is_refused() {
        let x = inputs(1, 9, 3, 2, 2.0, 1.0, Kind::Double);
        for (form, f) in FORMS {
            let u = x.u.detach().set_requires_grad(true);
            let y = f(&u, &x.delta, &x.a, &x.b, &x.c, 4).sum(Kind::Double);
            let err = Tensor::f_run_backward(&[y], &[&u], true, true).unwrap_err();
            assert!(err.to_string().contains("double backward"), "{form}: {err}");
        }
    }

    /// The spans tile the sequence in order, chunk by chunk, halving only where decay demands.
    #[test]
    fn spans_tile_the_sequence() {
        for (len, chunk, decay) in [(1, 4, 1.0), (37, 8, 0.01), (37, 8, 1.0), (100, 64, 1.0)] {
            let x = inputs(2, len, 5, 3, 1.0, decay, Kind::Float);
            let plan = spans(&x.delta, &x.a, chunk);
            let mut next = 0;
            for &(start, t) in &plan {
                assert_eq!(start, next, "L={len} chunk={chunk}: {plan:?}");
                assert!(t >= 1 && t <= chunk && start / chunk == (start + t - 1) / chunk);
                next = start + t;
            }
            assert_eq!(next, len);
        }
    }

    /// Central finite differences in float64 against the chunked scan's autograd gradient, for
    /// every element of every input of a tiny case.
    #[test]
    fn chunked_gradients_match_finite_differences() {
        let x = inputs(1, 7, 3, 2, 5.0, 1.0, Kind::Double);
        let w = wavy(&[1, 7, 3], 42.0, Kind::Double);
        for (form, scan) in FORMS {
            let analytic = grads(&x, scan, 3, &w);
            let f = |vals: &[Tensor]| -> f64 {
                let y = scan(&vals[0], &vals[1], &vals[2], &vals[3], &vals[4], 3);
                f64::try_from((y * &w).sum(Kind::Double)).unwrap()
            };
            check_finite_differences(form, &x, &analytic, f);
        }
    }

    fn check_finite_differences(
        form: &str,
        x: &Inputs,
        analytic: &[Tensor],
        f: impl Fn(&[Tensor]) -> f64,
    ) {
        let inputs = [&x.u, &x.delta, &x.a, &x.b, &x.c];
        let eps = 1e-6;
        for (k, input) in inputs.iter().enumerate() {
            let flat: Vec<f64> = Vec::try_from(input.flatten(0, -1)).unwrap();
            let g: Vec<f64> = Vec::try_from(analytic[k].flatten(0, -1)).unwrap();
            for j in 0..flat.len() {
                let perturbed = |delta: f64| -> f64 {
                    let mut v = flat.clone();
                    v[j] += delta;
                    let mut vals: Vec<Tensor> = inputs.iter().map(|t| t.shallow_clone()).collect();
                    vals[k] = Tensor::from_slice(&v).view(input.size().as_slice());
                    f(&vals)
                };
                let fd = (perturbed(eps) - perturbed(-eps)) / (2.0 * eps);
                assert!(
                    (fd - g[j]).abs() <= 1e-6 + 1e-5 * fd.abs(),
                    "{form} input {k} element {j}: finite difference {fd}, autograd {}",
                    g[j]
                );
            }
        }
    }
}
