#!/usr/bin/env python3
"""`../shared/refbench/train_ref.py` for the original's DiMamba backbone, which that script does not
offer: the same training and validation, with the model built as `backbone=dimamba
model=tiny-dimamba parameterization=subs` at the sizes given on the command line.

The original's DiMamba runs mamba-ssm's CUDA and Triton kernels; on CPU each is replaced by the
same package's pure-torch path or reference, so the network computed is unchanged: the fused
add + RMS norm (`rms_norm_fn`) by `rms_norm_ref`, the selective scan by `selective_scan_ref`, and
the causal convolution by the module's own `conv1d` (its non-fused branch, taken when
`causal_conv1d_fn` is None).

Usage: train_ref_dimamba.py --refbench DIR  <train_ref.py flags>   (its --backbone is ignored)
"""
import os
import sys


def cpu_kernels():
  """Points the original's `models.dimamba` at mamba-ssm's own CPU references."""
  import torch
  from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
  from mamba_ssm.ops.triton.layernorm import rms_norm_ref
  dimamba = sys.modules['models.dimamba']
  dimamba.causal_conv1d_fn = None
  dimamba.selective_scan_fn = selective_scan_ref

  def rms_norm_fn(x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False,
                  eps=1e-6):
    out = rms_norm_ref(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm,
                       upcast=True)
    if prenorm and residual_in_fp32:
      return out[0], out[1].to(torch.float32)
    return out

  dimamba.rms_norm_fn = rms_norm_fn


def main():
  argv = sys.argv[1:]
  i = argv.index('--refbench')
  refbench = argv[i + 1]
  del argv[i:i + 2]
  sys.path.insert(0, os.path.abspath(refbench))
  import train_ref  # noqa: E402

  plain_build = train_ref.build

  def build_dimamba(args, diffusion, vocab_size):
    # train_ref's build composes the reference's Hydra config with its overrides; swap the
    # architecture ones and keep every other (sizes, optimiser, loader, seed).
    from hydra import compose, initialize_config_dir
    _, _, over = plain_build(args, diffusion, vocab_size)
    arch = {'backbone=dit', 'model=small', 'parameterization=subs'}
    over = ['backbone=dimamba', 'model=tiny-dimamba', 'parameterization=subs'] + [
      o for o in over if o not in arch]
    with initialize_config_dir(config_dir=os.path.join(os.path.abspath(args.ref), 'configs'),
                               version_base=None):
      cfg = compose(config_name='config', overrides=over)
    cpu_kernels()
    model = diffusion.Diffusion(cfg, tokenizer=train_ref.bench_ref.TokenizerStandIn(vocab_size))
    return model, cfg, over

  train_ref.build = build_dimamba
  sys.argv = [sys.argv[0]] + argv
  train_ref.main()


if __name__ == '__main__':
  main()
