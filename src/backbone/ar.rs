//! The autoregressive baseline of MDLM (Sahoo et al., 2024, Table 1 "AR"): the DiT stack without
//! time conditioning and with causal attention. Mirrors the reference's `models/autoregressive.py`
//! (`DDIT` with `causal=True`, `DDiTBlock`, `DDitFinalLayer`, `AR`); parameter paths equal its
//! state-dict names under the caller's prefix (`backbone`).
//!
//! Two ways to run it: [`Ar::logits`] over a whole sequence (training, loss, the reference's
//! prefix-recompute sampler) and [`Ar::step`], which feeds new tokens against an [`ArCache`] of
//! per-block keys and values, so generating token i costs attention over i cached positions
//! instead of a forward pass over the whole prefix.
//!
//! Unlike the reference's `AR.forward`, this returns raw logits; the mask-column overwrite and
//! `log_softmax` live in `diffusion::ar`, next to the other parameterizations.

use super::layers::{
    LayerNorm, Linear, Rotary, Sublayers, attention, in_kind, rotary_inv_freq, vocab_embedding,
};
use super::{Backbone, DitConfig, Precision};
use tch::{Device, Kind, Tensor, nn};

#[derive(Clone, Debug, PartialEq)]
pub struct ArConfig {
    /// Including the mask token when the tokenizer has none (the mask column is never sampled,
    /// but the reference keeps it in the output layer).
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub n_blocks: i64,
    pub n_heads: i64,
    pub dropout: f64,
    pub mlp_ratio: i64,
    pub rotary_base: f64,
}

impl ArConfig {
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.n_heads
    }
}

/// The reference builds the AR model from the same `model.*` config as the DiT; `cond_dim` and
/// `frequency_embedding_size` are simply unused.
impl From<&DitConfig> for ArConfig {
    fn from(c: &DitConfig) -> ArConfig {
        ArConfig {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            n_blocks: c.n_blocks,
            n_heads: c.n_heads,
            dropout: c.dropout,
            mlp_ratio: c.mlp_ratio,
            rotary_base: c.rotary_base,
        }
    }
}

/// Keys and values of one block for the positions fed so far. Buffers are preallocated to a
/// capacity and written in place; only the first `len` positions are valid.
struct KvBuffers {
    k: Tensor, // [B, nh, cap, dh]
    v: Tensor, // [B, nh, cap, dh]
}

/// Per-block key/value cache for incremental decoding with [`Ar::step`]. Rotary embeddings are
/// applied to the keys before they are stored, at their absolute positions.
pub struct ArCache {
    layers: Vec<Option<KvBuffers>>,
    len: i64,
    capacity: i64,
}

impl ArCache {
    /// Positions fed so far (the absolute position of the next token).
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for positions `len..len + n` in block `i`'s buffers (allocating on first use,
    /// doubling when full), and returns them.
    fn reserve(
        &mut self,
        i: usize,
        n: i64,
        shape: (i64, i64, i64),
        kind: Kind,
        device: Device,
    ) -> &KvBuffers {
        let (b, nh, dh) = shape;
        let need = self.len + n;
        if need > self.capacity {
            self.capacity = need.max(2 * self.capacity);
        }
        let cap = self.capacity;
        let slot = &mut self.layers[i];
        let stale = match slot {
            None => true,
            Some(kv) => kv.k.size()[2] < cap,
        };
        if stale {
            let k = Tensor::zeros([b, nh, cap, dh], (kind, device));
            let v = Tensor::zeros([b, nh, cap, dh], (kind, device));
            if let Some(old) = slot.as_ref() {
                k.narrow(2, 0, self.len)
                    .copy_(&old.k.narrow(2, 0, self.len));
                v.narrow(2, 0, self.len)
                    .copy_(&old.v.narrow(2, 0, self.len));
            }
            *slot = Some(KvBuffers { k, v });
        }
        slot.as_ref().unwrap()
    }
}

struct Block {
    sub: Sublayers,
}

impl Block {
    fn new(p: nn::Path, cfg: &ArConfig) -> Block {
        Block {
            sub: Sublayers::new(&p, cfg.hidden_size, cfg.mlp_ratio, cfg.n_heads, cfg.dropout),
        }
    }

    /// `x [B, n, H]` → rotary'd q, k and plain v, each `[B, nh, n, dh]`, in `kind`.
    fn qkv(&self, x: &Tensor, rot: &Rotary, kind: Kind) -> (Tensor, Tensor, Tensor) {
        self.sub.qkv(&self.sub.norm1.forward(x), rot, kind)
    }

    /// Output projection and MLP, both residual; `attn [B, nh, n, dh]`, `x [B, n, H]` float32.
    fn finish(&self, x: &Tensor, attn: &Tensor, kind: Kind, train: bool) -> Tensor {
        let x = x + self.sub.attn_out(attn, kind, train);
        let a = self.sub.norm2.forward(&x);
        &x + self.sub.mlp(&a, kind, train)
    }

    /// Whole sequences, causal attention.
    fn forward(&self, x: &Tensor, rot: &Rotary, kind: Kind, train: bool) -> Tensor {
        let (q, k, v) = self.qkv(x, rot, kind);
        let attn = attention(&q, &k, &v, None, true);
        self.finish(x, &attn, kind, train)
    }

    /// New positions `start..start + n` against the cached ones; appends their keys and values.
    fn step(&self, x: &Tensor, rot: &Rotary, kind: Kind, cache: &mut ArCache, i: usize) -> Tensor {
        let (q, k, v) = self.qkv(x, rot, kind);
        let (b, nh, n, dh) = q.size4().expect("[B, nh, n, dh]");
        let start = cache.len;
        let kv = cache.reserve(i, n, (b, nh, dh), kind, x.device());
        kv.k.narrow(2, start, n).copy_(&k);
        kv.v.narrow(2, start, n).copy_(&v);
        let k_all = kv.k.narrow(2, 0, start + n); // [B, nh, t, dh]
        let v_all = kv.v.narrow(2, 0, start + n);
        // One new token sees everything cached; a chunk of several needs the causal mask,
        // shifted by the cached length (query j may see keys 0..=start + j).
        let mask = (n > 1).then(|| {
            let qpos = Tensor::arange_start(start, start + n, (Kind::Int64, x.device()));
            let kpos = Tensor::arange(start + n, (Kind::Int64, x.device()));
            kpos.unsqueeze(0).le_tensor(&qpos.unsqueeze(1)) // [n, t], true = attend
        });
        let attn = attention(&q, &k_all, &v_all, mask, false);
        self.finish(x, &attn, kind, false)
    }
}

struct OutputLayer {
    norm_final: LayerNorm,
    linear: Linear,
}

impl OutputLayer {
    fn new(p: nn::Path, cfg: &ArConfig) -> OutputLayer {
        OutputLayer {
            norm_final: LayerNorm::new(&p / "norm_final", cfg.hidden_size),
            // Zero-initialised, as the reference does.
            linear: Linear::zeros(&p / "linear", cfg.hidden_size, cfg.vocab_size),
        }
    }

    fn forward(&self, x: &Tensor, kind: Kind) -> Tensor {
        self.linear.forward(&self.norm_final.forward(x), kind)
    }
}

pub struct Ar {
    vocab_embed: Tensor,
    inv_freq: Tensor,
    blocks: Vec<Block>,
    output_layer: OutputLayer,
    precision: Precision,
}

impl Ar {
    /// `p` is the backbone's own path (`root / "backbone"`).
    pub fn new(p: nn::Path, cfg: &ArConfig, precision: Precision) -> Ar {
        let h = cfg.hidden_size;
        let vocab_embed = vocab_embedding(&p / "vocab_embed", cfg.vocab_size, h);
        let inv_freq = rotary_inv_freq(&p / "rotary_emb", cfg.head_dim(), cfg.rotary_base);
        let blocks_p = &p / "blocks";
        let blocks = (0..cfg.n_blocks)
            .map(|i| Block::new(&blocks_p / i, cfg))
            .collect();
        let output_layer = OutputLayer::new(&p / "output_layer", cfg);
        Ar {
            vocab_embed,
            inv_freq,
            blocks,
            output_layer,
            precision,
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// `ids [B, L]` → raw logits `[B, L, V]` (float32), each position attending to itself and
    /// the positions before it.
    pub fn logits(&self, ids: &Tensor, train: bool) -> Tensor {
        let kind = self.precision.kind();
        let mut x = Tensor::embedding(&self.vocab_embed, ids, -1, false, false); // [B, L, H]
        let rot = Rotary::at(&self.inv_freq, 0, ids.size()[1], kind);
        for block in &self.blocks {
            x = block.forward(&x, &rot, kind, train);
        }
        in_kind(&self.output_layer.forward(&x, kind), Kind::Float)
    }

    /// An empty cache with room for `capacity` positions (it grows if more are fed).
    pub fn cache(&self, capacity: i64) -> ArCache {
        ArCache {
            layers: (0..self.blocks.len()).map(|_| None).collect(),
            len: 0,
            capacity: capacity.max(1),
        }
    }

    /// Feeds `ids_new [B, n]` at positions `cache.len()..cache.len() + n` and returns their raw
    /// logits `[B, n, V]` (float32), equal to the matching rows of [`Ar::logits`] on the whole
    /// prefix. Inference only (eval mode; call under `tch::no_grad`: the cache is written in
    /// place). The batch size must not change between calls on one cache.
    pub fn step(&self, ids_new: &Tensor, cache: &mut ArCache) -> Tensor {
        let kind = self.precision.kind();
        let n = ids_new.size()[1];
        let mut x = Tensor::embedding(&self.vocab_embed, ids_new, -1, false, false); // [B, n, H]
        let rot = Rotary::at(&self.inv_freq, cache.len, n, kind);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.step(&x, &rot, kind, cache, i);
        }
        cache.len += n;
        in_kind(&self.output_layer.forward(&x, kind), Kind::Float)
    }
}

/// The AR network ignores the noise level.
impl Backbone for Ar {
    fn forward(&self, ids: &Tensor, _sigma: &Tensor, train: bool) -> Tensor {
        self.logits(ids, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::load::manifest;

    fn cfg() -> ArConfig {
        ArConfig {
            vocab_size: 11,
            hidden_size: 16,
            n_blocks: 2,
            n_heads: 2,
            dropout: 0.0,
            mlp_ratio: 4,
            rotary_base: 10_000.0,
        }
    }

    /// A model with every parameter random (the output layer starts at zero otherwise).
    fn random_model() -> (nn::VarStore, Ar) {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let ar = Ar::new(vs.root() / "backbone", &cfg(), Precision::F32);
        tch::no_grad(|| {
            for (name, v) in vs.variables() {
                if name.ends_with("inv_freq") {
                    continue;
                }
                v.shallow_clone().copy_(&(Tensor::randn_like(&v) * 0.5));
            }
        });
        (vs, ar)
    }

    #[test]
    fn manifest_has_the_reference_names() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _ar = Ar::new(vs.root() / "backbone", &cfg(), Precision::F32);
        let mut expected: Vec<(String, Vec<i64>)> = vec![
            ("backbone.vocab_embed.embedding".into(), vec![11, 16]),
            ("backbone.rotary_emb.inv_freq".into(), vec![4]),
            ("backbone.output_layer.norm_final.weight".into(), vec![16]),
            ("backbone.output_layer.linear.weight".into(), vec![11, 16]),
            ("backbone.output_layer.linear.bias".into(), vec![11]),
        ];
        for i in 0..2 {
            let b = |s: &str| format!("backbone.blocks.{i}.{s}");
            expected.extend([
                (b("norm1.weight"), vec![16]),
                (b("attn_qkv.weight"), vec![48, 16]),
                (b("attn_out.weight"), vec![16, 16]),
                (b("norm2.weight"), vec![16]),
                (b("mlp.0.weight"), vec![64, 16]),
                (b("mlp.0.bias"), vec![64]),
                (b("mlp.2.weight"), vec![16, 64]),
                (b("mlp.2.bias"), vec![16]),
            ]);
        }
        expected.sort();
        assert_eq!(manifest(&vs), expected);
    }

    #[test]
    fn attention_is_causal() {
        let (_vs, ar) = random_model();
        let a = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([1, 6]);
        let b = Tensor::from_slice(&[1i64, 2, 3, 9, 9, 9]).view([1, 6]);
        let (la, lb) = tch::no_grad(|| (ar.logits(&a, false), ar.logits(&b, false)));
        let diff = (la.narrow(1, 0, 3) - lb.narrow(1, 0, 3)).abs().max();
        assert!(f64::try_from(diff).unwrap() < 1e-6);
        let later = (la.narrow(1, 3, 1) - lb.narrow(1, 3, 1)).abs().max();
        assert!(f64::try_from(later).unwrap() > 1e-3);
    }

    #[test]
    fn cached_steps_match_the_full_forward() {
        let (_vs, ar) = random_model();
        let ids = Tensor::randint(10, [3, 9], (Kind::Int64, Device::Cpu));
        let full = tch::no_grad(|| ar.logits(&ids, false));
        // Capacity 2 forces the buffers to grow; chunks of 3, 1, 1, 4 mix prefill and decoding.
        let mut cache = ar.cache(2);
        let mut got = Vec::new();
        let mut at = 0;
        for n in [3, 1, 1, 4] {
            got.push(tch::no_grad(|| ar.step(&ids.narrow(1, at, n), &mut cache)));
            at += n;
        }
        assert_eq!(cache.len(), 9);
        let got = Tensor::cat(&got, 1);
        let err = f64::try_from((got - full).abs().max()).unwrap();
        assert!(err < 1e-5, "cached logits differ by {err}");
    }

    /// Dropout as the reference's AR `DDiTBlock` places it: on the attention-out and MLP branch
    /// outputs (scale 1), elementwise at `model.dropout`; none inside attention.
    #[test]
    fn dropout_acts_on_each_branch_output() {
        use crate::backbone::test_util::{assert_branch_dropout, fill};
        let p = 0.3;
        let cfg = ArConfig {
            dropout: p,
            hidden_size: 32,
            n_blocks: 1,
            ..cfg()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Ar::new(vs.root() / "backbone", &cfg, Precision::F32);
        let ids = Tensor::from_slice(&[1i64, 5, 7, 10, 0, 3, 3, 2, 9, 4, 4, 8]).view([2, 6]);
        for (silenced, branch) in [
            (".mlp.2.", "attention branch"),
            (".attn_out.", "MLP branch"),
        ] {
            fill(&vs, &[silenced]);
            let x = Tensor::embedding(&model.vocab_embed, &ids, -1, false, false);
            let rot = Rotary::at(&model.inv_freq, 0, 6, Kind::Float);
            let block = &model.blocks[0];
            let eval = block.forward(&x, &rot, Kind::Float, false);
            tch::manual_seed(7);
            let train = block.forward(&x, &rot, Kind::Float, true);
            assert_branch_dropout(&x, &eval, &train, p, branch);
        }
    }
}
