//! Diffusion Transformer with adaLN time conditioning and rotary attention (Peebles & Xie, 2023, as
//! used by MDLM). Mirrors the reference's `models/dit.py` (`DIT`, `DDiTBlock`, `DDitFinalLayer`);
//! parameter paths equal its state-dict names under the caller's prefix (`backbone`).

use super::layers::{
    LayerNorm, Linear, Rotary, Sublayers, TimestepEmbedder, attention, gated_residual, in_kind,
    modulate_scaled, rotary_inv_freq, vocab_embedding,
};
use super::{Backbone, Precision};
use tch::{Kind, Tensor, nn};

#[derive(Clone, Debug, PartialEq)]
pub struct DitConfig {
    /// Including the mask token when the tokenizer has none.
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub cond_dim: i64,
    pub n_blocks: i64,
    pub n_heads: i64,
    pub dropout: f64,
    pub mlp_ratio: i64,
    pub frequency_embedding_size: i64,
    pub rotary_base: f64,
}

impl DitConfig {
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.n_heads
    }
}

/// The adaLN modulation `[B, n * H]` with 1 added to its scale chunks in one op, so each
/// modulate is one multiply-add (`1 + scale` rounds the same either way).
struct AdaLn {
    linear: Linear,
    /// `[n * H]` in the compute precision: 1 on the scale chunks, 0 elsewhere.
    ones_at_scales: Tensor,
    chunks: i64,
}

impl AdaLn {
    /// `scales`: which of the `chunks` chunks of width `h` are scales.
    fn new(p: nn::Path, cond: i64, h: i64, chunks: i64, scales: &[i64], kind: Kind) -> AdaLn {
        let linear = Linear::zeros(p, cond, chunks * h);
        let ones_at_scales = Tensor::zeros([chunks, h], (kind, linear.weight.device()));
        for &i in scales {
            let _ = ones_at_scales.get(i).fill_(1.0);
        }
        AdaLn {
            linear,
            ones_at_scales: ones_at_scales.view([chunks * h]),
            chunks,
        }
    }

    /// `c [B, cond]` → `chunks` x `[B, 1, H]`, scale chunks as `1 + scale`.
    fn forward(&self, c: &Tensor, kind: Kind) -> Vec<Tensor> {
        (self.linear.forward(c, kind) + &self.ones_at_scales)
            .unsqueeze(1)
            .chunk(self.chunks, 2)
    }
}

struct Block {
    sub: Sublayers,
    ada_ln: AdaLn,
}

impl Block {
    fn new(p: nn::Path, cfg: &DitConfig, kind: Kind) -> Block {
        let h = cfg.hidden_size;
        Block {
            sub: Sublayers::new(&p, h, cfg.mlp_ratio, cfg.n_heads, cfg.dropout),
            ada_ln: AdaLn::new(&p / "adaLN_modulation", cfg.cond_dim, h, 6, &[1, 4], kind),
        }
    }

    /// `x [B, L, H]` float32 residual stream; `c [B, cond]`.
    fn forward(&self, x: &Tensor, rot: &Rotary, c: &Tensor, kind: Kind, train: bool) -> Tensor {
        let m = self.ada_ln.forward(c, kind); // 6 x [B, 1, H]
        let (shift_msa, scale1_msa, gate_msa) = (&m[0], &m[1], &m[2]);
        let (shift_mlp, scale1_mlp, gate_mlp) = (&m[3], &m[4], &m[5]);

        let a = modulate_scaled(&self.sub.norm1.forward(x), shift_msa, scale1_msa);
        let (q, k, v) = self.sub.qkv(&a, rot, kind);
        let attn = attention(&q, &k, &v, None, false);
        let x = gated_residual(x, gate_msa, &self.sub.attn_out(&attn, kind, train));

        let a = modulate_scaled(&self.sub.norm2.forward(&x), shift_mlp, scale1_mlp);
        gated_residual(&x, gate_mlp, &self.sub.mlp(&a, kind, train))
    }
}

struct FinalLayer {
    norm_final: LayerNorm,
    linear: Linear,
    ada_ln: AdaLn,
}

impl FinalLayer {
    fn new(p: nn::Path, cfg: &DitConfig, kind: Kind) -> FinalLayer {
        let h = cfg.hidden_size;
        FinalLayer {
            norm_final: LayerNorm::new(&p / "norm_final", h),
            linear: Linear::zeros(&p / "linear", h, cfg.vocab_size),
            ada_ln: AdaLn::new(&p / "adaLN_modulation", cfg.cond_dim, h, 2, &[1], kind),
        }
    }

    fn forward(&self, x: &Tensor, c: &Tensor, kind: Kind) -> Tensor {
        let m = self.ada_ln.forward(c, kind);
        let a = modulate_scaled(&self.norm_final.forward(x), &m[0], &m[1]);
        self.linear.forward(&a, kind)
    }
}

pub struct Dit {
    vocab_embed: Tensor,
    sigma_map: TimestepEmbedder,
    inv_freq: Tensor,
    blocks: Vec<Block>,
    output_layer: FinalLayer,
    precision: Precision,
}

impl Dit {
    /// `p` is the backbone's own path (`root / "backbone"`).
    pub fn new(p: nn::Path, cfg: &DitConfig, precision: Precision) -> Dit {
        let h = cfg.hidden_size;
        let vocab_embed = vocab_embedding(&p / "vocab_embed", cfg.vocab_size, h);
        let sigma_map =
            TimestepEmbedder::new(&p / "sigma_map", cfg.cond_dim, cfg.frequency_embedding_size);
        let inv_freq = rotary_inv_freq(&p / "rotary_emb", cfg.head_dim(), cfg.rotary_base);
        let blocks_p = &p / "blocks";
        let kind = precision.kind();
        let blocks = (0..cfg.n_blocks)
            .map(|i| Block::new(&blocks_p / i, cfg, kind))
            .collect();
        let output_layer = FinalLayer::new(&p / "output_layer", cfg, kind);
        Dit {
            vocab_embed,
            sigma_map,
            inv_freq,
            blocks,
            output_layer,
            precision,
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }
}

impl Backbone for Dit {
    fn forward(&self, ids: &Tensor, sigma: &Tensor, train: bool) -> Tensor {
        let kind = self.precision.kind();
        let x = Tensor::embedding(&self.vocab_embed, ids, -1, false, false); // [B, L, H]
        let c = self.sigma_map.forward(sigma).silu(); // [B, cond]
        let rot = Rotary::at(&self.inv_freq, 0, ids.size()[1], kind);
        let mut x = x;
        for block in &self.blocks {
            x = block.forward(&x, &rot, &c, kind, train);
        }
        in_kind(&self.output_layer.forward(&x, &c, kind), Kind::Float)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn small(n_blocks: i64, dropout: f64) -> DitConfig {
        DitConfig {
            vocab_size: 20,
            hidden_size: 32,
            cond_dim: 16,
            n_blocks,
            n_heads: 4,
            dropout,
            mlp_ratio: 4,
            frequency_embedding_size: 256,
            rotary_base: 10_000.0,
        }
    }

    /// The bf16 path (what CUDA runs under `trainer.precision=bf16`) runs on CPU too and stays
    /// close to float32: same weights, logits within bf16 rounding.
    #[test]
    fn bf16_matches_float32_within_bf16_rounding() {
        let cfg = small(2, 0.0);
        let vs = nn::VarStore::new(Device::Cpu);
        let f32_model = Dit::new(vs.root() / "backbone", &cfg, Precision::F32);
        // Non-zero adaLN and output layers, so every path contributes.
        crate::backbone::test_util::fill(&vs, &[]);
        let bf16_model = Dit::new(vs.root() / "backbone2", &cfg, Precision::Bf16);
        let vs2 = vs.variables();
        tch::no_grad(|| {
            for (name, v) in &vs2 {
                if let Some(rest) = name.strip_prefix("backbone2.") {
                    v.shallow_clone().copy_(&vs2[&format!("backbone.{rest}")]);
                }
            }
        });
        let ids = Tensor::from_slice(&[1i64, 5, 7, 19, 0, 3, 3, 2]).view([2, 4]);
        let sigma = Tensor::from_slice(&[0.5f32, 2.0]);
        let a = f32_model.forward(&ids, &sigma, false);
        let b = bf16_model.forward(&ids, &sigma, false);
        assert_eq!(b.kind(), Kind::Float);
        let scale = f64::try_from(a.abs().max()).unwrap();
        let err = f64::try_from((&a - &b).abs().max()).unwrap();
        assert!(scale > 0.1, "degenerate logits");
        assert!(err < 0.05 * scale, "bf16 error {err} vs scale {scale}");
        assert!(err > 0.0, "the bf16 path computed in float32");
    }

    /// Dropout as the reference places it (`DDiTBlock.forward`): on the attention-out and MLP
    /// branch outputs, elementwise at `model.dropout`, before the gates; none inside attention.
    #[test]
    fn dropout_acts_on_each_branch_output() {
        use crate::backbone::test_util::{assert_branch_dropout, fill};
        let p = 0.5;
        let cfg = small(1, p);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Dit::new(vs.root() / "backbone", &cfg, Precision::F32);
        let ids = Tensor::from_slice(&[1i64, 5, 7, 19, 0, 3, 3, 2, 9, 4, 4, 11]).view([2, 6]);
        let sigma = Tensor::from_slice(&[0.5f32, 2.0]);
        for (silenced, branch) in [
            (".mlp.2.", "attention branch"),
            (".attn_out.", "MLP branch"),
        ] {
            fill(&vs, &[silenced]);
            let x = Tensor::embedding(&model.vocab_embed, &ids, -1, false, false);
            let c = model.sigma_map.forward(&sigma).silu();
            let rot = Rotary::at(&model.inv_freq, 0, 6, Kind::Float);
            let block = &model.blocks[0];
            let eval = block.forward(&x, &rot, &c, Kind::Float, false);
            tch::manual_seed(7);
            let train = block.forward(&x, &rot, &c, Kind::Float, true);
            assert_branch_dropout(&x, &eval, &train, p, branch);
        }
    }
}
