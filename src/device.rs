//! Which device a run uses. CUDA and CPU share every code path; only this choice differs.

use crate::config::Accelerator;
use anyhow::{Result, bail};
use tch::Device;

/// `trainer.accelerator` → a device, failing clearly when CUDA is asked for but absent.
pub fn resolve(acc: Accelerator) -> Result<Device> {
    let cuda = tch::Cuda::is_available();
    match acc {
        Accelerator::Cpu => Ok(Device::Cpu),
        Accelerator::Auto => Ok(if cuda { Device::Cuda(0) } else { Device::Cpu }),
        Accelerator::Cuda if cuda => Ok(Device::Cuda(0)),
        Accelerator::Cuda => bail!(
            "trainer.accelerator=cuda but libtorch sees no CUDA device; use trainer.accelerator=cpu (or auto)"
        ),
    }
}
