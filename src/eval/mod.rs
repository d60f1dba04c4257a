//! Evaluation: token-weighted NLL / BPD / PPL accumulated in float64.

pub mod metrics;
