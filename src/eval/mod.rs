//! Evaluation: token-weighted NLL / BPD / PPL accumulated in float64; GPT-2 generative perplexity.

pub mod gen_ppl;
pub mod gpt2;
pub mod metrics;
