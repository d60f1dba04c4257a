//! Which device a run uses. CUDA and CPU share every code path; only this choice differs.

use anyhow::{Result, bail};
use tch::Device;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accelerator {
    Cuda,
    Cpu,
    Auto,
}

/// `trainer.accelerator` → a device, failing clearly when CUDA is asked for but absent.
pub fn resolve(acc: Accelerator) -> Result<Device> {
    match acc {
        Accelerator::Cpu => Ok(Device::Cpu),
        Accelerator::Auto => Ok(if tch::Cuda::is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        Accelerator::Cuda => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                bail!(
                    "trainer.accelerator=cuda but no CUDA device is visible to libtorch; use trainer.accelerator=cpu (or auto)"
                )
            }
        }
    }
}

/// Number of devices a run spans on this machine (CPU counts as one, unlike the reference whose
/// batch arithmetic divides by zero there).
pub fn count(device: Device) -> usize {
    match device {
        Device::Cuda(_) => 1,
        _ => 1,
    }
}
