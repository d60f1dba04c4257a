//! A backbone together with the variable store that owns its parameters, and the per-batch
//! objective it is trained and evaluated with.

use crate::backbone::{Ar, ArConfig, Backbone, Dimamba, DimambaConfig, Dit, DitConfig, Precision};
use crate::data::loader::EvalPlace;
use crate::diffusion::{self, Diffusion, Draws};
use anyhow::Result;
use tch::{Device, Tensor, nn};

pub enum Net {
    Dit(Dit),
    Ar(Ar),
    DiMamba(Dimamba),
}

pub struct Model {
    pub vs: nn::VarStore,
    pub net: Net,
}

/// Which rows of a data-parallel batch this process holds, and the seed its own randomness
/// (dropout) continues from.
#[derive(Debug, Clone, Copy)]
pub struct RowShare {
    pub rank: i64,
    pub world: i64,
    pub rank_seed: i64,
}

/// Which rows of the batch its diffusion draws are made for this process holds.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// The whole batch, drawn as the reference draws it.
    Whole,
    /// Data-parallel training: the rows of `share.rank` (see [`Draws::sample_rows`]).
    Share(RowShare),
    /// Evaluation: this process's rows of a global batch, for whose whole the caller has
    /// seeded the generator (see [`Draws::rows_of`]).
    Eval(&'a EvalPlace),
}

/// What training and validation need from one batch, whatever the objective.
pub struct BatchLoss {
    /// Token-mean loss (what is minimised).
    pub loss: Tensor,
    /// Per-token losses times the token mask.
    pub nlls: Tensor,
    pub token_mask: Tensor,
}

impl Model {
    pub fn dit(cfg: &DitConfig, precision: Precision, device: Device) -> Model {
        let vs = nn::VarStore::new(device);
        let net = Net::Dit(Dit::new(vs.root() / "backbone", cfg, precision));
        Model { vs, net }
    }

    pub fn ar(cfg: &ArConfig, precision: Precision, device: Device) -> Model {
        let vs = nn::VarStore::new(device);
        let net = Net::Ar(Ar::new(vs.root() / "backbone", cfg, precision));
        Model { vs, net }
    }

    pub fn dimamba(cfg: &DimambaConfig, precision: Precision, device: Device) -> Model {
        let vs = nn::VarStore::new(device);
        let net = Net::DiMamba(Dimamba::new(vs.root() / "backbone", cfg, precision));
        Model { vs, net }
    }

    pub fn backbone(&self) -> &dyn Backbone {
        match &self.net {
            Net::Dit(d) => d,
            Net::Ar(a) => a,
            Net::DiMamba(m) => m,
        }
    }

    /// The diffusion NELBO for a DiT or DiMamba (fresh uniform draws from libtorch's generator),
    /// the next-token loss for the AR baseline.
    ///
    /// `rows` says which rows of the batch the draws are made for this process holds. In
    /// data-parallel training the generator is then reseeded per rank so that dropout differs
    /// between replicas; evaluation has no dropout and keeps the draws' generator as it is.
    pub fn batch_loss(
        &self,
        diffusion: &Diffusion,
        x0: &Tensor,
        mask: &Tensor,
        train: bool,
        rows: Rows,
    ) -> Result<BatchLoss> {
        let reseed_for_dropout = || {
            if let Rows::Share(s) = rows
                && s.world > 1
                && train
            {
                tch::manual_seed(s.rank_seed);
            }
        };
        match &self.net {
            Net::Dit(_) | Net::DiMamba(_) => {
                let (b, l) = x0.size2()?;
                let dev = x0.device();
                let anti = diffusion.antithetic_sampling;
                let draws = match rows {
                    Rows::Whole => Draws::sample(b, l, dev),
                    Rows::Share(s) => Draws::sample_rows(b, l, dev, s.rank, s.world, anti),
                    // Holding the whole batch (one process), the cut would select every row.
                    Rows::Eval(place) if place.local.len() == place.rows => {
                        Draws::sample(b, l, dev)
                    }
                    Rows::Eval(place) => {
                        let local = Tensor::from_slice(&place.local).to_device(dev);
                        Draws::rows_of(place.rows as i64, &local, l, dev, anti)
                    }
                };
                reseed_for_dropout();
                let p = diffusion.loss(self.backbone(), x0, mask, &draws, train)?;
                Ok(BatchLoss {
                    loss: p.loss,
                    nlls: p.nlls,
                    token_mask: p.token_mask,
                })
            }
            Net::Ar(ar) => {
                reseed_for_dropout();
                let p = diffusion::ar::loss(ar, x0, mask, diffusion.mask_index, train);
                Ok(BatchLoss {
                    loss: p.loss,
                    nlls: p.nlls,
                    token_mask: p.token_mask,
                })
            }
        }
    }

    /// Trainable parameters by their reference names, sorted, so every consumer (optimizer, EMA,
    /// checkpoint) sees one fixed order. A tensor stored under several names (DiMamba's tied
    /// weights) is listed once, under its first name, so it is updated once per step.
    pub fn params(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut seen = std::collections::HashSet::new();
        v.retain(|(_, t)| seen.insert(t.data_ptr() as usize));
        v
    }

    /// Overwrites parameters with same-named tensors (e.g. EMA shadows): this is how the EMA
    /// model is built, rather than by swapping weights in and out of the trained one.
    pub fn assign(&self, named: &[(String, Tensor)]) -> Result<()> {
        let vars = self.vs.variables();
        tch::no_grad(|| -> Result<()> {
            for (name, t) in named {
                let v = vars
                    .get(name)
                    .ok_or_else(|| anyhow::anyhow!("model has no parameter '{name}'"))?;
                v.shallow_clone().copy_(t);
            }
            Ok(())
        })
    }

    pub fn num_params(&self) -> i64 {
        self.params().iter().map(|(_, t)| t.numel() as i64).sum()
    }

    /// Model FLOPs of one training token (forward and backward), the estimate MFU is usually
    /// quoted with: 6 per weight that multiplies (an embedding table is a lookup and does not
    /// count unless it doubles as the output projection), plus 12 · blocks · hidden · length for
    /// the attention scores and their weighted sum. DiMamba has no attention; its scan is
    /// O(hidden · state) per token and left out, as elementwise work is.
    pub fn train_flops_per_token(&self, cfg: &crate::config::Model) -> f64 {
        let (embedding, tied) = match &self.net {
            Net::DiMamba(_) => ("word_embeddings", cfg.tie_word_embeddings),
            _ => ("vocab_embed", false),
        };
        let lookup: i64 = self
            .params()
            .iter()
            .filter(|(n, _)| !tied && n.contains(embedding))
            .map(|(_, t)| t.numel() as i64)
            .sum();
        let attention = match &self.net {
            Net::DiMamba(_) => 0,
            _ => 12 * cfg.n_blocks * cfg.hidden_size * cfg.length,
        };
        6.0 * (self.num_params() - lookup) as f64 + attention as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Model as ModelCfg, ModelType};

    /// The count for a one-block DiT worked out by hand from the reference's modules: the
    /// timestep MLP (256→4→4 with biases) 1048, the block (two LayerNorm weights 16, qkv 192,
    /// out 64, MLP 288 + 264, adaLN 240) 1064, the final layer (norm 8, H→V 90, adaLN 80) 178;
    /// the 10×8 embedding table is a lookup and not counted.
    #[test]
    fn dit_flops_per_token_count_multiplying_weights_and_attention() {
        let dit = DitConfig {
            vocab_size: 10,
            hidden_size: 8,
            cond_dim: 4,
            n_blocks: 1,
            n_heads: 2,
            dropout: 0.0,
            mlp_ratio: 4,
            frequency_embedding_size: 256,
            rotary_base: 10_000.0,
        };
        let model = Model::dit(&dit, Precision::F32, Device::Cpu);
        assert_eq!(model.num_params(), 2290 + 80);
        let cfg = ModelCfg {
            name: "t".into(),
            kind: ModelType::Ddit,
            hidden_size: 8,
            cond_dim: 4,
            length: 16,
            n_blocks: 1,
            n_heads: 2,
            scale_by_sigma: true,
            dropout: 0.0,
            tie_word_embeddings: false,
            causal: None,
            temb_strategy: None,
        };
        assert_eq!(
            model.train_flops_per_token(&cfg),
            (6 * 2290 + 12 * 8 * 16) as f64
        );
    }
}
