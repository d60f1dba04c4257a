//! Exponential moving average of the trainable parameters, as the reference's `models/ema.py`
//! (`ExponentialMovingAverage` with `use_num_updates=True`), which is what MDLM samples and
//! evaluates with.
//!
//! The shadow is a separate named store (same names as the parameters), so evaluation builds the
//! model on it instead of swapping weights in and out.

use super::foreach;
use anyhow::{Result, bail};
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// Key of the update counter in `state_tensors`.
const NUM_UPDATES_KEY: &str = "ema.num_updates";

pub struct Ema {
    decay: f64,
    num_updates: u64,
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// The shadow starts as a detached copy of `params`, on their device and in their dtype.
    pub fn new(params: &[(String, Tensor)], decay: f64) -> Self {
        let shadow = params
            .iter()
            .map(|(name, p)| (name.clone(), p.detach().copy()))
            .collect();
        Self {
            decay,
            num_updates: 0,
            shadow,
        }
    }

    /// Decay used by update number `n` (1-based, i.e. the counter after it was incremented): the
    /// `(1 + n) / (10 + n)` warm-up keeps early shadows from being dominated by the random init.
    pub fn effective_decay(&self, n: u64) -> f64 {
        self.decay.min((1.0 + n as f64) / (10.0 + n as f64))
    }

    /// One EMA step towards `params` (same names and order as at construction), on whole lists.
    pub fn update(&mut self, params: &[(String, Tensor)]) -> Result<()> {
        if params.len() != self.shadow.len() {
            bail!(
                "EMA update: {} parameters, the shadow has {}",
                params.len(),
                self.shadow.len()
            );
        }
        debug_assert!(
            self.shadow
                .iter()
                .zip(params)
                .all(|((a, _), (b, _))| a == b),
            "EMA update: parameter order changed"
        );
        self.num_updates += 1;
        let one_minus_decay = 1.0 - self.effective_decay(self.num_updates);
        let shadow: Vec<Tensor> = self.shadow.iter().map(|(_, s)| s.shallow_clone()).collect();
        let params: Vec<Tensor> = params.iter().map(|(_, p)| p.shallow_clone()).collect();
        tch::no_grad(|| -> Result<()> {
            // Same float32 rounding as the reference: (s - p) * c, then s -= that.
            let delta = foreach::sub(&shadow, &params)?;
            foreach::mul_scalar_(&delta, one_minus_decay)?;
            foreach::sub_(&shadow, &delta)
        })
    }

    pub fn shadow(&self) -> &[(String, Tensor)] {
        &self.shadow
    }

    pub fn num_updates(&self) -> u64 {
        self.num_updates
    }

    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// `ema.<param>` for every shadow tensor, plus `ema.num_updates` (0-d int64). The tensors share
    /// storage with the shadow; the checkpoint writer copies them out.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .shadow
            .iter()
            .map(|(name, s)| (format!("ema.{name}"), s.shallow_clone()))
            .collect();
        out.push((
            NUM_UPDATES_KEY.to_string(),
            Tensor::from(self.num_updates as i64),
        ));
        out
    }

    /// Restores what `state_tensors` produced. Every `ema.` key must be present with the shadow's
    /// shape, and no other `ema.` key may be there; other keys are ignored, so the whole checkpoint
    /// can be passed. Nothing is modified when an error is returned.
    pub fn load_state(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let by_name: HashMap<&str, &Tensor> =
            tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let count = by_name
            .get(NUM_UPDATES_KEY)
            .ok_or_else(|| anyhow::anyhow!("EMA state: missing key {NUM_UPDATES_KEY}"))?;
        if count.numel() != 1 {
            bail!(
                "EMA state: {NUM_UPDATES_KEY} has shape {:?}, expected a scalar",
                count.size()
            );
        }
        let count = i64::try_from(count.to_kind(Kind::Int64).reshape([-1]).get(0))?;
        if count < 0 {
            bail!("EMA state: {NUM_UPDATES_KEY} is negative ({count})");
        }
        let mut sources = Vec::with_capacity(self.shadow.len());
        for (name, s) in &self.shadow {
            let key = format!("ema.{name}");
            let Some(src) = by_name.get(key.as_str()) else {
                bail!("EMA state: missing key {key}");
            };
            if src.size() != s.size() {
                bail!(
                    "EMA state: {key} has shape {:?} in the checkpoint, {:?} in the model",
                    src.size(),
                    s.size()
                );
            }
            sources.push(*src);
        }
        let expected: std::collections::HashSet<String> = self
            .shadow
            .iter()
            .map(|(n, _)| format!("ema.{n}"))
            .chain(std::iter::once(NUM_UPDATES_KEY.to_string()))
            .collect();
        if let Some((extra, _)) = tensors
            .iter()
            .find(|(k, _)| k.starts_with("ema.") && !expected.contains(k))
        {
            bail!("EMA state: unexpected key {extra} (not a parameter of this model)");
        }
        tch::no_grad(|| {
            for ((_, s), src) in self.shadow.iter_mut().zip(sources) {
                s.copy_(src);
            }
        });
        self.num_updates = count as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_decay_and_update() {
        let p = vec![("w".to_string(), Tensor::from_slice(&[1.0f64, 2.0]))];
        let mut ema = Ema::new(&p, 0.9999);
        assert_eq!(ema.effective_decay(1), 2.0 / 11.0);
        let target = vec![("w".to_string(), Tensor::from_slice(&[0.0f64, 0.0]))];
        ema.update(&target).unwrap();
        let got: Vec<f64> = Vec::try_from(&ema.shadow()[0].1).unwrap();
        let d = 2.0 / 11.0;
        assert!((got[0] - d).abs() < 1e-15 && (got[1] - 2.0 * d).abs() < 1e-15);
        assert_eq!(ema.num_updates(), 1);
    }

    #[test]
    fn state_round_trip_and_errors() {
        let p = vec![("a.w".to_string(), Tensor::from_slice(&[1.0f32, 2.0, 3.0]))];
        let mut ema = Ema::new(&p, 0.99);
        ema.update(&[(
            "a.w".to_string(),
            Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
        )])
        .unwrap();
        let saved: Vec<(String, Tensor)> = ema
            .state_tensors()
            .into_iter()
            .map(|(k, t)| (k, t.copy()))
            .collect();
        let mut fresh = Ema::new(&p, 0.99);
        fresh.load_state(&saved).unwrap();
        assert_eq!(fresh.num_updates(), 1);
        assert!(fresh.shadow()[0].1.equal(&ema.shadow()[0].1));

        let mut extra = saved
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect::<Vec<_>>();
        extra.push((
            "ema.b.w".into(),
            Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)),
        ));
        let err = fresh.load_state(&extra).unwrap_err().to_string();
        assert!(err.contains("unexpected key ema.b.w"), "{err}");

        let missing = [saved[1].0.clone()];
        let only_count: Vec<(String, Tensor)> = saved
            .iter()
            .filter(|(k, _)| missing.contains(k))
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        let err = fresh.load_state(&only_count).unwrap_err().to_string();
        assert!(err.contains("missing key ema.a.w"), "{err}");
    }
}
