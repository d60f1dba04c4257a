//! Training: the loop, the optimizer, the learning-rate schedule and the EMA of the weights.

pub mod ema;
pub mod foreach;
pub mod lr;
pub mod optim;
mod seeds;
mod state;
pub mod trainer;
