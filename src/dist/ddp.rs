//! What data parallelism adds to the loop: one set of initial weights, gradients averaged once
//! per optimizer step in a few flat buckets (as DDP buckets them, so a model of hundreds of
//! tensors costs a handful of collectives), and validation sums added up across ranks.

use super::ProcessGroup;
use crate::eval::metrics::NllMeter;
use anyhow::{Context, Result, bail};
use tch::{Kind, Tensor};

/// DDP's default bucket size.
pub const DEFAULT_BUCKET_MB: f64 = 25.0;

/// Parameter indices grouped into buckets of at most `cap_bytes` (a larger tensor gets a bucket
/// of its own), never mixing dtypes or devices, in the parameters' fixed (sorted) order so
/// every rank builds the same buckets.
pub fn buckets(params: &[(String, Tensor)], cap_bytes: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0usize;
    let mut key = None;
    for (i, (_, p)) in params.iter().enumerate() {
        let size = p.numel() * p.kind().elt_size_in_bytes();
        let k = (p.kind(), p.device());
        let fits = key == Some(k) && bytes + size <= cap_bytes;
        match out.last_mut() {
            Some(b) if fits => b.push(i),
            _ => {
                out.push(vec![i]);
                bytes = 0;
                key = Some(k);
            }
        }
        bytes += size;
    }
    out
}

fn flat(ts: &[&Tensor]) -> Tensor {
    Tensor::cat(&ts.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0)
}

/// Copies `src`'s consecutive slices back into `dst`.
fn unflat(src: &Tensor, dst: &[&Tensor]) {
    let mut off = 0i64;
    for t in dst {
        let n = t.numel() as i64;
        let mut t = (*t).shallow_clone();
        t.copy_(&src.narrow(0, off, n).view_as(&t));
        off += n;
    }
}

/// Rank 0's parameters everywhere, so every replica starts from the same weights.
pub fn broadcast_params(pg: &ProcessGroup, params: &[(String, Tensor)]) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        for b in buckets(params, (DEFAULT_BUCKET_MB * 1e6) as usize) {
            let ts: Vec<&Tensor> = b.iter().map(|&i| &params[i].1).collect();
            let mut f = flat(&ts);
            pg.broadcast(&mut f, 0)
                .context("broadcasting the initial weights from rank 0")?;
            unflat(&f, &ts);
        }
        Ok(())
    })
}

/// Averages gradients across ranks, bucket by bucket.
pub struct GradReducer {
    buckets: Vec<Vec<usize>>,
}

impl GradReducer {
    pub fn new(params: &[(String, Tensor)], bucket_mb: f64) -> GradReducer {
        GradReducer {
            buckets: buckets(params, (bucket_mb.max(0.0) * 1e6) as usize),
        }
    }

    pub fn num_buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Replaces every gradient by its mean over ranks and returns the mean of `scalar` (the
    /// step's loss, 0-d, on the device), which rides along in the first bucket instead of costing
    /// a collective.
    pub fn reduce(
        &self,
        pg: &ProcessGroup,
        params: &[(String, Tensor)],
        scalar: &Tensor,
    ) -> Result<Tensor> {
        tch::no_grad(|| -> Result<Tensor> {
            let mut mean = None;
            for (bi, b) in self.buckets.iter().enumerate() {
                let grads: Vec<Tensor> = b
                    .iter()
                    .map(|&i| {
                        let (name, p) = &params[i];
                        let g = p.grad();
                        if !g.defined() {
                            bail!(
                                "parameter {name} has no gradient on rank {}; every rank must use every parameter",
                                pg.rank()
                            );
                        }
                        Ok(g)
                    })
                    .collect::<Result<_>>()?;
                let refs: Vec<&Tensor> = grads.iter().collect();
                let mut f = flat(&refs);
                if bi == 0 {
                    let s = scalar.reshape([1]).to_kind(f.kind()).to_device(f.device());
                    f = Tensor::cat(&[f, s], 0);
                }
                pg.all_reduce_avg(&mut f)
                    .context("averaging gradients across ranks")?;
                if bi == 0 {
                    let n = f.size()[0];
                    mean = Some(f.get(n - 1).copy());
                }
                unflat(&f, &refs);
            }
            mean.context("a model without parameters has nothing to reduce")
        })
    }
}

/// The token-weighted validation NLL over all ranks: sums of NLL and of tokens are added up
/// (not the ranks' means averaged), so ranks holding different token counts weigh correctly.
pub fn reduce_meter(pg: &ProcessGroup, m: &NllMeter, device: tch::Device) -> Result<NllMeter> {
    let mut t = Tensor::from_slice(&[m.nll_sum, m.tokens])
        .to_kind(Kind::Double)
        .to_device(device);
    pg.all_reduce_sum(&mut t)
        .context("adding up validation sums across ranks")?;
    let v: Vec<f64> = Vec::<f64>::try_from(t.to_device(tch::Device::Cpu))?;
    Ok(NllMeter {
        nll_sum: v[0],
        tokens: v[1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_respect_the_cap_and_keep_order() {
        let p = |n: i64| {
            (
                "p".to_string(),
                Tensor::zeros([n], (Kind::Float, tch::Device::Cpu)),
            )
        };
        let params = vec![p(10), p(10), p(30), p(5), p(1)];
        // 4 bytes per element: a 100-byte cap holds 25 floats.
        assert_eq!(buckets(&params, 100), vec![vec![0, 1], vec![2], vec![3, 4]]);
        assert_eq!(buckets(&params, 1 << 20), vec![vec![0, 1, 2, 3, 4]]);
        let mixed = vec![
            p(1),
            (
                "d".into(),
                Tensor::zeros([1], (Kind::Double, tch::Device::Cpu)),
            ),
        ];
        assert_eq!(buckets(&mixed, 1 << 20).len(), 2);
    }
}
