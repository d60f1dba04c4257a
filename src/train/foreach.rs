//! libtorch's multi-tensor ops (`torch._foreach_*`), through `foreach.cpp`: one dispatched op
//! per list of tensors, the optimizer, EMA and clipping paths torch itself takes on a GPU. On CPU
//! each falls back to the per-tensor op, so results equal the per-tensor loop's bit for bit.

use anyhow::{Result, anyhow};
use std::ffi::{c_char, c_void};
use tch::Tensor;

type Ptr = *const c_void;

unsafe extern "C" {
    fn mdlm_grads_to_none(p: *const Ptr, n: usize) -> *mut c_char;
    fn mdlm_foreach_lerp_(s: *const Ptr, end: *const Ptr, n: usize, w: f64) -> *mut c_char;
    fn mdlm_foreach_mul_scalar_(s: *const Ptr, n: usize, v: f64) -> *mut c_char;
    fn mdlm_foreach_mul_tensor_(s: *const Ptr, n: usize, t: Ptr) -> *mut c_char;
    fn mdlm_foreach_add_scalar_(s: *const Ptr, n: usize, v: f64) -> *mut c_char;
    fn mdlm_foreach_div_scalars_(s: *const Ptr, n: usize, v: *const f64) -> *mut c_char;
    fn mdlm_foreach_addcmul_(
        s: *const Ptr,
        t1: *const Ptr,
        t2: *const Ptr,
        n: usize,
        v: f64,
    ) -> *mut c_char;
    fn mdlm_foreach_addcdiv_scalars_(
        s: *const Ptr,
        t1: *const Ptr,
        t2: *const Ptr,
        n: usize,
        v: *const f64,
    ) -> *mut c_char;
    fn mdlm_foreach_sub_(s: *const Ptr, o: *const Ptr, n: usize) -> *mut c_char;
    fn mdlm_foreach_sub(
        a: *const Ptr,
        b: *const Ptr,
        n: usize,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn mdlm_foreach_sqrt(a: *const Ptr, n: usize, out: *mut *mut c_void) -> *mut c_char;
    fn mdlm_foreach_norm(a: *const Ptr, n: usize, out: *mut *mut c_void) -> *mut c_char;
}

fn ptrs(ts: &[Tensor]) -> Vec<Ptr> {
    ts.iter().map(|t| t.as_ptr() as Ptr).collect()
}

/// The bridge's errors are malloc'd C strings, as the c10d bridge's are.
fn check(e: *mut c_char) -> Result<()> {
    crate::dist::ffi::check(e).map_err(|msg| anyhow!("{msg}"))
}

fn same_len(a: &[Tensor], b: &[Tensor]) -> Result<()> {
    if a.len() == b.len() {
        Ok(())
    } else {
        Err(anyhow!(
            "tensor lists of {} and {} tensors",
            a.len(),
            b.len()
        ))
    }
}

/// Runs a list-returning op; takes ownership of the tensors it hands out.
fn collect(n: usize, f: impl FnOnce(*mut *mut c_void) -> *mut c_char) -> Result<Vec<Tensor>> {
    let mut out: Vec<*mut c_void> = vec![std::ptr::null_mut(); n];
    check(f(out.as_mut_ptr()))?;
    // SAFETY: on success the bridge wrote `n` fresh `new at::Tensor` pointers, each owned once.
    Ok(out
        .into_iter()
        .map(|p| unsafe { Tensor::from_ptr(p as *mut _) })
        .collect())
}

/// Drops the gradients (torch's `zero_grad(set_to_none=True)`).
pub fn grads_to_none(params: &[Tensor]) -> Result<()> {
    let p = ptrs(params);
    // SAFETY: `p` holds `p.len()` live tensors for the duration of the call.
    check(unsafe { mdlm_grads_to_none(p.as_ptr(), p.len()) })
}

/// `s[i] += w * (end[i] - s[i])`.
pub fn lerp_(s: &[Tensor], end: &[Tensor], w: f64) -> Result<()> {
    same_len(s, end)?;
    let (a, b) = (ptrs(s), ptrs(end));
    // SAFETY: as in `grads_to_none`, both lists of equal length.
    check(unsafe { mdlm_foreach_lerp_(a.as_ptr(), b.as_ptr(), a.len(), w) })
}

pub fn mul_scalar_(s: &[Tensor], v: f64) -> Result<()> {
    let a = ptrs(s);
    // SAFETY: as in `grads_to_none`.
    check(unsafe { mdlm_foreach_mul_scalar_(a.as_ptr(), a.len(), v) })
}

/// Every tensor times the same (0-d) tensor, which may live on the device.
pub fn mul_tensor_(s: &[Tensor], t: &Tensor) -> Result<()> {
    let a = ptrs(s);
    // SAFETY: as in `grads_to_none`; `t` is live for the call.
    check(unsafe { mdlm_foreach_mul_tensor_(a.as_ptr(), a.len(), t.as_ptr() as Ptr) })
}

pub fn add_scalar_(s: &[Tensor], v: f64) -> Result<()> {
    let a = ptrs(s);
    // SAFETY: as in `grads_to_none`.
    check(unsafe { mdlm_foreach_add_scalar_(a.as_ptr(), a.len(), v) })
}

/// `s[i] /= v[i]`.
pub fn div_scalars_(s: &[Tensor], v: &[f64]) -> Result<()> {
    if s.len() != v.len() {
        return Err(anyhow!("{} tensors, {} scalars", s.len(), v.len()));
    }
    let a = ptrs(s);
    // SAFETY: as in `grads_to_none`; `v` has one scalar per tensor.
    check(unsafe { mdlm_foreach_div_scalars_(a.as_ptr(), a.len(), v.as_ptr()) })
}

/// `s[i] += v * t1[i] * t2[i]`.
pub fn addcmul_(s: &[Tensor], t1: &[Tensor], t2: &[Tensor], v: f64) -> Result<()> {
    same_len(s, t1)?;
    same_len(s, t2)?;
    let (a, b, c) = (ptrs(s), ptrs(t1), ptrs(t2));
    // SAFETY: as in `grads_to_none`, three lists of equal length.
    check(unsafe { mdlm_foreach_addcmul_(a.as_ptr(), b.as_ptr(), c.as_ptr(), a.len(), v) })
}

/// `s[i] += v[i] * t1[i] / t2[i]`.
pub fn addcdiv_scalars_(s: &[Tensor], t1: &[Tensor], t2: &[Tensor], v: &[f64]) -> Result<()> {
    same_len(s, t1)?;
    same_len(s, t2)?;
    if s.len() != v.len() {
        return Err(anyhow!("{} tensors, {} scalars", s.len(), v.len()));
    }
    let (a, b, c) = (ptrs(s), ptrs(t1), ptrs(t2));
    // SAFETY: as in `addcmul_`; `v` has one scalar per tensor.
    check(unsafe {
        mdlm_foreach_addcdiv_scalars_(a.as_ptr(), b.as_ptr(), c.as_ptr(), a.len(), v.as_ptr())
    })
}

/// `s[i] -= o[i]`.
pub fn sub_(s: &[Tensor], o: &[Tensor]) -> Result<()> {
    same_len(s, o)?;
    let (a, b) = (ptrs(s), ptrs(o));
    // SAFETY: as in `lerp_`.
    check(unsafe { mdlm_foreach_sub_(a.as_ptr(), b.as_ptr(), a.len()) })
}

/// `a[i] - b[i]`, new tensors.
pub fn sub(a: &[Tensor], b: &[Tensor]) -> Result<Vec<Tensor>> {
    same_len(a, b)?;
    let (pa, pb) = (ptrs(a), ptrs(b));
    // SAFETY: as in `lerp_`; `out` has room for one tensor per input.
    collect(a.len(), |out| unsafe {
        mdlm_foreach_sub(pa.as_ptr(), pb.as_ptr(), pa.len(), out)
    })
}

pub fn sqrt(a: &[Tensor]) -> Result<Vec<Tensor>> {
    let p = ptrs(a);
    // SAFETY: as in `sub`.
    collect(a.len(), |out| unsafe {
        mdlm_foreach_sqrt(p.as_ptr(), p.len(), out)
    })
}

/// The 2-norm of each tensor, as 0-d tensors on its device.
pub fn norm(a: &[Tensor]) -> Result<Vec<Tensor>> {
    let p = ptrs(a);
    // SAFETY: as in `sub`.
    collect(a.len(), |out| unsafe {
        mdlm_foreach_norm(p.as_ptr(), p.len(), out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn pair() -> (Vec<Tensor>, Vec<Tensor>) {
        tch::manual_seed(3);
        let a = vec![
            Tensor::randn([5, 3], (Kind::Float, Device::Cpu)),
            Tensor::randn([7], (Kind::Float, Device::Cpu)),
        ];
        let b = vec![
            Tensor::randn([5, 3], (Kind::Float, Device::Cpu)),
            Tensor::randn([7], (Kind::Float, Device::Cpu)),
        ];
        (a, b)
    }

    fn copies(v: &[Tensor]) -> Vec<Tensor> {
        v.iter().map(|t| t.copy()).collect()
    }

    /// Each list op equals its per-tensor op bit for bit (the property the optimizer's and the
    /// EMA's resume and parity rest on).
    #[test]
    fn list_ops_equal_the_per_tensor_ops_exactly() {
        let (a, b) = pair();
        let (got, mut want) = (copies(&a), copies(&a));
        lerp_(&got, &b, 0.1).unwrap();
        addcmul_(&got, &b, &b, 0.001).unwrap();
        div_scalars_(&got, &[1.5, 0.7]).unwrap();
        add_scalar_(&got, 1e-8).unwrap();
        addcdiv_scalars_(&got, &b, &a, &[-0.3, 0.2]).unwrap();
        mul_scalar_(&got, 0.99).unwrap();
        sub_(&got, &b).unwrap();
        mul_tensor_(&got, &Tensor::from(0.5f32)).unwrap();
        for (i, w) in want.iter_mut().enumerate() {
            let _ = w.lerp_(&b[i], 0.1);
            let _ = w.addcmul_(&(&b[i] * 0.001), &b[i]);
            let _ = w.g_div_scalar_([1.5, 0.7][i]);
            let _ = w.g_add_scalar_(1e-8);
            let _ = w.addcdiv_(&(&b[i] * [-0.3, 0.2][i]), &a[i]);
            let _ = w.g_mul_scalar_(0.99);
            let _ = w.g_sub_(&b[i]);
            let _ = w.g_mul_(&Tensor::from(0.5f32));
        }
        for (g, w) in got.iter().zip(&want) {
            assert!(g.equal(w), "{g} vs {w}");
        }
        let d = sub(&a, &b).unwrap();
        let r = sqrt(&copies(&b).iter().map(|t| t.abs()).collect::<Vec<_>>()).unwrap();
        let n = norm(&a).unwrap();
        for i in 0..2 {
            assert!(d[i].equal(&(&a[i] - &b[i])));
            assert!(r[i].equal(&b[i].abs().sqrt()));
            assert!(n[i].equal(&a[i].norm()));
        }
        assert!(sub_(&a[..1], &b).is_err(), "lists of different lengths");
    }

    #[test]
    fn grads_to_none_drops_the_gradient() {
        let p = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&p * 2.0).sum(Kind::Float).backward();
        assert!(p.grad().defined());
        grads_to_none(std::slice::from_ref(&p)).unwrap();
        assert!(!p.grad().defined());
        (&p * 3.0).sum(Kind::Float).backward();
        assert!(
            p.grad()
                .equal(&Tensor::full([3], 3.0, (Kind::Float, Device::Cpu)))
        );
    }
}
