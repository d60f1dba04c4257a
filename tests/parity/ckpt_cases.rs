//! Parity of what mdlm reads from outside: the Hugging Face MDLM folder (through a hub cache), the
//! reference's Lightning `.ckpt`, and the GPT-2 evaluator with its gen-PPL arithmetic.

use crate::common::{Case, scalar};
use anyhow::{Context, Result, anyhow, bail, ensure};
use mdlm::backbone::{Backbone, Precision};
use mdlm::checkpoint::{hf, lightning};
use mdlm::eval::gpt2::{GenPpl, Gpt2, gen_ppl_terms};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor, nn};

/// The hub repo whose layout `hf_mdlm_tiny/` mirrors (README: "Hugging Face MDLM checkpoint").
const HF_REPO: &str = "kuleshov-group/mdlm-owt";

/// A scratch folder removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Result<Scratch> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("mdlm-parity-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies a model folder into `<hub>/models--owner--name/snapshots/<rev>/` with `refs/main`, the
/// layout huggingface_hub leaves after a download.
fn install_in_hub(hub: &Path, repo_id: &str, files_from: &Path) -> Result<()> {
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let repo = hub.join(format!("models--{}", repo_id.replace('/', "--")));
    let snap = repo.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap)?;
    std::fs::create_dir_all(repo.join("refs"))?;
    std::fs::write(repo.join("refs").join("main"), rev)?;
    for entry in std::fs::read_dir(files_from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), snap.join(entry.file_name()))?;
    }
    Ok(())
}

pub fn hf_mdlm(case: &Case) -> Result<()> {
    let src = case.dir.join(case.str("model_dir")?);
    let scratch = Scratch::new("hf")?;
    let hub = scratch.0.join("hub");
    install_in_hub(&hub, HF_REPO, &src)?;

    // Offline misses are one clear error each.
    let e = hf::resolve_in(&hub, "kuleshov-group/not-there")
        .err()
        .unwrap();
    ensure!(
        format!("{e}").contains("not in the Hugging Face cache"),
        "{e}"
    );
    ensure!(hf::resolve_in(&hub, "not-a-repo-id").is_err());

    let dir = hf::resolve_in(&hub, HF_REPO)?;
    let m = hf::load_dir(&dir)?;
    let want = case.value("hf_config")?;
    let c = &m.config;
    for (k, got) in [
        ("vocab_size", c.vocab_size),
        ("model_length", c.model_length),
        ("hidden_dim", c.hidden_dim),
        ("cond_dim", c.cond_dim),
        ("n_blocks", c.n_blocks),
        ("n_heads", c.n_heads),
    ] {
        ensure!(
            want[k].as_i64() == Some(got),
            "config {k}: {got} vs {}",
            want[k]
        );
    }
    ensure!(want["time_conditioning"].as_bool() == Some(c.time_conditioning));

    let vs = nn::VarStore::new(Device::Cpu);
    let dit = hf::load_dit(&vs, &c.dit_config(), &m.tensors, Precision::F32)?;
    let ids = case.t("input_ids")?;
    let mut sigma = case.t("timesteps")?;
    if !c.time_conditioning {
        sigma = sigma.zeros_like();
    }
    let logits = tch::no_grad(|| dit.forward(&ids, &sigma, false));
    case.check("logits", &logits)?;

    // Without the inv_freq buffer the recomputed one must give the same logits.
    let mut no_buffer = m.tensors;
    no_buffer.remove("backbone.rotary_emb.inv_freq");
    let vs2 = nn::VarStore::new(Device::Cpu);
    let dit2 = hf::load_dit(&vs2, &c.dit_config(), &no_buffer, Precision::F32)?;
    case.check(
        "logits",
        &tch::no_grad(|| dit2.forward(&ids, &sigma, false)),
    )?;

    // A config of another model type is refused.
    let other = scratch.0.join("other");
    std::fs::create_dir_all(&other)?;
    std::fs::write(other.join("config.json"), r#"{"model_type": "gpt2"}"#)?;
    let e = hf::load_dir(&other).err().unwrap();
    ensure!(format!("{e}").contains("model_type"), "{e}");
    Ok(())
}

pub fn lightning_ckpt(case: &Case) -> Result<()> {
    let path = case.dir.join(case.str("ckpt_file")?);
    let ckpt = lightning::read(&path)?;

    // state_dict: names, shapes, dtypes and float64 sums as documented.
    let entries = case
        .value("checkpoint.state_dict_entries")?
        .as_array()
        .ok_or_else(|| anyhow!("state_dict_entries not a list"))?;
    ensure!(
        entries.len() == ckpt.state_dict.len(),
        "state_dict has {} entries, expected {}",
        ckpt.state_dict.len(),
        entries.len()
    );
    for e in entries {
        let name = e["name"].as_str().unwrap_or_default();
        let t = ckpt
            .state_dict
            .get(name)
            .ok_or_else(|| anyhow!("state_dict lacks {name}"))?;
        let shape: Vec<i64> = e["shape"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_i64()).collect())
            .unwrap_or_default();
        ensure!(
            t.size() == shape,
            "{name}: shape {:?} vs {shape:?}",
            t.size()
        );
        ensure!(
            e["dtype"] == "float32" && t.kind() == Kind::Float,
            "{name}: dtype"
        );
        let sum = f64::try_from(t.to_kind(Kind::Double).sum(Kind::Double))?;
        let want = e["sum"].as_f64().unwrap_or(f64::NAN);
        // float64 sums of the same float32 numbers; only the summation order may differ.
        ensure!(
            (sum - want).abs() <= 1e-9 * (1.0 + want.abs()),
            "{name}: sum {sum} vs {want}"
        );
    }

    // EMA: order derived from the architecture, checked against the fixture's names.
    let cfg = crate::model_cases::dit_config(case)?;
    let order = lightning::dit_parameter_order(cfg.n_blocks);
    let want_order: Vec<String> = case
        .value("ema_parameter_order")?
        .as_array()
        .ok_or_else(|| anyhow!("ema_parameter_order not a list"))?
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    ensure!(
        order == want_order,
        "derived EMA parameter order differs from the fixture's"
    );
    let ema = ckpt.ema.as_ref().ok_or_else(|| anyhow!("no ema"))?;
    // `checkpoint.values` keys contain dots, so they are looked up directly.
    let values = case.value("checkpoint.values")?;
    let want_decay = values["ema.decay"]
        .as_f64()
        .ok_or_else(|| anyhow!("checkpoint.values.ema.decay missing"))?;
    ensure!(
        ema.decay == want_decay,
        "ema.decay {} vs {want_decay}",
        ema.decay
    );
    let want_updates = values["ema.num_updates"].as_i64();
    ensure!(
        ema.num_updates == want_updates,
        "ema.num_updates {:?} vs {want_updates:?}",
        ema.num_updates
    );
    let want_step = values["global_step"].as_i64();
    ensure!(ckpt.global_step == want_step, "global_step");
    let ema_sd = ckpt.ema_state_dict(&order)?;
    let mut n_checked = 0;
    for name in case.tensors.keys().filter(|k| k.starts_with("ema.")) {
        let param = &name["ema.".len()..];
        let got = ema_sd
            .get(param)
            .ok_or_else(|| anyhow!("EMA lacks {param}"))?;
        case.check(name, got)?;
        n_checked += 1;
    }
    ensure!(
        n_checked == order.len(),
        "checked {n_checked} EMA tensors of {}",
        order.len()
    );

    // Logits with the raw and the EMA weights.
    let (x, sigma) = (case.t("x")?, case.t("sigma")?);
    // `sigma` is what the backbone was fed (already zero where the reference zeroes it).
    for (label, weights) in [("logits_raw", &ckpt.state_dict), ("logits_ema", &ema_sd)] {
        let vs = nn::VarStore::new(Device::Cpu);
        let dit = hf::load_dit(&vs, &cfg, weights, Precision::F32)
            .with_context(|| format!("{label} weights"))?;
        case.check(label, &tch::no_grad(|| dit.forward(&x, &sigma, false)))?;
    }

    // The truncated archive is refused.
    let truncated = case.dir.join(case.str("truncated_ckpt_file")?);
    match lightning::read(&truncated) {
        Ok(_) => bail!("{} was accepted", truncated.display()),
        Err(e) => ensure!(format!("{e:#}").contains("zip"), "unexpected error: {e:#}"),
    }
    Ok(())
}

pub fn gpt2_eval(case: &Case) -> Result<()> {
    let model = Gpt2::from_dir(&case.dir.join(case.str("model_dir")?), Device::Cpu)?;
    for k in ["vocab_size", "n_embd", "n_head", "n_layer", "n_positions"] {
        let want = case.i64(&format!("gpt2_config.{k}"))?;
        let c = &model.config;
        let got = match k {
            "vocab_size" => c.vocab_size,
            "n_embd" => c.n_embd,
            "n_head" => c.n_head,
            "n_layer" => c.n_layer,
            _ => c.n_positions,
        };
        ensure!(got == want, "gpt2 config {k}: {got} vs {want}");
    }
    let ids = case.t("input_ids")?;
    let logits = tch::no_grad(|| model.forward(&ids, Some(&ids.ones_like())));
    case.check("logits", &logits)?;
    ensure!(
        logits.allclose(&tch::no_grad(|| model.forward(&ids, None)), 0.0, 0.0, false),
        "an all-ones mask must equal no mask"
    );

    // Padded batch: compare the rows the mask keeps.
    let ids_p = case.t("input_ids_padded")?;
    let mask = case.t("attention_mask_padded")?;
    let got = tch::no_grad(|| model.forward(&ids_p, Some(&mask)));
    let keep = mask.flatten(0, -1).nonzero().squeeze_dim(1);
    let v = got.size()[2];
    let sel = |t: &Tensor| t.reshape([-1, v]).index_select(0, &keep);
    let (atol, rtol) = case.tolerance("logits_padded");
    case.check_with(
        "logits_padded[mask]",
        &sel(&got),
        &sel(&case.t("logits_padded")?),
        atol,
        rtol,
    )?;

    // Gen-PPL arithmetic.
    let eos = case.i64("eos_token_id")?;
    let (nlls, w) = gen_ppl_terms(&logits, &ids, eos);
    case.check("nlls", &nlls)?;
    case.check("ppl_weight", &w)?;
    let mut ppl = GenPpl::default();
    ppl.update(&nlls, &w);
    case.check("gen_ppl", &scalar(ppl.value()))?;
    let (atol, rtol) = case.tolerance("gen_ppl");
    case.check_with(
        "gen_ppl(json)",
        &scalar(ppl.value()),
        &scalar(case.f64("gen_ppl")?),
        atol,
        rtol,
    )?;
    let mut again = GenPpl::default();
    again.update_with(&model, &ids, eos);
    ensure!(
        (again.value() - ppl.value()).abs() <= 1e-9 * ppl.value(),
        "update_with"
    );
    Ok(())
}
