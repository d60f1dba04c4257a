//! GPT-2 (Radford et al., 2019) as Hugging Face's `GPT2LMHeadModel` computes it, for the
//! reference's generative perplexity (`diffusion.py: compute_generative_perplexity`). Variables
//! carry the HF state-dict names (`transformer.h.{i}.attn.c_attn.weight`, ...), so a
//! `save_pretrained` folder loads as it is; Conv1D weights are stored (in, out), the LM head is
//! tied to `transformer.wte.weight`.

use crate::backbone::load::load_strict;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor, nn};

/// The `config.json` fields the forward pass depends on.
#[derive(Clone, Debug, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: i64,
    pub n_embd: i64,
    pub n_layer: i64,
    pub n_head: i64,
    pub n_positions: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
}

impl Gpt2Config {
    /// A GPT-2 `config.json`: a `model_type` other than `gpt2` is refused (the evaluator is
    /// GPT-2 only), fields beyond the forward pass's are ignored.
    pub fn read(path: &Path) -> Result<Gpt2Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if let Some(t) = raw.get("model_type").and_then(|v| v.as_str())
            && t != "gpt2"
        {
            bail!(
                "{}: model_type is \"{t}\", but the generative-perplexity evaluator must be a GPT-2 (model_type \"gpt2\")",
                path.display()
            );
        }
        serde_json::from_value(raw)
            .with_context(|| format!("{}: not a GPT-2 config", path.display()))
    }
}

fn default_eps() -> f64 {
    1e-5
}

/// HF `Conv1D`: `x @ weight + bias` with `weight` (in, out).
struct Conv1d {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1d {
    fn new(p: nn::Path, d_in: i64, d_out: i64) -> Conv1d {
        Conv1d {
            weight: p.randn("weight", &[d_in, d_out], 0.0, 0.02),
            bias: p.zeros("bias", &[d_out]),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.weight) + &self.bias
    }
}

struct Ln {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Ln {
    fn new(p: nn::Path, dim: i64, eps: f64) -> Ln {
        Ln {
            weight: p.ones("weight", &[dim]),
            bias: p.zeros("bias", &[dim]),
            eps,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let d = x.size()[x.dim() - 1];
        x.layer_norm([d], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

struct Block {
    ln_1: Ln,
    c_attn: Conv1d,
    attn_proj: Conv1d,
    ln_2: Ln,
    c_fc: Conv1d,
    mlp_proj: Conv1d,
    n_head: i64,
}

impl Block {
    fn new(p: nn::Path, cfg: &Gpt2Config) -> Block {
        let (c, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        let attn = &p / "attn";
        let mlp = &p / "mlp";
        Block {
            ln_1: Ln::new(&p / "ln_1", c, eps),
            c_attn: Conv1d::new(&attn / "c_attn", c, 3 * c),
            attn_proj: Conv1d::new(&attn / "c_proj", c, c),
            ln_2: Ln::new(&p / "ln_2", c, eps),
            c_fc: Conv1d::new(&mlp / "c_fc", c, 4 * c),
            mlp_proj: Conv1d::new(&mlp / "c_proj", 4 * c, c),
            n_head: cfg.n_head,
        }
    }

    /// `x [B, T, C]`; `mask [B, 1, T, T]` bool, true where a query may attend to a key.
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        let (b, t, c) = x.size3().expect("[B, T, C]");
        let hd = c / self.n_head;
        let qkv = self.c_attn.forward(&self.ln_1.forward(x)); // [B, T, 3C]
        let split = qkv.split(c, 2);
        let heads = |z: &Tensor| z.view([b, t, self.n_head, hd]).transpose(1, 2); // [B, nh, T, hd]
        let (q, k, v) = (heads(&split[0]), heads(&split[1]), heads(&split[2]));
        let y =
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, None, false);
        let y = y.transpose(1, 2).reshape([b, t, c]);
        let x = x + self.attn_proj.forward(&y);
        let h = self.c_fc.forward(&self.ln_2.forward(&x)).gelu("tanh");
        &x + self.mlp_proj.forward(&h)
    }
}

/// `GPT2LMHeadModel`; owns its variables.
pub struct Gpt2 {
    vs: nn::VarStore,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: Ln,
    pub config: Gpt2Config,
}

impl Gpt2 {
    /// Randomly initialised, on `device`.
    pub fn new(cfg: &Gpt2Config, device: Device) -> Gpt2 {
        let vs = nn::VarStore::new(device);
        let p = vs.root() / "transformer";
        let wte = (&p / "wte").randn("weight", &[cfg.vocab_size, cfg.n_embd], 0.0, 0.02);
        let wpe = (&p / "wpe").randn("weight", &[cfg.n_positions, cfg.n_embd], 0.0, 0.02);
        let h = &p / "h";
        let blocks = (0..cfg.n_layer).map(|i| Block::new(&h / i, cfg)).collect();
        let ln_f = Ln::new(&p / "ln_f", cfg.n_embd, cfg.layer_norm_epsilon);
        Gpt2 {
            vs,
            wte,
            wpe,
            blocks,
            ln_f,
            config: cfg.clone(),
        }
    }

    /// Loads a `save_pretrained` folder (`config.json` + `model.safetensors`) strictly. Tolerated
    /// extras: a `lm_head.weight` (tied, equal to `wte`) and the `attn.bias` / `attn.masked_bias`
    /// causal-mask buffers older transformers versions saved.
    pub fn from_dir(dir: &Path, device: Device) -> Result<Gpt2> {
        let cfg = Gpt2Config::read(&dir.join("config.json"))?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            bail!(
                "{} is missing (only safetensors GPT-2 folders are supported)",
                weights.display()
            );
        }
        let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(&weights)
            .with_context(|| format!("reading {}", weights.display()))?
            .into_iter()
            // Some exports drop the `transformer.` prefix (GPT2Model rather than the LM head).
            .map(|(k, t)| {
                let k = if k.starts_with("transformer.") || k.starts_with("lm_head.") {
                    k
                } else {
                    format!("transformer.{k}")
                };
                (k, t)
            })
            .filter(|(k, _)| {
                !(k.ends_with(".attn.bias")
                    || k.ends_with(".attn.masked_bias")
                    || k == "lm_head.weight")
            })
            .collect();
        let model = Gpt2::new(&cfg, device);
        load_strict(&model.vs, &tensors, "transformer.")
            .with_context(|| format!("loading {}", weights.display()))?;
        Ok(model)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Logits `[B, T, V]` for `ids [B, T]`; `attention_mask [B, T]` (1 = token, 0 = padding) hides
    /// padded keys, as HF does; positions are 0..T whatever the mask (right padding).
    pub fn forward(&self, ids: &Tensor, attention_mask: Option<&Tensor>) -> Tensor {
        let (b, t) = ids.size2().expect("[B, T]");
        let dev = ids.device();
        let pos = Tensor::arange(t, (Kind::Int64, dev));
        let mut x = Tensor::embedding(&self.wte, ids, -1, false, false)
            + Tensor::embedding(&self.wpe, &pos, -1, false, false).unsqueeze(0); // [B, T, C]
        let causal = Tensor::ones([t, t], (Kind::Bool, dev)).tril(0); // [T, T]
        let mut mask = causal.view([1, 1, t, t]).expand([b, 1, t, t], false);
        if let Some(m) = attention_mask {
            let keys = m.to_kind(Kind::Bool).view([b, 1, 1, t]);
            mask = mask.logical_and(&keys);
            // A query whose every key is hidden (only possible for a padded first token) would
            // give NaN; HF gives such rows finite garbage. Let it attend to itself instead.
            let eye = Tensor::eye(t, (Kind::Bool, dev)).view([1, 1, t, t]);
            mask = mask.logical_or(&eye);
        }
        for block in &self.blocks {
            x = block.forward(&x, &mask);
        }
        self.ln_f.forward(&x).matmul(&self.wte.tr()) // tied head
    }
}

/// Per-token NLL and weight of the reference's gen-PPL for one batch: `nlls[:, j] =
/// CE(logits[:, j], ids[:, j+1])`; the weight keeps every non-EOS target and the EOS targets up
/// to and including the first EOS of the row (`(cumsum(ids == eos) == 1) | (ids != eos)`,
/// shifted by one). Returns `(nlls [B, T-1], weights [B, T-1])`, float32.
pub fn gen_ppl_terms(logits: &Tensor, ids: &Tensor, eos: i64) -> (Tensor, Tensor) {
    let t = ids.size()[1];
    let v = logits.size()[2];
    let pred = logits.narrow(1, 0, t - 1).to_kind(Kind::Float); // [B, T-1, V]
    let target = ids.narrow(1, 1, t - 1); // [B, T-1]
    let nlls = pred
        .reshape([-1, v])
        .cross_entropy_loss::<Tensor>(&target.reshape([-1]), None, tch::Reduction::None, -100, 0.0)
        .view_as(&target);
    let is_eos = ids.eq(eos);
    let first_eos = is_eos.cumsum(1, Kind::Int64).eq(1);
    let w = first_eos
        .logical_or(&is_eos.logical_not())
        .narrow(1, 1, t - 1)
        .to_kind(Kind::Float);
    (nlls, w)
}

/// `exp(sum(nll * w) / sum(w))` accumulated over batches in float64, as the reference's metric
/// accumulates across `compute_generative_perplexity` calls.
#[derive(Clone, Debug, Default)]
pub struct GenPpl {
    pub weighted_nll: f64,
    pub weight: f64,
}

impl GenPpl {
    pub fn update(&mut self, nlls: &Tensor, weights: &Tensor) {
        let nlls = nlls.to_kind(Kind::Double);
        let w = weights.to_kind(Kind::Double);
        self.weighted_nll += f64::try_from((nlls * &w).sum(Kind::Double)).unwrap_or(f64::NAN);
        self.weight += f64::try_from(w.sum(Kind::Double)).unwrap_or(f64::NAN);
    }

    /// Runs `model` on `ids` (no padding) and adds the batch.
    pub fn update_with(&mut self, model: &Gpt2, ids: &Tensor, eos: i64) {
        let logits = tch::no_grad(|| model.forward(ids, None));
        let (nlls, w) = gen_ppl_terms(&logits, ids, eos);
        self.update(&nlls, &w);
    }

    pub fn value(&self) -> f64 {
        (self.weighted_nll / self.weight).exp()
    }
}
