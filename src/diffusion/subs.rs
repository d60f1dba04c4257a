//! The SUBS parameterization (MDLM §3.2): zero mass on the mask token, and unmasked positions
//! carried over unchanged (reference: `Diffusion._subs_parameterization`).

use tch::{Kind, Tensor};

/// The reference's stand-in for minus infinity.
pub const NEG_INFINITY: f64 = -1_000_000.0;

/// Raw logits `[B, L, V]` and the noisy input `xt [B, L]` → log-probabilities over x0.
pub fn subs(logits: &Tensor, xt: &Tensor, mask_index: i64) -> Tensor {
    let v = logits.size()[2];
    // Adding -1e6 to column m only; a [V] row broadcast keeps autograd simple.
    let col = Tensor::zeros([v], (Kind::Float, logits.device())).index_fill(
        0,
        &Tensor::from(mask_index).to_device(logits.device()),
        NEG_INFINITY,
    );
    let logits = logits + col;
    let logits = &logits - logits.logsumexp([-1], true);
    // Where xt is not the mask: every entry -1e6, then 0 at the input token.
    let unmasked = xt.ne(mask_index).unsqueeze(-1); // [B, L, 1]
    let idx = xt.unsqueeze(-1);
    let filled = logits.masked_fill(&unmasked, NEG_INFINITY);
    let at_x = filled.gather(2, &idx, false).masked_fill(&unmasked, 0.0);
    filled.scatter(2, &idx, &at_x)
}

/// D3PM's parameterization: optional -1e6 on the mask column, then log-softmax.
pub fn d3pm(logits: &Tensor, mask_index: i64, subs_masking: bool) -> Tensor {
    let logits = if subs_masking {
        let v = logits.size()[2];
        let col = Tensor::zeros([v], (Kind::Float, logits.device())).index_fill(
            0,
            &Tensor::from(mask_index).to_device(logits.device()),
            NEG_INFINITY,
        );
        logits + col
    } else {
        logits.shallow_clone()
    };
    &logits - logits.logsumexp([-1], true)
}

/// SEDD's score parameterization: `logits - log(e^sigma - 1) - log(V - 1)`, then 0 at the input
/// token (reference: `Diffusion._sedd_parameterization`).
pub fn sedd(logits: &Tensor, xt: &Tensor, sigma: &Tensor) -> Tensor {
    let v = logits.size()[2];
    // expm1 below 0.5 for accuracy, exp - 1 above, as the reference does.
    let esigm1 = sigma
        .expm1()
        .where_self(&sigma.lt(0.5), &(sigma.exp() - 1.0));
    let esigm1_log = esigm1.log().to_kind(logits.kind()).view([-1, 1, 1]);
    let out = logits - esigm1_log - ((v - 1) as f64).ln();
    let idx = xt.unsqueeze(-1);
    out.scatter(2, &idx, &out.gather(2, &idx, false).zeros_like())
}
