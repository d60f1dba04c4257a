//! The autoregressive baseline's parameterization and loss (reference: `AR.forward` in
//! `models/autoregressive.py` and the `parameterization == 'ar'` branch of `Diffusion._loss`):
//! next-token cross-entropy, masked by the attention mask and averaged over tokens.

use crate::backbone::Ar;
use tch::{Kind, Tensor};

/// What the reference's `AR` writes into the mask column before normalising (not the -1e6 the
/// diffusion parameterizations use).
pub const AR_NEG_INFINITY: f64 = -1000.0;

/// Raw logits `[.., V]` → log-probabilities with the mask column overwritten by -1000 first, so
/// the mask token is (all but) never predicted. The overwrite cuts that column's gradient, as the
/// reference's in-place assignment does.
pub fn log_probs(logits: &Tensor, mask_index: i64) -> Tensor {
    let col = Tensor::from(mask_index).to_device(logits.device());
    let last = logits.dim() as i64 - 1;
    logits
        .index_fill(last, &col, AR_NEG_INFINITY)
        .log_softmax(-1, Kind::Float)
}

/// Everything one AR loss evaluation produces; the parity test compares each part.
pub struct ArLossParts {
    /// Token-mean negative log-likelihood (what is minimised).
    pub loss: Tensor,
    /// `[B, L-1]`: `loss_per_token * token_mask`.
    pub nlls: Tensor,
    /// `[B, L-1]`: `-log p(x_{i+1} | x_{<=i})` before masking.
    pub loss_per_token: Tensor,
    /// `[B, L-1]`: `attention_mask[:, 1:]`.
    pub token_mask: Tensor,
    /// `x0[:, :-1]`, what the network reads.
    pub input_tokens: Tensor,
    /// `x0[:, 1:]`, the targets.
    pub output_tokens: Tensor,
    /// `[B, L-1, V]`.
    pub logprobs: Tensor,
}

/// The AR training / validation loss of `x0 [B, L]` under `attention_mask [B, L]` (float).
pub fn loss(
    ar: &Ar,
    x0: &Tensor,
    attention_mask: &Tensor,
    mask_index: i64,
    train: bool,
) -> ArLossParts {
    let l = x0.size()[1];
    let input_tokens = x0.narrow(1, 0, l - 1);
    let output_tokens = x0.narrow(1, 1, l - 1);
    let token_mask = attention_mask.narrow(1, 1, l - 1);
    let logprobs = log_probs(&ar.logits(&input_tokens, train), mask_index); // [B, L-1, V]
    let loss_per_token = -logprobs
        .gather(2, &output_tokens.unsqueeze(-1), false)
        .squeeze_dim(-1);
    let nlls = &loss_per_token * &token_mask;
    let loss = nlls.sum(Kind::Float) / token_mask.sum(Kind::Float);
    ArLossParts {
        loss,
        nlls,
        loss_per_token,
        token_mask,
        input_tokens,
        output_tokens,
        logprobs,
    }
}
