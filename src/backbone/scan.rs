//! The selective scan of Mamba (Gu & Dao, 2023, "Mamba: Linear-Time Sequence Modeling with
//! Selective State Spaces"), as `selective_scan_ref` in mamba-ssm 1.1.4 computes it, in plain tch
//! ops so it runs wherever libtorch does:
//!
//! ```text
//! h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t      h: [B, D, N], h_0 = 0
//! y_t = sum_n C_t[n] h_t[., n]
//! ```
//!
//! with a diagonal `A [D, N]` (one decay per channel and state), and `delta, u [B, L, D]`,
//! `B, C [B, L, N]` per token. The `D * u` skip and the `silu(z)` gate are the caller's.
//!
//! [`sequential`] is the literal recurrence, one token at a time: the oracle. [`chunked`] is the
//! fast form: a loop over chunks of `T` tokens that carries only the `[B, D, N]` state between
//! chunks, and inside a chunk solves the recurrence for all `T` tokens at once with cumulative
//! sums:
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
//! down to single tokens, which take the recurrence step itself. Exact for any input; as fast as
//! the closed form while decays are moderate, which is where a Mamba layer starts (|delta A| <=
//! ~1.6 per token at initialisation). The check costs one device-to-host read per chunk.
//! (A log-space form, `logcumsumexp` over the sign-split x, is stable without the check but was
//! ~10x slower than the token loop on CPU, so it is not used.)
//!
//! Memory: without autograd, a chunk's temporaries are `[B, T, D, N]` and the only state kept
//! between chunks is `[B, D, N]`, whatever the length. With autograd every chunk's temporaries
//! are saved for the backward pass, so training holds O(B L D N) activations, as any
//! autograd formulation of this scan does (the CUDA kernel of mamba-ssm recomputes them in its
//! backward pass instead; tch offers no custom backward to do the same).

use tch::{Kind, Tensor};

/// How the selective scan is evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanMode {
    /// Log-space cumulative sums over chunks of this many tokens (the default).
    Chunked(i64),
    /// One token at a time: the oracle the chunked form is tested against.
    Sequential,
}

/// The default chunk: large enough that a 1024-token sequence takes 16 steps of the chunk loop,
/// small enough that one chunk's `[B, T, D, N]` temporaries stay a few tens of MB at
/// `tiny-dimamba` width.
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

/// The scan over chunks of `chunk` tokens (the last chunk may be shorter); see the module
/// documentation.
pub fn chunked(
    u: &Tensor,
    delta: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    chunk: i64,
) -> Tensor {
    assert!(chunk > 0, "scan chunk must be positive, got {chunk}");
    let len = u.size()[1];
    let scan = Scan {
        u,
        delta,
        a,
        b,
        c,
        fastest: tch::no_grad(|| a.abs().amax([-1], false)), // [D]: the fastest state per channel
    };
    let mut h = None;
    let mut ys = Vec::with_capacity(((len + chunk - 1) / chunk) as usize);
    let mut start = 0;
    while start < len {
        let t = chunk.min(len - start);
        scan.span(start, t, &mut h, &mut ys);
        start += t;
    }
    Tensor::cat(&ys, 1) // [B, L, D]
}

struct Scan<'a> {
    u: &'a Tensor,
    delta: &'a Tensor,
    a: &'a Tensor,
    b: &'a Tensor,
    c: &'a Tensor,
    fastest: Tensor,
}

impl Scan<'_> {
    /// Tokens `start..start + t` from state `h` (None = zeros): pushes their outputs `[B, t, D]`
    /// and leaves the state after the last one in `h`.
    fn span(&self, start: i64, t: i64, h: &mut Option<Tensor>, ys: &mut Vec<Tensor>) {
        if t == 1 {
            let dt = self.delta.select(1, start).unsqueeze(-1); // [B, D, 1]
            let input = (&dt * self.u.select(1, start).unsqueeze(-1))
                * self.b.select(1, start).unsqueeze(1); // [B, D, N]
            let next = match h.as_ref() {
                Some(h) => (dt * self.a).exp() * h + input,
                None => input,
            };
            ys.push(
                (&next * self.c.select(1, start).unsqueeze(1))
                    .sum_dim_intlist(-1, false, self.u.kind())
                    .unsqueeze(1),
            );
            *h = Some(next);
            return;
        }
        let decay = tch::no_grad(|| {
            let total = self
                .delta
                .narrow(1, start, t)
                .sum_dim_intlist(1, false, Kind::Double); // [B, D]
            f64::try_from((total * &self.fastest).max()).expect("scalar")
        });
        if decay > MAX_CHUNK_DECAY {
            let half = t / 2;
            self.span(start, half, h, ys);
            self.span(start + half, t - half, h, ys);
            return;
        }
        let dt = self.delta.narrow(1, start, t).unsqueeze(-1); // [B, T, D, 1]
        let s = (&dt * self.a).cumsum(1, None::<Kind>); // [B, T, D, N]
        let x = (dt * self.u.narrow(1, start, t).unsqueeze(-1))
            * self.b.narrow(1, start, t).unsqueeze(2); // [B, T, D, N]
        let mut acc = ((-&s).exp() * x).cumsum(1, None::<Kind>);
        if let Some(h0) = h.as_ref() {
            acc += h0.unsqueeze(1);
        }
        let states = s.exp() * acc; // [B, T, D, N]
        let ct = self.c.narrow(1, start, t).unsqueeze(2); // [B, T, 1, N]
        ys.push((&states * ct).sum_dim_intlist(-1, false, self.u.kind())); // [B, T, D]
        *h = Some(states.select(1, t - 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

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
                let got = chunked(&x.u, &x.delta, &x.a, &x.b, &x.c, chunk);
                assert_eq!(got.size(), [2, len, 6]);
                assert_eq!(got.kind(), kind);
                let err = max_rel_err(&got, &want);
                assert!(
                    err < tol,
                    "L={len} chunk={chunk} {kind:?} decay {decay}: relative error {err}"
                );
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
        let got = chunked(&x.u, &x.delta, &x.a, &x.b, &x.c, 48);
        assert!(bool::try_from(got.isfinite().all()).unwrap());
        let err = max_rel_err(&got, &want);
        assert!(err < 5e-5, "relative error {err}");
    }

    fn grads(x: &Inputs, mode: ScanMode, weight: &Tensor) -> Vec<Tensor> {
        let leaves: Vec<Tensor> = [&x.u, &x.delta, &x.a, &x.b, &x.c]
            .iter()
            .map(|t| t.detach().set_requires_grad(true))
            .collect();
        let y = selective_scan(
            &leaves[0], &leaves[1], &leaves[2], &leaves[3], &leaves[4], mode,
        );
        (y * weight).sum(Kind::Double).backward();
        leaves.iter().map(|l| l.grad()).collect()
    }

    #[test]
    fn chunked_gradients_equal_sequential_gradients() {
        for (len, chunk) in [(9, 4), (16, 16), (21, 8)] {
            let x = inputs(2, len, 5, 3, len as f64, 1.0, Kind::Double);
            let w = wavy(&[2, len, 5], 99.0, Kind::Double);
            let want = grads(&x, ScanMode::Sequential, &w);
            let got = grads(&x, ScanMode::Chunked(chunk), &w);
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                let err = max_rel_err(g, e);
                assert!(err < 1e-10, "L={len} chunk={chunk} input {i}: {err}");
            }
        }
    }

    /// Central finite differences in float64 against the chunked scan's autograd gradient, for
    /// every element of every input of a tiny case.
    #[test]
    fn chunked_gradients_match_finite_differences() {
        let x = inputs(1, 7, 3, 2, 5.0, 1.0, Kind::Double);
        let w = wavy(&[1, 7, 3], 42.0, Kind::Double);
        let mode = ScanMode::Chunked(3);
        let analytic = grads(&x, mode, &w);
        let inputs = [&x.u, &x.delta, &x.a, &x.b, &x.c];
        let f = |vals: &[Tensor]| -> f64 {
            let y = selective_scan(&vals[0], &vals[1], &vals[2], &vals[3], &vals[4], mode);
            f64::try_from((y * &w).sum(Kind::Double)).unwrap()
        };
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
                    "input {k} element {j}: finite difference {fd}, autograd {}",
                    g[j]
                );
            }
        }
    }
}
