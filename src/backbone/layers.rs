//! Building blocks of the DiT (reference: `models/dit.py`), each built at the parameter path the
//! reference's state dict uses, so checkpoints interoperate.

use tch::{Kind, Tensor, nn};

/// `nn.Linear` with the reference's names (`weight`, `bias`) and PyTorch's `reset_parameters`
/// init, computed in the caller's precision the way autocast would: inputs and weights cast to
/// `kind`.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// PyTorch's default: weight kaiming_uniform(a=sqrt(5)) and bias alike, both
    /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)). tch's own `nn::linear` default is Kaiming-uniform with
    /// the ReLU gain, bound sqrt(6/fan_in): 2.45x wider, which the training curve shows (issue 12).
    pub fn new(p: nn::Path, d_in: i64, d_out: i64, bias: bool) -> Linear {
        let init = torch_default_uniform(d_in);
        let weight = p.var("weight", &[d_out, d_in], init);
        let bias = bias.then(|| p.var("bias", &[d_out], init));
        Linear { weight, bias }
    }

    /// Zero-initialised, as the reference does for adaLN modulations and the output layer.
    pub fn zeros(p: nn::Path, d_in: i64, d_out: i64) -> Linear {
        let weight = p.zeros("weight", &[d_out, d_in]);
        let bias = Some(p.zeros("bias", &[d_out]));
        Linear { weight, bias }
    }

    pub fn forward(&self, x: &Tensor, kind: Kind) -> Tensor {
        let w = in_kind(&self.weight, kind);
        let b = self.bias.as_ref().map(|b| in_kind(b, kind));
        in_kind(x, kind).linear(&w, b.as_ref())
    }
}

/// `t` in `kind`; no op at all when it already is (`to` would still be dispatched, and counted).
pub fn in_kind(t: &Tensor, kind: Kind) -> Tensor {
    if t.kind() == kind {
        t.shallow_clone()
    } else {
        t.to_kind(kind)
    }
}

pub use super::dropout::dropout;

/// LayerNorm without bias (`models/dit.py: LayerNorm`): normalised in float32 with autocast off,
/// then scaled by `weight` — inside the one layer-norm kernel, which computes the same
/// `(x - mean) * rstd * weight` products.
pub struct LayerNorm {
    pub weight: Tensor,
    dim: i64,
}

impl LayerNorm {
    pub fn new(p: nn::Path, dim: i64) -> LayerNorm {
        LayerNorm {
            weight: p.ones("weight", &[dim]),
            dim,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        in_kind(x, Kind::Float).layer_norm(
            [self.dim],
            Some(&self.weight),
            None::<&Tensor>,
            1e-5,
            true,
        )
    }
}

/// The attention and MLP sublayers a DiT block and an AR block share, under the reference's
/// names (`norm1`, `attn_qkv`, `attn_out`, `norm2`, `mlp.0`, `mlp.2`); the blocks differ only in
/// what they do between them (adaLN modulation and gates, causal masks, a KV cache).
pub struct Sublayers {
    pub norm1: LayerNorm,
    attn_qkv: Linear,
    attn_out: Linear,
    pub norm2: LayerNorm,
    mlp0: Linear,
    mlp2: Linear,
    n_heads: i64,
    dropout: f64,
}

impl Sublayers {
    pub fn new(p: &nn::Path, hidden: i64, mlp_ratio: i64, n_heads: i64, dropout: f64) -> Sublayers {
        let mlp = p / "mlp";
        Sublayers {
            norm1: LayerNorm::new(p / "norm1", hidden),
            attn_qkv: Linear::new(p / "attn_qkv", hidden, 3 * hidden, false),
            attn_out: Linear::new(p / "attn_out", hidden, hidden, false),
            norm2: LayerNorm::new(p / "norm2", hidden),
            mlp0: Linear::new(&mlp / "0", hidden, mlp_ratio * hidden, true),
            mlp2: Linear::new(&mlp / "2", mlp_ratio * hidden, hidden, true),
            n_heads,
            dropout,
        }
    }

    /// `a [B, n, H]` (the normalised input) → rotary'd q, k and plain v, each `[B, nh, n, dh]`.
    /// q and k are rotated together, as one tensor.
    pub fn qkv(&self, a: &Tensor, rot: &Rotary, kind: Kind) -> (Tensor, Tensor, Tensor) {
        let (b, n, h) = a.size3().expect("[B, n, H]");
        let qkv = self
            .attn_qkv
            .forward(a, kind)
            .view([b, n, 3, self.n_heads, h / self.n_heads]); // [B, n, 3, nh, dh]
        if super::rotary::applies(&qkv) {
            return super::rotary::split(&qkv, &rot.cos, &rot.sin);
        }
        qkv_composite(&qkv, rot)
    }

    /// Attention output `[B, nh, n, dh]` → heads back to `[B, n, H]` (head-major), projected,
    /// with dropout; the caller adds it to the residual stream.
    pub fn attn_out(&self, attn: &Tensor, kind: Kind, train: bool) -> Tensor {
        let (b, nh, n, dh) = attn.size4().expect("[B, nh, n, dh]");
        let attn = attn.transpose(1, 2).reshape([b, n, nh * dh]);
        dropout(self.attn_out.forward(&attn, kind), self.dropout, train)
    }

    /// The MLP on the normalised `a [B, n, H]`, with dropout.
    pub fn mlp(&self, a: &Tensor, kind: Kind, train: bool) -> Tensor {
        let hdn = self.mlp0.forward(a, kind).gelu("tanh");
        dropout(self.mlp2.forward(&hdn, kind), self.dropout, train)
    }
}

/// `qkv [B, n, 3, nh, dh]` → rotary'd q, k and plain v as views and elementwise ops: what CUDA
/// and bf16 run, and the truth `rotary.cpp`'s one-pass split is tested against.
pub fn qkv_composite(qkv: &Tensor, rot: &Rotary) -> (Tensor, Tensor, Tensor) {
    let qk = rot
        .apply(&qkv.narrow(2, 0, 2))
        .permute([2, 0, 3, 1, 4]) // [2, B, nh, n, dh]
        .unbind(0);
    let v = qkv.select(2, 2).transpose(1, 2);
    (qk[0].shallow_clone(), qk[1].shallow_clone(), v)
}

/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)): what PyTorch's kaiming_uniform(a=sqrt(5)) comes to (its
/// gain sqrt(2/(1+5)) times sqrt(3/fan_in)), the default of `nn.Linear`, `nn.Conv1d` and the
/// reference's `EmbeddingLayer`.
pub fn torch_default_uniform(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// The reference's `EmbeddingLayer` weight `[V, H]` (`<p>.embedding`), initialised as its
/// kaiming_uniform(a=sqrt(5)): U(-1/sqrt(H), 1/sqrt(H)).
pub fn vocab_embedding(p: nn::Path, vocab: i64, hidden: i64) -> Tensor {
    // kaiming_uniform_ takes fan_in from dim 1 of the [V, H] tensor: H.
    p.var("embedding", &[vocab, hidden], torch_default_uniform(hidden))
}

/// `x * (1 + scale) + shift`, with shift/scale `[B, 1, H]`.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Tensor {
    modulate_scaled(x, shift, &(scale + 1.0))
}

/// `x * one_plus_scale + shift` in one kernel (`addcmul`: the same product, then the same sum).
pub fn modulate_scaled(x: &Tensor, shift: &Tensor, one_plus_scale: &Tensor) -> Tensor {
    shift.addcmul(x, one_plus_scale)
}

/// `residual + gate * branch` in one kernel, the reference's `bias_dropout_add_scale` after its
/// dropout. In float32 the same product and sum as two ops; with a bf16 branch the product stays
/// in float32 (as a fusing compiler keeps it) instead of being rounded to bf16 first.
pub fn gated_residual(residual: &Tensor, gate: &Tensor, branch: &Tensor) -> Tensor {
    residual.addcmul(gate, branch)
}

/// Sinusoidal features of the noise level followed by an MLP (`TimestepEmbedder`).
pub struct TimestepEmbedder {
    mlp0: Linear,
    mlp2: Linear,
    freq_dim: i64,
    /// `[1, freq_dim / 2]`, computed once (not a parameter, not in the state dict).
    freqs: Tensor,
}

impl TimestepEmbedder {
    pub fn new(p: nn::Path, cond_dim: i64, freq_dim: i64) -> TimestepEmbedder {
        let mlp = &p / "mlp";
        TimestepEmbedder {
            mlp0: Linear::new(&mlp / "0", freq_dim, cond_dim, true),
            mlp2: Linear::new(&mlp / "2", cond_dim, cond_dim, true),
            freq_dim,
            freqs: timestep_freqs(freq_dim, 10_000.0, p.device()).unsqueeze(0),
        }
    }

    /// `sigma [B]` → `[B, cond_dim]`, float32 (the reference runs it outside the bf16 region).
    pub fn forward(&self, sigma: &Tensor) -> Tensor {
        let emb = embed_with(sigma, &self.freqs, self.freq_dim);
        let h = self.mlp0.forward(&emb, Kind::Float).silu();
        self.mlp2.forward(&h, Kind::Float)
    }
}

/// `[cos(t f_k), sin(t f_k)]` with `f_k = exp(-ln(max_period) k / half)`.
pub fn timestep_embedding(t: &Tensor, dim: i64, max_period: f64) -> Tensor {
    embed_with(
        t,
        &timestep_freqs(dim, max_period, t.device()).unsqueeze(0),
        dim,
    )
}

/// The `f_k` of [`timestep_embedding`], `[dim / 2]`.
fn timestep_freqs(dim: i64, max_period: f64, device: tch::Device) -> Tensor {
    let half = dim / 2;
    let k = Tensor::arange(half, (Kind::Float, device));
    (k * (-max_period.ln()) / half as f64).exp()
}

fn embed_with(t: &Tensor, freqs: &Tensor, dim: i64) -> Tensor {
    let args = in_kind(t, Kind::Float).unsqueeze(1) * freqs; // [B, half]
    let emb = Tensor::cat(&[args.cos(), args.sin()], -1);
    if dim % 2 == 1 {
        Tensor::cat(&[&emb, &emb.zeros_like().narrow(1, 0, 1)], -1)
    } else {
        emb
    }
}

/// Rotary position tables for positions `start..start + n`, laid out for q and k of shape
/// `[B, n, ..., dh]` ("rotate half": with x1, x2 the halves of dh,
/// `[x1 cos - x2 sin, x1 sin + x2 cos]`).
pub struct Rotary {
    /// `[n, 1, 1, dh]`: `[cos, cos]`.
    cos: Tensor,
    /// `[n, 1, 1, dh]`: `[-sin, sin]`, so the swapped halves need one multiply-add.
    sin: Tensor,
}

impl Rotary {
    /// Angles in float32 (`pos * inv_freq`), the tables then cast to `kind` as the reference
    /// casts them to x's dtype; a cached step at `start > 0` sees the angles a full pass sees.
    pub fn at(inv_freq: &Tensor, start: i64, n: i64, kind: Kind) -> Rotary {
        let pos = Tensor::arange_start(start, start + n, (Kind::Float, inv_freq.device()));
        let angles = pos.unsqueeze(1) * inv_freq.unsqueeze(0); // [n, dh/2]
        let (cos, sin) = (angles.cos(), angles.sin());
        let dh = 2 * inv_freq.size()[0];
        let table = |t: Tensor| in_kind(&t, kind).view([n, 1, 1, dh]);
        Rotary {
            cos: table(Tensor::cat(&[&cos, &cos], 1)),
            sin: table(Tensor::cat(&[-&sin, sin], 1)),
        }
    }

    /// The `[cos, cos]` and `[-sin, sin]` tables, `[n, 1, 1, dh]`.
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// `x [B, n, k, nh, dh]` rotated: `x * [cos, cos] + [x2, x1] * [-sin, sin]`, which rounds as
    /// `x1 cos - x2 sin` and `x1 sin + x2 cos` do (negation and the order of a sum are exact).
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let dh = size[size.len() - 1];
        let mut halves = size[..size.len() - 1].to_vec();
        halves.extend([2, dh / 2]);
        let swapped = x.view(halves.as_slice()).flip([-2]).view(size.as_slice());
        (x * &self.cos).addcmul(&swapped, &self.sin)
    }
}

/// Softmax attention at the default `1/sqrt(dh)` scale, no attention dropout (the reference
/// drops only branch outputs); `q [B, nh, n, dh]`, `k, v [B, nh, t, dh]` → `[B, nh, n, dh]`.
/// `mask [n, t]` true where a query may attend.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<Tensor>, causal: bool) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, causal, None, false)
}

/// The rotary frequencies `1 / base^(2j / head_dim)`: a buffer in the reference's state dict
/// (`rotary_emb.inv_freq`), so it is a variable here too, kept out of the trainable set.
pub fn rotary_inv_freq(p: nn::Path, head_dim: i64, base: f64) -> Tensor {
    let inv_freq = p.zeros_no_train("inv_freq", &[head_dim / 2]);
    tch::no_grad(|| {
        let j = Tensor::arange_start_step(0, head_dim, 2, (Kind::Float, inv_freq.device()));
        let v = (j / head_dim as f64 * base.ln()).exp().reciprocal();
        inv_freq.shallow_clone().copy_(&v);
    });
    inv_freq
}
