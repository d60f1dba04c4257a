//! Training batches prepared ahead on a thread of their own, so reading and assembling the next
//! batch overlaps the current step. On CUDA the thread pins each batch's host memory and the copy
//! to the device is issued non-blocking, so it overlaps too.
//!
//! Where the loader stands for a checkpoint is where the batches *handed out* leave it, not where
//! the thread has read to: each batch travels with the loader state after it, so a resumed run
//! draws exactly the batches a straight run would.

use super::loader::{Batch, LoaderState, TrainBatches};
use anyhow::{Result, anyhow};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use tch::Device;

/// Batches ready ahead of the step that takes them: one in hand plus one being assembled.
const AHEAD: usize = 2;

type Inner = Box<dyn TrainBatches + Send>;

/// A [`TrainBatches`] that reads a CPU loader on a thread and hands batches out on `device`.
pub struct Prefetch {
    device: Device,
    /// The loader while no thread holds it (before the first batch, and while restoring).
    idle: Option<Inner>,
    running: Option<Running>,
    /// Where the batches handed out so far leave the loader.
    state: LoaderState,
}

struct Running {
    // Dropped first: a thread blocked on a full channel then sees the receiver gone and ends.
    rx: Receiver<Result<(Batch, LoaderState)>>,
    handle: JoinHandle<Inner>,
}

impl Prefetch {
    /// `inner` must produce batches on the CPU.
    pub fn new(inner: Inner, device: Device) -> Prefetch {
        Prefetch {
            device,
            state: inner.state(),
            idle: Some(inner),
            running: None,
        }
    }

    fn start(&mut self) -> Result<&Running> {
        if self.running.is_none() {
            let inner = self
                .idle
                .take()
                .ok_or_else(|| anyhow!("the batch thread ended earlier"))?;
            let (tx, rx) = sync_channel(AHEAD);
            let device = self.device;
            let handle = std::thread::Builder::new()
                .name("mdlm-batches".into())
                .spawn(move || produce(inner, tx, device))?;
            self.running = Some(Running { rx, handle });
        }
        Ok(self.running.as_ref().expect("started above"))
    }

    /// Ends the thread and takes the loader back (read ahead of `state`).
    fn stop(&mut self) -> Result<Inner> {
        if let Some(inner) = self.idle.take() {
            return Ok(inner);
        }
        let Running { rx, handle } = self
            .running
            .take()
            .ok_or_else(|| anyhow!("the batch thread ended earlier"))?;
        drop(rx);
        handle
            .join()
            .map_err(|_| anyhow!("the batch-preparing thread panicked"))
    }
}

/// The thread: batches until the receiver goes away or the loader fails (the error is the last
/// thing sent), pinned for `device` when it is a GPU (this rank's own: pinning for another would
/// open a context there). Its ops stay out of profiles: they are not part of the step.
fn produce(
    mut inner: Inner,
    tx: SyncSender<Result<(Batch, LoaderState)>>,
    device: Device,
) -> Inner {
    crate::profile::ignore_this_thread();
    let pin = |t: tch::Tensor| match device {
        Device::Cpu => t,
        _ => t.pin_memory(device),
    };
    loop {
        let item = inner.next_train_batch().map(|b| {
            let b = Batch {
                x: pin(b.x),
                attention_mask: pin(b.attention_mask),
            };
            (b, inner.state())
        });
        let failed = item.is_err();
        if tx.send(item).is_err() || failed {
            return inner;
        }
    }
}

impl TrainBatches for Prefetch {
    fn next_train_batch(&mut self) -> Result<Batch> {
        let got = self.start()?.rx.recv();
        let (batch, state) = match got {
            Ok(item) => item?,
            // The thread has ended: after the loader's error (already handed out), or a panic.
            Err(_) => {
                return Err(match self.stop() {
                    Ok(_) => {
                        anyhow!("the training loader failed earlier and yields no more batches")
                    }
                    Err(e) => e,
                });
            }
        };
        self.state = state;
        let device = self.device;
        let on = |t: tch::Tensor| match device {
            Device::Cpu => t,
            // Pinned on the thread, so the copy returns at once and runs beside the step.
            _ => t.to_device_(device, t.kind(), true, false),
        };
        Ok(Batch {
            x: on(batch.x),
            attention_mask: on(batch.attention_mask),
        })
    }

    fn state(&self) -> LoaderState {
        self.state
    }

    fn restore(&mut self, state: LoaderState) -> Result<()> {
        let mut inner = self.stop()?;
        inner.restore(state)?;
        self.state = inner.state();
        self.idle = Some(inner);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    /// Batch n holds n; fails at `fail_at`.
    struct Counting {
        next: usize,
        fail_at: Option<usize>,
    }

    impl TrainBatches for Counting {
        fn next_train_batch(&mut self) -> Result<Batch> {
            if Some(self.next) == self.fail_at {
                anyhow::bail!("read error at batch {}", self.next);
            }
            let n = self.next as i64;
            self.next += 1;
            Ok(Batch {
                x: Tensor::full([2, 3], n, (Kind::Int64, Device::Cpu)),
                attention_mask: Tensor::ones([2, 3], (Kind::Float, Device::Cpu)),
            })
        }
        fn state(&self) -> LoaderState {
            LoaderState {
                epoch: 0,
                cursor: self.next,
            }
        }
        fn restore(&mut self, state: LoaderState) -> Result<()> {
            self.next = state.cursor;
            Ok(())
        }
    }

    fn first(b: &Batch) -> i64 {
        b.x.int64_value(&[0, 0])
    }

    #[test]
    fn hands_out_the_loaders_batches_in_order_with_the_consumers_state() {
        let inner = Box::new(Counting {
            next: 0,
            fail_at: None,
        });
        let mut p = Prefetch::new(inner, Device::Cpu);
        for n in 0..5 {
            assert_eq!(first(&p.next_train_batch().unwrap()), n);
            // The thread has read ahead, but a checkpoint sees what was handed out.
            assert_eq!(p.state().cursor, n as usize + 1);
        }
        // Resuming mid-way: the continuation a straight run draws.
        p.restore(LoaderState {
            epoch: 0,
            cursor: 2,
        })
        .unwrap();
        assert_eq!(p.state().cursor, 2);
        let again: Vec<i64> = (0..3)
            .map(|_| first(&p.next_train_batch().unwrap()))
            .collect();
        assert_eq!(again, [2, 3, 4]);
    }

    #[test]
    fn a_loader_error_reaches_the_step_that_needed_the_batch() {
        let inner = Box::new(Counting {
            next: 0,
            fail_at: Some(3),
        });
        let mut p = Prefetch::new(inner, Device::Cpu);
        for n in 0..3 {
            assert_eq!(first(&p.next_train_batch().unwrap()), n);
        }
        let err = p.next_train_batch().unwrap_err().to_string();
        assert!(err.contains("read error at batch 3"), "{err}");
        assert!(p.next_train_batch().is_err());
    }
}
