//! Training: the loop, the optimizer, the learning-rate schedule, the EMA of the weights and the
//! samples drawn at validation.

pub mod ema;
pub mod foreach;
pub mod lr;
pub mod optim;
pub mod samples;
pub mod seeds;
mod state;
pub mod trainer;
