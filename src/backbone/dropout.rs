//! Dropout on the branch outputs. On CPU (float32/float64) one pass with a counter-based mask
//! (`dropout.cpp`): same distribution as torch's dropout — each element zeroed with probability
//! `p`, the rest scaled by `1 / (1 - p)` — without torch's per-element `bernoulli_`, which took a
//! third of the DiT's forward time at the bench shape. The mask is regenerated in backward, not
//! stored. Elsewhere (CUDA, bf16) torch's own fused kernel.

use std::ffi::{c_char, c_void};
use tch::{Device, Kind, Tensor};

/// Dropout in training only: evaluation and `p = 0` dispatch nothing.
pub fn dropout(x: Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x;
    }
    if x.device() == Device::Cpu && matches!(x.kind(), Kind::Float | Kind::Double) && p < 1.0 {
        cpu(&x, p, None)
    } else {
        x.dropout(p, true)
    }
}

/// The CPU kernel. The mask is a function of `key` and the element index; without a key, one
/// draw from libtorch's default generator keys it.
pub fn cpu(x: &Tensor, p: f64, key: Option<u32>) -> Tensor {
    let mut out: *mut c_void = std::ptr::null_mut();
    let key = key.map_or(-1, i64::from);
    // SAFETY: `x` is live for the call; on success `out` is a fresh tensor nothing else owns.
    let err = unsafe { mdlm_dropout_cpu(x.as_ptr().cast(), p, key, &mut out) };
    crate::dist::ffi::check(err).unwrap_or_else(|e| panic!("dropout (p = {p}): {e}"));
    // SAFETY: as above.
    unsafe { Tensor::from_ptr(out.cast()) }
}

unsafe extern "C" {
    fn mdlm_dropout_cpu(x: *const c_void, p: f64, key: i64, out: *mut *mut c_void) -> *mut c_char;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_a_fraction_p_and_scales_the_rest_by_one_over_one_minus_p() {
        let n = 1 << 20;
        for (p, kind) in [(0.1, Kind::Float), (0.5, Kind::Double), (0.9, Kind::Float)] {
            let x = Tensor::ones([n], (kind, Device::Cpu));
            let y = cpu(&x, p, Some(3));
            let dropped = y.eq(0.0).sum(Kind::Int64).int64_value(&[]) as f64;
            // Binomial(n, p): 5 standard deviations.
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (dropped - n as f64 * p).abs() < 5.0 * sd,
                "p={p}: dropped {dropped} of {n}"
            );
            let scale = Tensor::from(1.0 / (1.0 - p)).to_kind(kind);
            let kept_ok = y
                .eq(0.0)
                .logical_or(&y.eq_tensor(&scale))
                .all()
                .int64_value(&[]);
            assert_eq!(kept_ok, 1, "p={p}: a kept element is not scaled by 1/(1-p)");
        }
    }

    /// Neighbouring elements, and the masks of consecutive calls, are independent: the fraction
    /// of pairs both kept is (1-p)^2 within 5 standard deviations.
    #[test]
    fn masks_are_independent_across_elements_and_calls() {
        let n = 1 << 20;
        let p = 0.3;
        let x = Tensor::ones([n], (Kind::Float, Device::Cpu));
        // Adjacent keys: a counter-based generator needs no spacing between them.
        let (a, b) = (cpu(&x, p, Some(4)), cpu(&x, p, Some(5)));
        let (ka, kb) = (a.ne(0.0), b.ne(0.0));
        let q = (1.0 - p) * (1.0 - p);
        let sd = (n as f64 * q * (1.0 - q)).sqrt();
        for (what, both) in [
            (
                "adjacent elements",
                ka.narrow(0, 0, n - 1).logical_and(&ka.narrow(0, 1, n - 1)),
            ),
            (
                "elements 4 apart",
                ka.narrow(0, 0, n - 4).logical_and(&ka.narrow(0, 4, n - 4)),
            ),
            ("two calls", ka.logical_and(&kb)),
        ] {
            let got = both.sum(Kind::Int64).int64_value(&[]) as f64;
            let m = both.size()[0] as f64;
            assert!(
                (got - m * q).abs() < 5.0 * sd,
                "{what}: {got} both kept of {m}, expected {}",
                m * q
            );
        }
    }

    /// The same key gives the same mask whatever the thread count (the mask is a function of
    /// the element index), another key another mask, and a strided input is masked as its
    /// contiguous copy. (Keys fixed here: other tests draw from the global generator meanwhile.)
    #[test]
    fn mask_follows_the_key_not_the_threads_or_the_layout() {
        let x = Tensor::arange(3 * 70_000, (Kind::Float, Device::Cpu)).reshape([3, 70_000]) + 1.0;
        let threads = tch::get_num_threads();
        tch::set_num_threads(1);
        let one = cpu(&x, 0.2, Some(7));
        tch::set_num_threads(threads.max(2));
        let many = cpu(&x, 0.2, Some(7));
        tch::set_num_threads(threads);
        assert!(one.equal(&many), "thread count changed the mask");
        assert!(
            !cpu(&x, 0.2, Some(8)).equal(&many),
            "another key gave the same mask"
        );
        let xt = x.transpose(0, 1).contiguous().transpose(0, 1);
        assert!(
            cpu(&xt, 0.2, Some(7)).equal(&many),
            "a strided input was masked differently"
        );
    }

    /// The gradient is the forward mask again: d/dx sum(w * dropout(x)) = w where y != 0, times
    /// 1/(1-p), and 0 where y was dropped.
    #[test]
    fn backward_regenerates_the_forward_mask() {
        let p = 0.25;
        let x =
            (Tensor::rand([64, 333], (Kind::Double, Device::Cpu)) + 0.5).set_requires_grad(true);
        let w = Tensor::rand([64, 333], (Kind::Double, Device::Cpu));
        let y = cpu(&x, p, Some(11));
        (&y * &w).sum(Kind::Double).backward();
        let want = y.ne(0.0).to_kind(Kind::Double) * &w / (1.0 - p);
        assert!(x.grad().allclose(&want, 1e-12, 1e-12, false));
    }

    #[test]
    fn evaluation_and_zero_p_pass_the_input_through() {
        let x = Tensor::rand([10, 10], (Kind::Float, Device::Cpu));
        assert!(dropout(x.shallow_clone(), 0.5, false).equal(&x));
        assert!(dropout(x.shallow_clone(), 0.0, true).equal(&x));
    }
}
