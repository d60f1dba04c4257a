//! Checkpoints: mdlm's own training checkpoint format (`native`), one safetensors file that holds
//! the model, the EMA and the optimizer state plus the run state and the config that made it;
//! the Hugging Face MDLM folder layout (`hf`, read and written); the reference's PyTorch Lightning
//! `.ckpt` (`lightning`, read only, without executing its pickle).

pub mod hf;
pub mod lightning;
mod native;
mod pickle;
mod torch_zip;

pub use native::{Checkpoint, FORMAT, VERSION, load, load_into, save};

/// Hooks for tests that need to interrupt a save part way; not part of the API.
#[doc(hidden)]
pub mod testing {
    pub use super::native::save_interrupted_after;
}
