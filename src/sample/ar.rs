//! Ancestral sampling from the autoregressive baseline (reference: `Diffusion._ar_sampler`):
//! every row starts with BOS, and token i+1 is `argmax(log p(. | x_{<=i}) + gumbel[:, i])`, the
//! Gumbel-max trick on the AR log-probabilities. No stopping at EOS.
//!
//! Two samplers share one noise source and give the same tokens: [`ArSampler::Recompute`], the
//! reference's loop (a full forward pass over the growing prefix for each token, O(L^2) positions
//! in all), and [`ArSampler::Cached`] (the default), which feeds one token at a time against the
//! backbone's key/value cache.

use crate::backbone::Ar;
use crate::diffusion::ar::log_probs;
use tch::{Device, Kind, Tensor};

/// Where the Gumbel noise of each step comes from: `gumbel[:, i]`, shape `[B, V]`.
pub trait GumbelNoise {
    fn step(&mut self, i: i64, batch: i64, vocab: i64, device: Device) -> Tensor;
}

/// `-log(-log(v))` with `v = low + u (high - low)`, `low` / `high` the smallest normal number
/// and `1 - eps` of u's dtype: what `torch.distributions.Gumbel(0, 1)` does to its uniforms.
pub fn gumbel_from_uniform(u: &Tensor) -> Tensor {
    let (low, high) = match u.kind() {
        Kind::Double => (f64::MIN_POSITIVE, 1.0 - f64::EPSILON),
        _ => (f32::MIN_POSITIVE as f64, 1.0 - f32::EPSILON as f64),
    };
    (u * (high - low) + low).log().neg().log().neg()
}

/// Fresh noise from libtorch's generator, drawn one step at a time (`[B, V]` each) rather than
/// the reference's single up-front `[B, L-1, V]` tensor, which at GPT-2 vocabulary and L = 1024
/// is gigabytes. `Kind::Double` is our default, as in `categorical::TorchUniforms`: float32
/// uniforms cap the Gumbel tail near 17; `Kind::Float` matches the reference's precision.
pub struct TorchGumbel {
    pub kind: Kind,
}

impl GumbelNoise for TorchGumbel {
    fn step(&mut self, _i: i64, batch: i64, vocab: i64, device: Device) -> Tensor {
        gumbel_from_uniform(&Tensor::rand([batch, vocab], (self.kind, device)))
    }
}

/// Replays a stored noise tensor `[B, L-1, V]` (parity tests), or one drawn up front the way the
/// reference draws it.
pub struct ReplayGumbel {
    pub noise: Tensor,
}

impl ReplayGumbel {
    /// The reference's draw: one `rand(B, L-1, V)` call, then the Gumbel transform.
    pub fn upfront(batch: i64, length: i64, vocab: i64, kind: Kind, device: Device) -> Self {
        let u = Tensor::rand([batch, length - 1, vocab], (kind, device));
        ReplayGumbel {
            noise: gumbel_from_uniform(&u),
        }
    }
}

impl GumbelNoise for ReplayGumbel {
    fn step(&mut self, i: i64, batch: i64, vocab: i64, device: Device) -> Tensor {
        let g = self.noise.select(1, i);
        assert_eq!(
            g.size(),
            [batch, vocab],
            "replayed Gumbel noise has the wrong shape"
        );
        g.to_device(device)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ArSampler {
    /// One token per step against the key/value cache.
    #[default]
    Cached,
    /// The reference's loop: a full forward pass over the prefix for every token.
    Recompute,
}

#[derive(Clone, Debug)]
pub struct ArSampleSpec {
    pub batch: i64,
    /// Total length including the BOS column.
    pub length: i64,
    pub bos: i64,
    pub mask_index: i64,
}

pub struct ArSampleOut {
    /// `[B, L]`, column 0 is BOS.
    pub tokens: Tensor,
    /// `[B, L-1, V]`: the next-token log-probabilities of every step, when asked for.
    pub next_logprobs: Option<Tensor>,
    /// Backbone calls made (L - 1 for either sampler; only their cost differs).
    pub forward_calls: usize,
}

/// Samples `spec.batch` sequences of `spec.length` tokens.
pub fn sample_ar(
    ar: &Ar,
    spec: &ArSampleSpec,
    sampler: ArSampler,
    device: Device,
    gumbel: &mut dyn GumbelNoise,
    keep_logprobs: bool,
) -> ArSampleOut {
    tch::no_grad(|| {
        let x = start(spec, device);
        let mut cache = (sampler == ArSampler::Cached).then(|| ar.cache(spec.length));
        let mut kept = Vec::new();
        for i in 0..spec.length - 1 {
            let last_logits = match &mut cache {
                // Step i feeds only token i.
                Some(cache) => ar.step(&x.narrow(1, i, 1).copy(), cache).select(1, 0),
                // The reference's: step i runs the network on the whole prefix `x[:, :i+1]`.
                None => ar.logits(&x.narrow(1, 0, i + 1), false).select(1, i),
            }; // [B, V]
            let lp = choose(&x, i, &last_logits, spec, gumbel);
            if keep_logprobs {
                kept.push(lp);
            }
        }
        ArSampleOut {
            tokens: x,
            next_logprobs: (keep_logprobs && !kept.is_empty()).then(|| Tensor::stack(&kept, 1)),
            forward_calls: (spec.length - 1) as usize,
        }
    })
}

/// `x [B, L]` zeros with BOS in column 0.
fn start(spec: &ArSampleSpec, device: Device) -> Tensor {
    let x = Tensor::zeros([spec.batch, spec.length], (Kind::Int64, device));
    let _ = x.narrow(1, 0, 1).fill_(spec.bos);
    x
}

/// The Gumbel-max draw of step i from the last position's raw logits `[B, V]`; writes it into
/// `x[:, i + 1]` and returns the log-probabilities `[B, V]`.
fn choose(
    x: &Tensor,
    i: i64,
    last_logits: &Tensor,
    spec: &ArSampleSpec,
    gumbel: &mut dyn GumbelNoise,
) -> Tensor {
    let lp = log_probs(last_logits, spec.mask_index); // [B, V] float32
    let g = gumbel.step(i, spec.batch, lp.size()[1], x.device());
    // In the noise's precision: float64 noise gives a float64 comparison.
    let next = (lp.to_kind(g.kind()) + g).argmax(-1, true); // [B, 1]
    x.narrow(1, i + 1, 1).copy_(&next);
    lp
}
