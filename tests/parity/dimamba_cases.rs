//! Parity of the DiMamba backbone (`dimamba_forward`): the key manifest both ways, then the time
//! embedding, every layer's output and the logits, with the chunked scan at two chunk sizes and
//! with the sequential oracle.

use crate::common::Case;
use anyhow::{Result, anyhow, bail};
use mdlm::backbone::load::{load_strict, manifest};
use mdlm::backbone::{BiStrategy, Dimamba, DimambaConfig, Precision, ScanMode};
use std::collections::BTreeMap;
use tch::{Device, Tensor, nn};

/// Every size and flag from the case's `config` and `mamba` sections.
pub(crate) fn config_of(case: &Case) -> Result<DimambaConfig> {
    let c = &case.json["config"];
    if c["backbone"] != "dimamba" {
        bail!("expected backbone=dimamba, the case has {}", c["backbone"]);
    }
    let temb = case.str("config.model.temb_strategy")?;
    if temb != "adaln" {
        bail!("temb_strategy={temb}: only adaln is implemented");
    }
    let i = |path: &str| case.i64(path);
    let strategy = match case.str("mamba.bidirectional_strategy")?.as_str() {
        "add" => BiStrategy::Add,
        "ew_multiply" => BiStrategy::EwMultiply,
        other => return Err(anyhow!("unknown bidirectional_strategy {other}")),
    };
    if !case.bool("mamba.rms_norm")? {
        bail!("mamba.rms_norm=false (LayerNorm) is not what the reference's DiMamba builds");
    }
    Ok(DimambaConfig {
        vocab_size: i("config.vocab_size")?,
        hidden_size: i("config.model.hidden_size")?,
        cond_dim: i("config.model.cond_dim")?,
        n_blocks: i("config.model.n_blocks")?,
        dropout: case.f64("config.model.dropout")?,
        frequency_embedding_size: i("config.model.frequency_embedding_size")?,
        d_state: i("mamba.d_state")?,
        d_conv: i("mamba.d_conv")?,
        expand: i("mamba.expand")?,
        dt_rank: i("mamba.dt_rank")?,
        norm_eps: case.f64("mamba.norm_epsilon")?,
        strategy,
        weight_tie: case.bool("mamba.bidirectional_weight_tie")?,
        tie_word_embeddings: c["model"]["tie_word_embeddings"].as_bool().unwrap_or(false),
        scan: ScanMode::default(),
    })
}

pub fn dimamba_forward(case: &Case) -> Result<()> {
    let cfg = config_of(case)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = Dimamba::new(vs.root() / "backbone", &cfg, Precision::F32);
    let weights: BTreeMap<String, Tensor> = case.backbone_weights().into_iter().collect();
    let ours = manifest(&vs);
    let theirs: Vec<(String, Vec<i64>)> =
        weights.iter().map(|(k, t)| (k.clone(), t.size())).collect();
    if ours != theirs {
        let missing: Vec<_> = theirs.iter().filter(|e| !ours.contains(e)).collect();
        let extra: Vec<_> = ours.iter().filter(|e| !theirs.contains(e)).collect();
        bail!("key manifest differs: fixture only {missing:?}; model only {extra:?}");
    }
    // The fixture's tied pairs are exactly ours, and it stores equal values under both names
    // (loading writes one tensor twice, so unequal values would be silently resolved).
    let mut tied: Vec<(String, String)> = case.json["tied_parameters"]
        .as_array()
        .ok_or_else(|| anyhow!("tied_parameters missing"))?
        .iter()
        .map(|pair| {
            let s = |i: usize| pair[i].as_str().unwrap_or_default().to_string();
            (s(1), s(0))
        })
        .collect();
    tied.sort();
    let mut ours_tied = cfg.tied_names();
    ours_tied.sort();
    if tied != ours_tied {
        bail!("tied parameters differ: fixture {tied:?}, model {ours_tied:?}");
    }
    for (alias, src) in &tied {
        if !weights[alias].equal(&weights[src]) {
            bail!("fixture: tied {alias} differs from {src}");
        }
    }
    load_strict(&vs, &weights, "backbone.")?;

    let (x, sigma) = (case.t("x")?, case.t("sigma")?);
    let len = x.size()[1];
    // The default chunk (longer than the fixture's sequence: one chunk), a chunk that does not
    // divide the length, and the token-by-token oracle.
    for scan in [
        ScanMode::default(),
        ScanMode::Chunked((len / 3).max(1) + 1),
        ScanMode::Sequential,
    ] {
        model.set_scan(scan);
        let tr = tch::no_grad(|| model.forward_trace(&x, &sigma, false));
        let label = |e: anyhow::Error| e.context(format!("scan {scan:?}"));
        case.check("debug.c", &tr.c).map_err(label)?;
        for (i, h) in tr.layer_out.iter().enumerate() {
            case.check(&format!("debug.layer_out.{i}"), h)
                .map_err(label)?;
        }
        case.check("logits", &tr.logits).map_err(label)?;
    }
    Ok(())
}
