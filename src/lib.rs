//! mdlm: Masked Diffusion Language Models (Sahoo et al., NeurIPS 2024) on libtorch.
//!
//! Data flows one way: config → data → backbone → diffusion → train / eval / sample.

pub(crate) mod atomic_file;
pub mod backbone;
pub mod checkpoint;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod dist;
pub mod eval;
pub mod hub;
pub mod model;
pub mod profile;
pub mod report;
pub mod sample;
pub mod tb;
pub mod train;
