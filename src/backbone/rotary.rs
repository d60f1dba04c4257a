//! The attention input on CPU in one pass (`rotary.cpp`): the qkv projection becomes rotary'd q,
//! k and plain v, and backward writes the qkv gradient directly, bit-identical to the composite
//! in [`Sublayers::qkv`](super::layers::Sublayers::qkv), which CUDA and bf16 keep using (there
//! its few elementwise kernels are fast and an extra launch costs more than it saves).

use std::ffi::{c_char, c_void};
use tch::{Device, Kind, Tensor};

/// Whether [`split`] takes `qkv`.
pub fn applies(qkv: &Tensor) -> bool {
    qkv.device() == Device::Cpu && matches!(qkv.kind(), Kind::Float | Kind::Double)
}

/// `qkv [B, n, 3, nh, dh]`, tables `[cos, cos]` and `[-sin, sin]` of `n * dh` elements →
/// `(q, k, v)`, each `[B, nh, n, dh]`, q and k rotated: transposed views of `[B, n, nh, dh]`
/// tensors, the layout libtorch's CPU flash attention reads, and returns its gradients in.
pub fn split(qkv: &Tensor, cos: &Tensor, sin: &Tensor) -> (Tensor, Tensor, Tensor) {
    let mut out: [*mut c_void; 3] = [std::ptr::null_mut(); 3];
    // SAFETY: the three tensors are live for the call; on success each `out` entry is a fresh
    // tensor nothing else owns.
    let err = unsafe {
        mdlm_rotary_qkv(
            qkv.as_ptr().cast(),
            cos.as_ptr().cast(),
            sin.as_ptr().cast(),
            out.as_mut_ptr(),
        )
    };
    crate::dist::ffi::check(err).unwrap_or_else(|e| panic!("rotary qkv split: {e}"));
    // SAFETY: as above.
    let [q, k, v] = out.map(|p| unsafe { Tensor::from_ptr(p.cast()) }.transpose(1, 2));
    (q, k, v)
}

unsafe extern "C" {
    fn mdlm_rotary_qkv(
        qkv: *const c_void,
        cos: *const c_void,
        sin: *const c_void,
        out: *mut *mut c_void,
    ) -> *mut c_char;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::layers::{Rotary, qkv_composite, rotary_inv_freq};
    use tch::nn;

    fn inv_freq(dh: i64) -> Tensor {
        let vs = nn::VarStore::new(Device::Cpu);
        rotary_inv_freq(vs.root() / "r", dh, 10_000.0).detach()
    }

    /// Forward values and the qkv gradient (through weighted sums of q, k, v) of the fused split
    /// and of the composite are equal bit for bit, in float32 and float64, at a cached step's
    /// positions too; with only q used (the other gradients undefined) as well.
    #[test]
    fn fused_split_equals_the_composite_bit_for_bit() {
        for (kind, start, use_all) in [
            (Kind::Float, 0, true),
            (Kind::Double, 0, true),
            (Kind::Float, 37, true),
            (Kind::Float, 0, false),
        ] {
            let (b, n, nh, dh) = (3, 19, 4, 16);
            let rot = Rotary::at(&inv_freq(dh), start, n, kind);
            let x = Tensor::randn([b, n, 3, nh, dh], (kind, Device::Cpu)) * 3.0;
            let w: Vec<Tensor> = (0..3)
                .map(|_| Tensor::randn([b, nh, n, dh], (kind, Device::Cpu)))
                .collect();
            let run = |fused: bool| {
                let x = x.detach().set_requires_grad(true);
                let (q, k, v) = if fused {
                    let (c, s) = rot.tables();
                    split(&x, c, s)
                } else {
                    qkv_composite(&x, &rot)
                };
                let mut loss = (&q * &w[0]).sum(kind);
                if use_all {
                    loss = loss + (&k * &w[1]).sum(kind) + (&v * &w[2]).sum(kind);
                }
                loss.backward();
                (q, k, v, x.grad())
            };
            let (fq, fk, fv, fg) = run(true);
            let (cq, ck, cv, cg) = run(false);
            for (what, f, c) in [
                ("q", fq, cq),
                ("k", fk, ck),
                ("v", fv, cv),
                ("grad", fg, cg),
            ] {
                assert_eq!(f.size(), c.size(), "{what} {kind:?}");
                assert!(
                    f.equal(&c),
                    "{what} differs ({kind:?}, start {start}, all {use_all})"
                );
            }
            let no_grad = tch::no_grad(|| {
                let (c, s) = rot.tables();
                split(&x, c, s).0
            });
            assert!(no_grad.equal(&qkv_composite(&x, &rot).0));
        }
    }
}
