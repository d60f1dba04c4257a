//! Data-parallel training on torch.distributed's own engine, c10d: a `TCPStore` rendezvous and a
//! Gloo (CPU tensors) or NCCL (CUDA tensors) process group, reached through the small C++ bridge
//! in `c10d.cpp` that `build.rs` compiles against the libtorch tch links. Nothing here moves
//! bytes between processes itself.
//!
//! A rank that dies must not leave the others waiting forever: every collective and store call
//! carries `trainer.dist_timeout_s`, Gloo notices a closed socket at once, and each rank bumps a
//! heartbeat counter in the store so that the survivors can name who was lost.

pub mod ddp;
pub(crate) mod ffi;
pub mod launch;

pub use launch::Launch;

use anyhow::{Result, anyhow, bail};
use std::ffi::CString;
use std::os::raw::c_int;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tch::Tensor;

/// Which c10d backend reduces this run's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Gloo,
    Nccl,
}

impl Backend {
    /// NCCL for CUDA tensors, Gloo for CPU ones (as torch.distributed's default pairs them).
    pub fn for_device(device: tch::Device) -> Backend {
        if device.is_cuda() {
            Backend::Nccl
        } else {
            Backend::Gloo
        }
    }

    /// Whether this build compiled the backend in (headers present at build time).
    pub fn compiled(self) -> bool {
        // SAFETY: constant functions of the bridge.
        unsafe {
            match self {
                Backend::Gloo => ffi::mdlm_c10d_has_gloo() != 0,
                Backend::Nccl => ffi::mdlm_c10d_has_nccl() != 0,
            }
        }
    }
}

/// A client (on rank 0 also the server) of the rendezvous `TCPStore`.
pub struct Store {
    raw: *mut ffi::mdlm_store,
}

// SAFETY: c10d::TCPStore serialises its operations behind its own mutex, so one client may be
// used from the heartbeat thread and the training thread.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Store {
    /// Rank 0 listens on `port`; every rank connects, waiting up to `timeout` for all `world`.
    pub fn connect(
        host: &str,
        port: u16,
        rank: usize,
        world: usize,
        timeout: Duration,
    ) -> Result<Store> {
        let h = CString::new(host)?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: valid C string and out-pointer; the bridge catches C++ exceptions.
        ffi::check(unsafe {
            ffi::mdlm_c10d_store_new(
                h.as_ptr(),
                port as c_int,
                (rank == 0) as c_int,
                world as c_int,
                timeout.as_millis() as i64,
                &mut raw,
            )
        })
        .map_err(|e| {
            anyhow!(
                "rank {rank}/{world}: rendezvous at {host}:{port} failed within {}s: {e}",
                timeout.as_secs()
            )
        })?;
        Ok(Store { raw })
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let k = CString::new(key).map_err(|e| e.to_string())?;
        // SAFETY: live store, valid key and slice.
        ffi::check(unsafe {
            ffi::mdlm_c10d_store_set(self.raw, k.as_ptr(), value.as_ptr(), value.len())
        })
    }

    /// Waits (up to the store's timeout) for `key` to be set.
    pub fn get(&self, key: &str) -> Result<Vec<u8>, String> {
        let k = CString::new(key).map_err(|e| e.to_string())?;
        let (mut p, mut n) = (std::ptr::null_mut(), 0usize);
        // SAFETY: live store; on success `p` holds `n` malloc'd bytes, freed below.
        ffi::check(unsafe { ffi::mdlm_c10d_store_get(self.raw, k.as_ptr(), &mut p, &mut n) })?;
        let v = unsafe { std::slice::from_raw_parts(p, n) }.to_vec();
        unsafe { ffi::mdlm_c10d_free_bytes(p) };
        Ok(v)
    }

    /// Adds `delta` to the counter at `key` and returns the new value (0 reads it).
    pub fn add(&self, key: &str, delta: i64) -> Result<i64, String> {
        let k = CString::new(key).map_err(|e| e.to_string())?;
        let mut out = 0i64;
        // SAFETY: live store, valid key and out-pointer.
        ffi::check(unsafe { ffi::mdlm_c10d_store_add(self.raw, k.as_ptr(), delta, &mut out) })?;
        Ok(out)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: created by mdlm_c10d_store_new, dropped once.
        unsafe { ffi::mdlm_c10d_store_free(self.raw) }
    }
}

const HEARTBEAT: Duration = Duration::from_millis(500);

fn heartbeat_key(rank: usize) -> String {
    format!("mdlm/heartbeat/{rank}")
}

/// One rank's membership in the process group.
pub struct ProcessGroup {
    raw: *mut ffi::mdlm_pg,
    store: Arc<Store>,
    rank: usize,
    world: usize,
    backend: Backend,
    stop: Arc<AtomicBool>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
    /// Set after a failed collective: the group may hold threads blocked on a dead peer, so it
    /// is leaked at exit instead of joined.
    poisoned: AtomicBool,
    /// Collectives issued (all-reduce, broadcast, barrier): what the benches count.
    issued: std::sync::atomic::AtomicU64,
}

impl ProcessGroup {
    /// The rendezvous and the process group for `launch`, failing (rather than hanging) after
    /// `timeout` when a rank does not show up.
    pub fn init(launch: &Launch, backend: Backend, timeout: Duration) -> Result<ProcessGroup> {
        let (rank, world) = (launch.rank, launch.world);
        let nccl = (backend == Backend::Nccl) as c_int;
        if !backend.compiled() {
            // The bridge's own message says what is missing and how to get it.
            let mut raw = std::ptr::null_mut();
            // SAFETY: a compiled-out backend fails before reading the (null) store.
            let msg = ffi::check(unsafe {
                ffi::mdlm_c10d_pg_new(std::ptr::null_mut(), 0, 1, 0, nccl, &mut raw)
            })
            .err()
            .unwrap_or_default();
            bail!("rank {rank}/{world}: {msg}");
        }
        let store = Arc::new(Store::connect(
            &launch.master_addr,
            launch.master_port,
            rank,
            world,
            timeout,
        )?);
        let mut raw = std::ptr::null_mut();
        let ms = timeout.as_millis() as i64;
        // SAFETY: live store and out-pointer; the bridge catches C++ exceptions.
        ffi::check(unsafe {
            ffi::mdlm_c10d_pg_new(store.raw, rank as c_int, world as c_int, ms, nccl, &mut raw)
        })
        .map_err(|e| anyhow!("rank {rank}/{world}: creating the {backend:?} process group: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        store
            .add(&heartbeat_key(rank), 1)
            .map_err(|e| anyhow!("rank {rank}/{world}: heartbeat: {e}"))?;
        let heartbeat = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("mdlm-heartbeat-{rank}"))
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(HEARTBEAT);
                        // A store that is gone ends the beat; the collective reports it.
                        if store.add(&heartbeat_key(rank), 1).is_err() {
                            break;
                        }
                    }
                })?
        };
        tracing::info!(rank, world, ?backend, "process group ready");
        Ok(ProcessGroup {
            raw,
            store,
            rank,
            world,
            backend,
            stop,
            heartbeat: Some(heartbeat),
            poisoned: AtomicBool::new(false),
            issued: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Collectives this rank has issued so far.
    pub fn collectives(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// In place: the sum over ranks.
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        self.call("all_reduce", |pg| unsafe {
            ffi::mdlm_c10d_allreduce(pg, t.as_mut_ptr() as *mut _, 0)
        })
    }

    /// In place: the mean over ranks.
    pub fn all_reduce_avg(&self, t: &mut Tensor) -> Result<()> {
        self.call("all_reduce", |pg| unsafe {
            ffi::mdlm_c10d_allreduce(pg, t.as_mut_ptr() as *mut _, 1)
        })
    }

    /// In place: `root`'s values everywhere.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        self.call("broadcast", |pg| unsafe {
            ffi::mdlm_c10d_broadcast(pg, t.as_mut_ptr() as *mut _, root as c_int)
        })
    }

    pub fn barrier(&self) -> Result<()> {
        self.call("barrier", |pg| unsafe { ffi::mdlm_c10d_barrier(pg) })
    }

    fn call(
        &self,
        op: &str,
        f: impl FnOnce(*mut ffi::mdlm_pg) -> *mut std::os::raw::c_char,
    ) -> Result<()> {
        self.issued.fetch_add(1, Ordering::Relaxed);
        if self.poisoned.load(Ordering::Relaxed) {
            bail!(
                "rank {}/{}: {op} after an earlier collective failed",
                self.rank,
                self.world
            );
        }
        match ffi::check(f(self.raw)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.poisoned.store(true, Ordering::Relaxed);
                let lost = self.lost_ranks();
                Err(anyhow!(
                    "rank {}/{}: {op} failed: {lost}; c10d said: {}",
                    self.rank,
                    self.world,
                    e.trim()
                ))
            }
        }
    }

    /// Who stopped beating, told after a failed collective. The store lives in rank 0, so an
    /// unreachable store means rank 0 is gone.
    fn lost_ranks(&self) -> String {
        let others: Vec<usize> = (0..self.world).filter(|&r| r != self.rank).collect();
        let read = |store: &Store| -> Result<Vec<i64>, String> {
            others
                .iter()
                .map(|&r| store.add(&heartbeat_key(r), 0))
                .collect()
        };
        let Ok(before) = read(&self.store) else {
            return "lost rank 0 (its rendezvous store is unreachable)".to_string();
        };
        std::thread::sleep(HEARTBEAT * 5);
        let Ok(after) = read(&self.store) else {
            return "lost rank 0 (its rendezvous store is unreachable)".to_string();
        };
        let lost: Vec<String> = others
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| a <= b)
            .map(|(r, _)| r.to_string())
            .collect();
        if lost.is_empty() {
            "every other rank still beats (a timeout or a mismatched collective?)".to_string()
        } else {
            format!(
                "lost rank {} (no heartbeat for {:.1}s)",
                lost.join(", "),
                (HEARTBEAT * 5).as_secs_f64()
            )
        }
    }

    /// Ends the group cleanly: a barrier, so no rank leaves while another still needs it, then
    /// the backend's shutdown.
    pub fn shutdown(self) -> Result<()> {
        self.barrier()?;
        // SAFETY: live process group.
        ffi::check(unsafe { ffi::mdlm_c10d_pg_shutdown(self.raw) })
            .map_err(|e| anyhow!("rank {}/{}: shutdown: {e}", self.rank, self.world))?;
        Ok(())
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        if self.poisoned.load(Ordering::Relaxed) {
            // Joining Gloo's worker threads could wait on the dead peer; the process is about to
            // exit with an error anyway.
            return;
        }
        // SAFETY: created by mdlm_c10d_pg_new, dropped once.
        unsafe { ffi::mdlm_c10d_pg_free(self.raw) }
    }
}
