//! Generative perplexity of samples under a GPT-2 evaluator, as the reference's
//! `compute_generative_perplexity` computes it, plus the mean unigram entropy of the samples
//! (gen-PPL rewards repetitive text; low entropy exposes it).

use super::gpt2::{GenPpl, Gpt2, gen_ppl_terms};
use crate::data::hf::Retokenized;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

pub struct GenPplReport {
    pub gen_ppl: f64,
    /// Mean over samples of the entropy (nats) of each sample's evaluator-token frequencies.
    pub unigram_entropy: f64,
    pub samples_scored: usize,
}

/// A folder as it is, else the evaluator's repo (`gpt2-large` by default): its config, weights and
/// tokenizer, from the hub cache or downloaded into it. Callers fetch it before sampling, so a
/// failed download costs no samples.
pub fn fetch_evaluator(name_or_path: &str) -> Result<PathBuf> {
    crate::hub::Hub::model_dir_from_env(
        name_or_path,
        |config| super::gpt2::Gpt2Config::read(config).map(|_| ()),
        &["model.safetensors", "tokenizer.json"],
    )
    .with_context(|| format!("eval.gen_ppl_eval_model_name_or_path={name_or_path}"))
}

/// Scores `texts` under the GPT-2 folder `dir`: re-tokenised with the evaluator's tokenizer (pad = EOS, right-padded,
/// truncated to `max_length`), in batches of `batch_size` — the reference drops a last partial
/// batch, and so do we — each split into chunks of the evaluator's context length.
pub fn evaluate(
    dir: &Path,
    texts: &[String],
    max_length: usize,
    batch_size: usize,
    device: Device,
) -> Result<GenPplReport> {
    let model = Gpt2::from_dir(dir, device)?;
    // The evaluator's own tokenizer, unmodified (the reference loads a fresh one): our samples
    // may contain literal strings such as "[PAD]" that a tokenizer with added tokens would map
    // past the evaluator's vocabulary.
    let (plain, eos) = plain_tokenizer(dir)?;
    let r = retokenize(&plain, texts, max_length, eos)?;
    let eos = eos as i64;
    let rows = r.input_ids.len();
    let vocab = model.config.vocab_size as u32;
    if let Some(bad) = r.input_ids.iter().flatten().find(|&&t| t >= vocab) {
        bail!(
            "{}: token id {bad} is outside the evaluator's vocabulary ({vocab})",
            dir.display()
        );
    }
    if rows == 0 {
        bail!("no samples to score");
    }
    let to_tensor = |rows: &[Vec<u32>]| -> Tensor {
        let w = rows[0].len() as i64;
        let flat: Vec<i64> = rows.iter().flatten().map(|&v| v as i64).collect();
        Tensor::from_slice(&flat)
            .view([rows.len() as i64, w])
            .to_device(device)
    };
    let ids = to_tensor(&r.input_ids);
    let mask = to_tensor(&r.attention_mask);
    let context = model.config.n_positions;
    let batch = batch_size.min(rows).max(1);
    let mut acc = GenPpl::default();
    let mut scored = 0;
    for b in 0..rows / batch {
        let ids_b = ids.narrow(0, (b * batch) as i64, batch as i64);
        let mask_b = mask.narrow(0, (b * batch) as i64, batch as i64);
        for (chunk, mchunk) in ids_b
            .split(context, -1)
            .iter()
            .zip(mask_b.split(context, -1).iter())
        {
            if chunk.size()[1] < 2 {
                continue;
            }
            let logits = tch::no_grad(|| model.forward(chunk, Some(mchunk)));
            let (nlls, w) = gen_ppl_terms(&logits, chunk, eos);
            acc.update(&nlls, &w);
        }
        scored += batch;
    }
    Ok(GenPplReport {
        gen_ppl: acc.value(),
        unigram_entropy: mean_unigram_entropy(&r.input_ids, &r.attention_mask),
        samples_scored: scored,
    })
}

/// `tokenizer.json` of the evaluator folder as is, and its end-of-text id (GPT-2's
/// `<|endoftext|>`, else `</s>`).
fn plain_tokenizer(dir: &Path) -> Result<(tokenizers::Tokenizer, u32)> {
    let file = dir.join("tokenizer.json");
    let tok = tokenizers::Tokenizer::from_file(&file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let eos = ["<|endoftext|>", "</s>"]
        .iter()
        .find_map(|t| tok.token_to_id(t))
        .with_context(|| format!("{}: no end-of-text token", file.display()))?;
    Ok((tok, eos))
}

/// The reference's `eval_retokenize`: no special tokens, truncation to `max_length`, right
/// padding with EOS to the longest row.
fn retokenize(
    tok: &tokenizers::Tokenizer,
    texts: &[String],
    max_length: usize,
    eos: u32,
) -> Result<Retokenized> {
    let mut input_ids = Vec::with_capacity(texts.len());
    for t in texts {
        let enc = tok
            .encode(t.as_str(), false)
            .map_err(|e| anyhow::anyhow!("encoding a sample: {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        ids.truncate(max_length);
        input_ids.push(ids);
    }
    let width = input_ids.iter().map(Vec::len).max().unwrap_or(0);
    let attention_mask = input_ids
        .iter()
        .map(|r| (0..width).map(|i| u32::from(i < r.len())).collect())
        .collect();
    for r in &mut input_ids {
        r.resize(width, eos);
    }
    Ok(Retokenized {
        input_ids,
        attention_mask,
    })
}

fn mean_unigram_entropy(rows: &[Vec<u32>], masks: &[Vec<u32>]) -> f64 {
    let mut total = 0.0;
    for (row, mask) in rows.iter().zip(masks) {
        let mut counts = std::collections::HashMap::new();
        let mut n = 0.0;
        for (&t, &m) in row.iter().zip(mask) {
            if m == 1 {
                *counts.entry(t).or_insert(0.0) += 1.0;
                n += 1.0;
            }
        }
        total += counts
            .values()
            .map(|&c: &f64| -(c / n) * (c / n).ln())
            .sum::<f64>();
    }
    total / rows.len() as f64
}

#[cfg(test)]
mod tests {
    use super::mean_unigram_entropy;

    #[test]
    fn unigram_entropy_of_known_rows() {
        // [1,1,2,2]: ln 2; [3,3,3] (+ one padded): 0.
        let e = mean_unigram_entropy(
            &[vec![1, 1, 2, 2], vec![3, 3, 3, 9]],
            &[vec![1, 1, 1, 1], vec![1, 1, 1, 0]],
        );
        assert!((e - 2f64.ln() / 2.0).abs() < 1e-12);
    }
}
