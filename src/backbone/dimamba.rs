//! DiMamba: a bidirectional Mamba (Gu & Dao, 2023) with adaLN time conditioning, the MDLM paper's
//! state-space backbone (Sahoo et al., 2024, §4 / Table 8). Mirrors the reference's
//! `models/dimamba.py` (`DiMamba` → `BiMambaForMaskedLM` → `BiMamba` → `BiMambaMixerModel` →
//! `Block` → `BiMambaWrapper` → `Mamba`, adapted there from Caduceus and mamba-ssm 1.1.4);
//! parameter paths equal its state-dict names under the caller's prefix (`backbone`).
//!
//! The reference only runs on NVIDIA GPUs (mamba-ssm's selective-scan and causal-conv1d CUDA
//! kernels, Triton RMSNorm). Here every piece is plain tch ops, so the same code runs on CPU and
//! CUDA; the scan is [`super::scan`].
//!
//! The residual stream, as the reference computes it: `BiMambaMixerModel.forward` unpacks each
//! layer's `(hidden_states, residual)` into a misspelled `residuals`, so the `residual` it passes
//! on stays `None`. Each layer therefore normalises its own input and adds that input back
//! through the adaLN gate, `h ← h + gate * mixer(modulate(RMSNorm(h)))`, and the final norm sees
//! the last layer's output alone. We reproduce this. Carrying the residual as mamba-ssm's fused
//! add-norm intends would add every layer's input twice (the gated output already contains it),
//! so there is no better behaviour to offer behind a flag: the typo is what makes the adaLN
//! variant a plain pre-norm residual network.

use super::layers::{Linear, TimestepEmbedder, modulate, torch_default_uniform};
use super::scan::{ScanMode, selective_scan};
use super::{Backbone, Precision};
use tch::{Kind, Tensor, nn};

/// How the forward and reverse mixers' outputs are combined (`bidirectional_strategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BiStrategy {
    Add,
    EwMultiply,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DimambaConfig {
    /// Including the mask token when the tokenizer has none.
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub cond_dim: i64,
    pub n_blocks: i64,
    /// On the mixer output, before the gate. The reference's `Block` hard-codes 0.1 whatever
    /// `model.dropout` says; `tiny-dimamba` sets 0.1, so the two agree unless it is overridden.
    pub dropout: f64,
    pub frequency_embedding_size: i64,
    pub d_state: i64,
    pub d_conv: i64,
    pub expand: i64,
    /// Rank of the dt projection; mamba-ssm's `"auto"` is `ceil(hidden_size / 16)`.
    pub dt_rank: i64,
    pub norm_eps: f64,
    pub strategy: BiStrategy,
    /// The reverse mixer shares `in_proj` / `out_proj` with the forward one.
    pub weight_tie: bool,
    /// `lm_head` shares the word embeddings (`tie_word_embeddings`).
    pub tie_word_embeddings: bool,
    pub scan: ScanMode,
}

impl DimambaConfig {
    /// The reference's settings (`DiMamba.__init__` → `BiMambaConfig` and mamba-ssm defaults) for
    /// a given size.
    pub fn reference(vocab_size: i64, hidden_size: i64, cond_dim: i64, n_blocks: i64) -> Self {
        DimambaConfig {
            vocab_size,
            hidden_size,
            cond_dim,
            n_blocks,
            dropout: 0.1,
            frequency_embedding_size: 256,
            d_state: 16,
            d_conv: 4,
            expand: 2,
            dt_rank: (hidden_size + 15) / 16,
            norm_eps: 1e-5,
            strategy: BiStrategy::Add,
            weight_tie: true,
            tie_word_embeddings: false,
            scan: ScanMode::default(),
        }
    }

    pub fn d_inner(&self) -> i64 {
        self.expand * self.hidden_size
    }

    /// Full names (`backbone.` prefix) of the second copies of tied weights, each with the name
    /// it mirrors. Both appear in a reference state dict, with equal values.
    pub fn tied_names(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.weight_tie {
            for i in 0..self.n_blocks {
                let mixer = format!("{MIXER_MODEL}.layers.{i}.mixer");
                for w in ["in_proj.weight", "out_proj.weight"] {
                    out.push((
                        format!("{mixer}.mamba_rev.{w}"),
                        format!("{mixer}.mamba_fwd.{w}"),
                    ));
                }
            }
        }
        if self.tie_word_embeddings {
            out.push((
                "backbone.model.lm_head.weight".into(),
                format!("{MIXER_MODEL}.embeddings.word_embeddings.weight"),
            ));
        }
        out
    }

    /// The reference's trainable parameters in `backbone.parameters()` order, which is how its
    /// Lightning checkpoints list EMA shadows: registration order, depth first, a module's own
    /// parameters before its children's (so `A_log`, `D` lead each `Mamba`), each shared tensor
    /// once, at its first occurrence. `sigma_map` comes first because `DiMamba.__init__` builds
    /// it before the model. No fixture pins this order; the loader checks every shape.
    pub fn reference_parameter_order(&self) -> Vec<String> {
        let mut names: Vec<String> = ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
            .iter()
            .map(|s| format!("backbone.sigma_map.{s}"))
            .collect();
        names.push(format!("{MIXER_MODEL}.embeddings.word_embeddings.weight"));
        for i in 0..self.n_blocks {
            let layer = format!("{MIXER_MODEL}.layers.{i}");
            for dir in ["mamba_fwd", "mamba_rev"] {
                let shared = dir == "mamba_rev" && self.weight_tie;
                let mut leaves = vec!["A_log", "D"];
                if !shared {
                    leaves.push("in_proj.weight");
                }
                leaves.extend([
                    "conv1d.weight",
                    "conv1d.bias",
                    "x_proj.weight",
                    "dt_proj.weight",
                    "dt_proj.bias",
                ]);
                if !shared {
                    leaves.push("out_proj.weight");
                }
                names.extend(leaves.iter().map(|l| format!("{layer}.mixer.{dir}.{l}")));
            }
            for l in [
                "norm.weight",
                "adaLN_modulation.weight",
                "adaLN_modulation.bias",
            ] {
                names.push(format!("{layer}.{l}"));
            }
        }
        for l in [
            "adaLN_modulation_final.weight",
            "adaLN_modulation_final.bias",
            "norm_f.weight",
        ] {
            names.push(format!("{MIXER_MODEL}.{l}"));
        }
        if !self.tie_word_embeddings {
            names.push("backbone.model.lm_head.weight".into());
        }
        names
    }
}

/// Where `BiMambaMixerModel` sits in the reference's state dict.
const MIXER_MODEL: &str = "backbone.model.bimamba.backbone";

/// mamba-ssm's RMSNorm (weight only): `x / sqrt(mean(x^2) + eps) * weight`, in float32.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(p: nn::Path, dim: i64, eps: f64) -> RmsNorm {
        RmsNorm {
            weight: p.ones("weight", &[dim]),
            eps,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = x.to_kind(Kind::Float);
        let ms = x.square().mean_dim(-1, true, Kind::Float);
        x * (ms + self.eps).rsqrt() * &self.weight
    }
}

/// One direction's selective state-space mixer (mamba-ssm's `Mamba`, no inference cache).
struct Mamba {
    in_proj: Linear,
    conv_weight: Tensor,
    conv_bias: Tensor,
    x_proj: Linear,
    dt_proj: Linear,
    a_log: Tensor,
    d: Tensor,
    out_proj: Linear,
    d_inner: i64,
    d_state: i64,
    dt_rank: i64,
    d_conv: i64,
}

/// A second name for an existing parameter: the reference's state dict lists tied weights under
/// both names, so both must be variables here, but the optimizer must see the tensor once. Not
/// marked trainable (tch keeps it out of `trainable_variables`), and `Model::params` drops
/// names whose storage it has already listed.
fn alias(p: &nn::Path, name: &str, of: &Tensor) -> Tensor {
    p.add(name, of.shallow_clone(), false)
}

impl Mamba {
    /// `tied`: the forward mixer's `in_proj` / `out_proj` weights, for the reverse mixer.
    fn new(p: nn::Path, cfg: &DimambaConfig, tied: Option<(&Tensor, &Tensor)>) -> Mamba {
        let (h, di, n, r, k) = (
            cfg.hidden_size,
            cfg.d_inner(),
            cfg.d_state,
            cfg.dt_rank,
            cfg.d_conv,
        );
        let in_proj = match tied {
            Some((w, _)) => Linear {
                weight: alias(&(&p / "in_proj"), "weight", w),
                bias: None,
            },
            None => Linear::new(&p / "in_proj", h, 2 * di, false),
        };
        // nn.Conv1d's default init; fan_in = 1 channel per group x kernel width.
        let uniform = torch_default_uniform(k);
        let conv = &p / "conv1d";
        let conv_weight = conv.var("weight", &[di, 1, k], uniform);
        let conv_bias = conv.var("bias", &[di], uniform);
        let x_proj = Linear::new(&p / "x_proj", di, r + 2 * n, false);

        // dt_proj as mamba-ssm initialises it: weight U(±1/sqrt(rank)); bias the inverse softplus
        // of a dt log-uniform in [1e-3, 1e-1] (floored at 1e-4), so initial steps span that range.
        let dtp = &p / "dt_proj";
        let std = 1.0 / (r as f64).sqrt();
        let dt_weight = dtp.var("weight", &[di, r], nn::Init::Uniform { lo: -std, up: std });
        let dt_bias = dtp.zeros("bias", &[di]);
        tch::no_grad(|| {
            let (lo, hi) = (1e-3f64.ln(), 1e-1f64.ln());
            let dt = (Tensor::rand([di], (Kind::Float, dt_bias.device())) * (hi - lo) + lo)
                .exp()
                .clamp_min(1e-4);
            let inv = &dt + (-(-&dt).expm1()).log();
            dt_bias.shallow_clone().copy_(&inv);
        });
        let dt_proj = Linear {
            weight: dt_weight,
            bias: Some(dt_bias),
        };

        // S4D-real: A = -[1, 2, ..., N] for every channel.
        let a_log = p.zeros("A_log", &[di, n]);
        tch::no_grad(|| {
            let a = Tensor::arange_start(1, n + 1, (Kind::Float, a_log.device()));
            a_log
                .shallow_clone()
                .copy_(&a.log().unsqueeze(0).expand([di, n], false));
        });
        let d = p.ones("D", &[di]);

        let out_proj = match tied {
            Some((_, w)) => Linear {
                weight: alias(&(&p / "out_proj"), "weight", w),
                bias: None,
            },
            None => {
                // Kaiming-uniform, then divided by sqrt(n_layer) (`rescale_prenorm_residual`).
                let bound = 1.0 / (di as f64).sqrt() / (cfg.n_blocks as f64).sqrt();
                let weight = (&p / "out_proj").var(
                    "weight",
                    &[h, di],
                    nn::Init::Uniform {
                        lo: -bound,
                        up: bound,
                    },
                );
                Linear { weight, bias: None }
            }
        };
        Mamba {
            in_proj,
            conv_weight,
            conv_bias,
            x_proj,
            dt_proj,
            a_log,
            d,
            out_proj,
            d_inner: di,
            d_state: n,
            dt_rank: r,
            d_conv: k,
        }
    }

    /// The depthwise causal convolution of `x [B, L, Di]` over tokens, `out_t = bias + sum_k
    /// w[k] x_{t-K+1+k}` (zeros before the first token), as `conv1d` with `K - 1` padding keeps
    /// its first L outputs; summed in float32 and returned in `kind`, as the reference's kernel
    /// does. K shifted multiply-adds: libtorch's CPU depthwise `conv1d` and its backward cost
    /// more than the selective scan of the same layer.
    fn causal_conv(&self, x: &Tensor, kind: Kind) -> Tensor {
        let (k, len) = (self.d_conv, x.size()[1]);
        // Weights rounded to `kind` first, as the reference's autocast hands them to its kernel.
        let w = self
            .conv_weight
            .to_kind(kind)
            .to_kind(Kind::Float)
            .squeeze_dim(1); // [Di, K]
        let bias = self.conv_bias.to_kind(kind).to_kind(Kind::Float);
        let padded = x.to_kind(Kind::Float).constant_pad_nd([0, 0, k - 1, 0]); // [B, L + K - 1, Di]
        let mut out = padded.narrow(1, 0, len) * w.select(1, 0) + bias;
        for j in 1..k {
            out = out.addcmul(&padded.narrow(1, j, len), &w.select(1, j));
        }
        out.to_kind(kind)
    }

    /// `a [B, L, H]` → `[B, L, H]` in `kind`. Projections run in `kind` (the reference's bf16
    /// autocast), the convolution on `kind` values with a float32 sum; the scan, the skip and the
    /// gate in float32, as its kernels do.
    fn forward(&self, a: &Tensor, kind: Kind, scan: ScanMode) -> Tensor {
        let (di, n, r) = (self.d_inner, self.d_state, self.dt_rank);
        let xz = self.in_proj.forward(a, kind); // [B, L, 2 Di]: x then z
        let x = xz.narrow(2, 0, di);
        let z = xz.narrow(2, di, di);

        let x = self.causal_conv(&x, kind).silu(); // [B, L, Di]

        let x_dbl = self.x_proj.forward(&x, kind); // [B, L, R + 2N]: dt, B, C
        let dt = x_dbl.narrow(2, 0, r);
        let b = x_dbl.narrow(2, r, n).to_kind(Kind::Float);
        let c = x_dbl.narrow(2, r + n, n).to_kind(Kind::Float);
        // The dt projection's bias is added in float32 inside the scan (`delta_bias`).
        let delta = (dt.linear(&self.dt_proj.weight.to_kind(kind), None::<Tensor>))
            .to_kind(Kind::Float)
            + self.dt_proj.bias.as_ref().expect("dt_proj has a bias");
        let delta = delta.softplus(); // [B, L, Di]
        let a_mat = -self.a_log.exp(); // [Di, N]
        let u = x.to_kind(Kind::Float);
        let y = selective_scan(&u, &delta, &a_mat, &b, &c, scan); // [B, L, Di]
        let y = (y + &u * &self.d) * z.to_kind(Kind::Float).silu();
        self.out_proj.forward(&y, kind)
    }
}

/// One `layers.i`: adaLN-modulated RMSNorm, then the bidirectional mixer (`BiMambaWrapper`),
/// gated and added to the layer's input.
struct Layer {
    norm: RmsNorm,
    mamba_fwd: Mamba,
    mamba_rev: Mamba,
    ada_ln: Linear,
}

impl Layer {
    fn new(p: nn::Path, cfg: &DimambaConfig) -> Layer {
        let mixer = &p / "mixer";
        let mamba_fwd = Mamba::new(&mixer / "mamba_fwd", cfg, None);
        let tied = cfg
            .weight_tie
            .then_some((&mamba_fwd.in_proj.weight, &mamba_fwd.out_proj.weight));
        let mamba_rev = Mamba::new(&mixer / "mamba_rev", cfg, tied);
        Layer {
            norm: RmsNorm::new(&p / "norm", cfg.hidden_size, cfg.norm_eps),
            mamba_fwd,
            mamba_rev,
            ada_ln: Linear::zeros(&p / "adaLN_modulation", cfg.cond_dim, 3 * cfg.hidden_size),
        }
    }

    /// `h [B, L, H]` float32; `c [B, cond]`.
    fn forward(&self, h: &Tensor, c: &Tensor, cfg: &RunCfg, train: bool) -> Tensor {
        let m = self.ada_ln.forward(c, cfg.kind).unsqueeze(1).chunk(3, 2); // 3 x [B, 1, H]
        let (shift, scale, gate) = (&m[0], &m[1], &m[2]);
        let a = modulate(&self.norm.forward(h), shift, scale);
        let fwd = self.mamba_fwd.forward(&a, cfg.kind, cfg.scan);
        let rev = self
            .mamba_rev
            .forward(&a.flip([1]), cfg.kind, cfg.scan)
            .flip([1]);
        let out = match cfg.strategy {
            BiStrategy::Add => fwd + rev,
            BiStrategy::EwMultiply => fwd * rev,
        };
        h + gate * super::dropout::dropout(out, cfg.dropout, train)
    }
}

/// What every layer's forward needs besides its weights.
struct RunCfg {
    kind: Kind,
    scan: ScanMode,
    strategy: BiStrategy,
    dropout: f64,
}

pub struct Dimamba {
    sigma_map: TimestepEmbedder,
    word_embeddings: Tensor,
    layers: Vec<Layer>,
    ada_ln_final: Linear,
    norm_f: RmsNorm,
    lm_head: Linear,
    run: RunCfg,
}

/// Intermediate values of one forward pass, for checking against the reference's.
pub struct DimambaTrace {
    /// `silu(sigma_map(sigma))`, `[B, cond]`.
    pub c: Tensor,
    /// Each layer's output, `[B, L, H]`.
    pub layer_out: Vec<Tensor>,
    /// `[B, L, V]`, float32.
    pub logits: Tensor,
}

impl Dimamba {
    /// `p` is the backbone's own path (`root / "backbone"`).
    pub fn new(p: nn::Path, cfg: &DimambaConfig, precision: Precision) -> Dimamba {
        let h = cfg.hidden_size;
        let sigma_map =
            TimestepEmbedder::new(&p / "sigma_map", cfg.cond_dim, cfg.frequency_embedding_size);
        let model = &p / "model";
        let mixer_model = &model / "bimamba" / "backbone";
        // `_init_weights`: embeddings N(0, 0.02).
        let word_embeddings = (&mixer_model / "embeddings" / "word_embeddings").var(
            "weight",
            &[cfg.vocab_size, h],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        );
        let layers_p = &mixer_model / "layers";
        let layers = (0..cfg.n_blocks)
            .map(|i| Layer::new(&layers_p / i, cfg))
            .collect();
        let ada_ln_final =
            Linear::zeros(&mixer_model / "adaLN_modulation_final", cfg.cond_dim, 2 * h);
        let norm_f = RmsNorm::new(&mixer_model / "norm_f", h, cfg.norm_eps);
        let lm_head_p = &model / "lm_head";
        let lm_head = if cfg.tie_word_embeddings {
            Linear {
                weight: alias(&lm_head_p, "weight", &word_embeddings),
                bias: None,
            }
        } else {
            Linear::new(lm_head_p, h, cfg.vocab_size, false)
        };
        Dimamba {
            sigma_map,
            word_embeddings,
            layers,
            ada_ln_final,
            norm_f,
            lm_head,
            run: RunCfg {
                kind: precision.kind(),
                scan: cfg.scan,
                strategy: cfg.strategy,
                dropout: cfg.dropout,
            },
        }
    }

    pub fn precision(&self) -> Precision {
        match self.run.kind {
            Kind::BFloat16 => Precision::Bf16,
            _ => Precision::F32,
        }
    }

    /// How the selective scans are evaluated from now on (the weights are unchanged).
    pub fn set_scan(&mut self, scan: ScanMode) {
        self.run.scan = scan;
    }

    /// The forward pass with its intermediate values kept.
    pub fn forward_trace(&self, ids: &Tensor, sigma: &Tensor, train: bool) -> DimambaTrace {
        let mut layer_out = Vec::with_capacity(self.layers.len());
        let (c, logits) = self.run(ids, sigma, train, Some(&mut layer_out));
        DimambaTrace {
            c,
            layer_out,
            logits,
        }
    }

    fn run(
        &self,
        ids: &Tensor,
        sigma: &Tensor,
        train: bool,
        mut trace: Option<&mut Vec<Tensor>>,
    ) -> (Tensor, Tensor) {
        let kind = self.run.kind;
        let c = self.sigma_map.forward(sigma).silu(); // [B, cond]
        let mut h = Tensor::embedding(&self.word_embeddings, ids, -1, false, false); // [B, L, H]
        for layer in &self.layers {
            h = layer.forward(&h, &c, &self.run, train);
            if let Some(t) = trace.as_mut() {
                t.push(h.shallow_clone());
            }
        }
        let m = self.ada_ln_final.forward(&c, kind).unsqueeze(1).chunk(2, 2); // shift, scale
        let a = modulate(&self.norm_f.forward(&h), &m[0], &m[1]);
        let logits = self.lm_head.forward(&a, kind).to_kind(Kind::Float);
        (c, logits)
    }
}

impl Backbone for Dimamba {
    fn forward(&self, ids: &Tensor, sigma: &Tensor, train: bool) -> Tensor {
        self.run(ids, sigma, train, None).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::load::manifest;
    use tch::Device;

    fn small() -> DimambaConfig {
        DimambaConfig {
            dropout: 0.0,
            ..DimambaConfig::reference(20, 32, 16, 2)
        }
    }

    /// Non-zero values everywhere (the adaLN layers start at zero), from arange/sin: no global
    /// RNG; `A_log` lifted so every decay rate is well away from 1.
    fn fill(vs: &nn::VarStore) {
        crate::backbone::test_util::fill(vs, &[]);
        tch::no_grad(|| {
            for (name, v) in vs.variables() {
                if name.ends_with("A_log") {
                    let _ = v.shallow_clone().g_add_scalar_(0.5);
                }
            }
        });
    }

    fn inputs() -> (Tensor, Tensor) {
        let ids = (Tensor::arange(2 * 11, (Kind::Int64, Device::Cpu)) * 7)
            .remainder(20)
            .view([2, 11]);
        (ids, Tensor::from_slice(&[0.3f32, 1.7]))
    }

    #[test]
    fn tied_weights_are_one_tensor_under_both_names() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = Dimamba::new(vs.root() / "backbone", &small(), Precision::F32);
        let vars = vs.variables();
        let pre = "backbone.model.bimamba.backbone.layers.1.mixer";
        for w in ["in_proj.weight", "out_proj.weight"] {
            let f = &vars[&format!("{pre}.mamba_fwd.{w}")];
            let r = &vars[&format!("{pre}.mamba_rev.{w}")];
            assert_eq!(f.data_ptr(), r.data_ptr(), "{w} is not shared");
        }
        // Untied parts stay separate.
        let f = &vars[&format!("{pre}.mamba_fwd.conv1d.weight")];
        let r = &vars[&format!("{pre}.mamba_rev.conv1d.weight")];
        assert_ne!(f.data_ptr(), r.data_ptr());
        // The optimizer's view: every trainable tensor once.
        let trainable = vs.trainable_variables().len();
        assert_eq!(trainable + 2 * 2, manifest(&vs).len());
    }

    /// The Lightning EMA order names every trainable tensor exactly once, and the tied names are
    /// exactly the remaining variables.
    #[test]
    fn reference_order_and_tied_names_cover_the_store() {
        for (weight_tie, tie_word_embeddings) in [(true, false), (false, false), (true, true)] {
            let cfg = DimambaConfig {
                weight_tie,
                tie_word_embeddings,
                ..small()
            };
            let vs = nn::VarStore::new(Device::Cpu);
            let _m = Dimamba::new(vs.root() / "backbone", &cfg, Precision::F32);
            let vars = vs.variables();
            let order = cfg.reference_parameter_order();
            let mut ptrs: Vec<usize> = order.iter().map(|n| vars[n].data_ptr() as usize).collect();
            ptrs.sort();
            ptrs.dedup();
            assert_eq!(ptrs.len(), order.len(), "a tensor listed twice");
            assert_eq!(order.len(), vs.trainable_variables().len());
            let tied = cfg.tied_names();
            assert_eq!(order.len() + tied.len(), vars.len());
            for (alias, src) in &tied {
                assert_eq!(vars[alias].data_ptr(), vars[src].data_ptr(), "{alias}");
                assert!(!order.contains(alias));
            }
        }
    }

    #[test]
    fn reverse_mixer_sees_the_sequence_backwards() {
        // Swapping the two mixers' untied weights and flipping the input flips the output: the
        // reverse direction is the forward one applied to the reversed sequence.
        for strategy in [BiStrategy::Add, BiStrategy::EwMultiply] {
            reverse_symmetry(DimambaConfig {
                strategy,
                ..small()
            });
        }
    }

    fn reverse_symmetry(cfg: DimambaConfig) {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Dimamba::new(vs.root() / "backbone", &cfg, Precision::F32);
        fill(&vs);
        let (ids, sigma) = inputs();
        let out = tch::no_grad(|| m.forward(&ids, &sigma, false));
        let vars = vs.variables();
        tch::no_grad(|| {
            for (name, v) in &vars {
                let tied = name.ends_with("in_proj.weight") || name.ends_with("out_proj.weight");
                if name.contains("mamba_fwd") && !tied {
                    let other = &vars[&name.replace("mamba_fwd", "mamba_rev")];
                    let tmp = v.copy();
                    v.shallow_clone().copy_(other);
                    other.shallow_clone().copy_(&tmp);
                }
            }
        });
        let flipped = tch::no_grad(|| m.forward(&ids.flip([1]), &sigma, false)).flip([1]);
        let err = f64::try_from((&out - &flipped).abs().max()).unwrap();
        let scale = f64::try_from(out.abs().max()).unwrap();
        assert!(scale > 1e-2, "degenerate logits");
        assert!(err < 1e-5 * scale.max(1.0), "error {err}");
    }

    #[test]
    fn chunked_and_sequential_scans_give_the_same_model() {
        let cfg = small();
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = Dimamba::new(vs.root() / "backbone", &cfg, Precision::F32);
        fill(&vs);
        let (ids, sigma) = inputs();
        let seq = {
            m.set_scan(ScanMode::Sequential);
            tch::no_grad(|| m.forward(&ids, &sigma, false))
        };
        for chunk in [1, 4, 64] {
            m.set_scan(ScanMode::Chunked(chunk));
            let got = tch::no_grad(|| m.forward(&ids, &sigma, false));
            let err = f64::try_from((&got - &seq).abs().max()).unwrap();
            assert!(err < 1e-4, "chunk {chunk}: {err}");
        }
    }

    #[test]
    fn bf16_matches_float32_within_bf16_rounding() {
        let cfg = small();
        let vs = nn::VarStore::new(Device::Cpu);
        let a = Dimamba::new(vs.root() / "backbone", &cfg, Precision::F32);
        fill(&vs);
        let vs2 = nn::VarStore::new(Device::Cpu);
        let b = Dimamba::new(vs2.root() / "backbone", &cfg, Precision::Bf16);
        let src = vs.variables();
        tch::no_grad(|| {
            for (name, v) in vs2.variables() {
                v.shallow_clone().copy_(&src[&name]);
            }
        });
        let (ids, sigma) = inputs();
        let x = tch::no_grad(|| a.forward(&ids, &sigma, false));
        let y = tch::no_grad(|| b.forward(&ids, &sigma, false));
        assert_eq!(y.kind(), Kind::Float);
        let scale = f64::try_from(x.abs().max()).unwrap();
        let err = f64::try_from((&x - &y).abs().max()).unwrap();
        assert!(scale > 1e-2, "degenerate logits");
        assert!(err < 0.05 * scale, "bf16 error {err} vs scale {scale}");
        assert!(err > 0.0, "the bf16 path computed in float32");
    }

    /// Dropout as the reference's DiMamba `Block` places it: on the combined mixer output,
    /// elementwise, before the adaLN gate.
    #[test]
    fn dropout_acts_on_the_mixer_output() {
        let p = 0.4;
        let cfg = DimambaConfig {
            dropout: p,
            n_blocks: 1,
            ..small()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Dimamba::new(vs.root() / "backbone", &cfg, Precision::F32);
        fill(&vs);
        let (ids, sigma) = inputs();
        let h = Tensor::embedding(&m.word_embeddings, &ids, -1, false, false);
        let c = m.sigma_map.forward(&sigma).silu();
        let eval = m.layers[0].forward(&h, &c, &m.run, false);
        tch::manual_seed(7);
        let train = m.layers[0].forward(&h, &c, &m.run, true);
        crate::backbone::test_util::assert_branch_dropout(&h, &eval, &train, p, "mixer output");
    }
}
