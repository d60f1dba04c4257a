//! The C functions of `c10d.cpp` / `c10d_nccl.cpp`. Each returns null or an error string the
//! caller frees with `mdlm_c10d_free_error`.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int};
/// A `torch::Tensor*`, what tch's `Tensor::as_mut_ptr` hands out.
pub type C_tensor = std::ffi::c_void;

#[repr(C)]
pub struct mdlm_store {
    _private: [u8; 0],
}

#[repr(C)]
pub struct mdlm_pg {
    _private: [u8; 0],
}

unsafe extern "C" {
    pub fn mdlm_c10d_free_error(e: *mut c_char);
    pub fn mdlm_c10d_free_bytes(b: *mut u8);
    pub fn mdlm_c10d_has_gloo() -> c_int;
    pub fn mdlm_c10d_has_nccl() -> c_int;
    pub fn mdlm_c10d_store_new(
        host: *const c_char,
        port: c_int,
        is_server: c_int,
        world: c_int,
        timeout_ms: i64,
        out: *mut *mut mdlm_store,
    ) -> *mut c_char;
    pub fn mdlm_c10d_store_free(s: *mut mdlm_store);
    pub fn mdlm_c10d_store_set(
        s: *mut mdlm_store,
        key: *const c_char,
        value: *const u8,
        len: usize,
    ) -> *mut c_char;
    pub fn mdlm_c10d_store_get(
        s: *mut mdlm_store,
        key: *const c_char,
        value: *mut *mut u8,
        len: *mut usize,
    ) -> *mut c_char;
    pub fn mdlm_c10d_store_add(
        s: *mut mdlm_store,
        key: *const c_char,
        delta: i64,
        out: *mut i64,
    ) -> *mut c_char;
    /// `nccl` 0: Gloo, else NCCL.
    pub fn mdlm_c10d_pg_new(
        s: *mut mdlm_store,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        nccl: c_int,
        out: *mut *mut mdlm_pg,
    ) -> *mut c_char;
    pub fn mdlm_c10d_allreduce(pg: *mut mdlm_pg, t: *mut C_tensor, avg: c_int) -> *mut c_char;
    pub fn mdlm_c10d_broadcast(pg: *mut mdlm_pg, t: *mut C_tensor, root: c_int) -> *mut c_char;
    pub fn mdlm_c10d_barrier(pg: *mut mdlm_pg) -> *mut c_char;
    pub fn mdlm_c10d_pg_shutdown(pg: *mut mdlm_pg) -> *mut c_char;
    pub fn mdlm_c10d_pg_free(pg: *mut mdlm_pg);
}

/// Turns a returned error pointer into `Err(message)`, freeing it.
pub fn check(e: *mut c_char) -> Result<(), String> {
    if e.is_null() {
        return Ok(());
    }
    // SAFETY: non-null returns are NUL-terminated strings malloc'd by the bridge.
    let msg = unsafe { std::ffi::CStr::from_ptr(e) }
        .to_string_lossy()
        .into_owned();
    unsafe { mdlm_c10d_free_error(e) };
    Err(msg)
}
