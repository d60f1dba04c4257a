//! Positions held fixed while sampling: prompts, suffixes, infilling.

use crate::diffusion::Diffusion;
use tch::{Device, Kind, Tensor};

/// Positions fixed during sampling: a prompt (prefix), a suffix, or any positions to infill
/// around. No sampler changes a held position.
#[derive(Debug)]
pub struct Held {
    /// `[B, L]` int64; read only where `held` is true.
    pub tokens: Tensor,
    /// `[B, L]` bool: positions fixed to `tokens`.
    pub held: Tensor,
}

impl Clone for Held {
    fn clone(&self) -> Held {
        Held {
            tokens: self.tokens.shallow_clone(),
            held: self.held.shallow_clone(),
        }
    }
}

impl Held {
    /// The first `prefix.size()[1]` positions of every row held to `prefix [B, P]`, in rows of
    /// `length`.
    pub fn prefix(prefix: &Tensor, length: i64) -> Held {
        let (b, p) = prefix.size2().expect("prefix is [B, P]");
        assert!(
            p <= length,
            "a prefix of {p} tokens does not fit length {length}"
        );
        let opts = (Kind::Int64, prefix.device());
        let tokens = Tensor::cat(
            &[
                prefix.to_kind(Kind::Int64),
                Tensor::zeros([b, length - p], opts),
            ],
            1,
        );
        let held = Tensor::arange(length, opts)
            .lt(p)
            .unsqueeze(0)
            .expand([b, length], false);
        Held {
            tokens,
            held: held.contiguous(),
        }
    }

    /// `x` with every held position set to its token.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        self.tokens.where_self(&self.held, x)
    }

    pub(super) fn to_device(&self, device: Device) -> Held {
        Held {
            tokens: self.tokens.to_device(device).to_kind(Kind::Int64),
            held: self.held.to_device(device).to_kind(Kind::Bool),
        }
    }

    pub(super) fn validate(&self, batch: i64, length: i64, diff: &Diffusion) -> anyhow::Result<()> {
        for (name, t) in [("tokens", &self.tokens), ("held", &self.held)] {
            if t.size() != [batch, length] {
                anyhow::bail!(
                    "held.{name} has shape {:?}; sampling needs [batch, length] = [{batch}, {length}]",
                    t.size()
                );
            }
        }
        let held = self.held.to_kind(Kind::Bool);
        let tokens = self.tokens.masked_select(&held);
        if tokens.numel() > 0 {
            let (lo, hi) = (tokens.min().int64_value(&[]), tokens.max().int64_value(&[]));
            if lo < 0 || hi >= diff.vocab_size {
                anyhow::bail!(
                    "held tokens span {lo}..={hi}, outside the vocabulary 0..{}",
                    diff.vocab_size
                );
            }
            if tokens.eq(diff.mask_index).any().int64_value(&[]) != 0 {
                anyhow::bail!(
                    "a held position holds the mask token {}; leave it unheld to generate it",
                    diff.mask_index
                );
            }
        }
        Ok(())
    }
}
