#!/usr/bin/env python3
"""Pools `train_ref.py` runs of one configuration over seeds into the curve file that
`tests/train_curve.rs` and `benches/train_curve.rs` compare mdlm with.

Usage: aggregate.py NAME OUT.json RUN.json [RUN.json ...]   (one JSON line per run, one seed each)

Per evaluation step: the mean over seeds of each run's mean over its validation draws, and the
standard error over seeds. The final value of a run is its many-draw evaluation of the final EMA
weights when it made one, else its last curve point.
"""
import json
import math
import statistics
import sys


def main():
  name, out, *paths = sys.argv[1:]
  runs = [json.loads(open(p).read().strip().splitlines()[-1]) for p in paths]
  cfg0 = {k: v for k, v in runs[0]['config'].items() if k != 'seed'}
  for r in runs[1:]:
    cfg = {k: v for k, v in r['config'].items() if k != 'seed'}
    assert cfg == cfg0, ('runs of different configurations', cfg, cfg0)
    assert r['data']['sha256'] == runs[0]['data']['sha256'], 'runs on different blocks'
  steps = [row[0] for row in runs[0]['curve_mean_over_repeats']]
  per_seed = {}
  finals = []
  for r in runs:
    assert [row[0] for row in r['curve_mean_over_repeats']] == steps
    per_seed[str(r['config']['seed'])] = [row[2] for row in r['curve_mean_over_repeats']]
    many = r['final'].get('many_draws')
    finals.append(many['mean_nats'] if many else r['final']['val_nelbo_nats_mean_over_repeats'])
  cols = list(zip(*per_seed.values()))
  se = lambda xs: statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0
  result = {
    'name': name,
    'made_by': 'benches/ref/curves.sh (the original, trained by ../shared/refbench/train_ref.py)',
    'reference_commit': runs[0].get('reference_commit'),
    'config': cfg0,
    'reference_settings': runs[0]['reference_settings'],
    'data': {k: runs[0]['data'][k] for k in ('sha256', 'vocab_size', 'val_windows', 'train_chars')},
    'seeds': [r['config']['seed'] for r in runs],
    'steps': steps,
    'val_nelbo_per_seed': per_seed,
    'val_nelbo_mean': [statistics.fmean(c) for c in cols],
    'val_nelbo_se': [se(c) for c in cols],
    'final': {'per_seed': finals, 'mean': statistics.fmean(finals), 'se': se(finals)},
    'timing': {'wall_s': [r['timing']['wall_s'] for r in runs],
               'step_median_s': [r['timing']['step_median_s'] for r in runs],
               'torch_threads': runs[0]['torch']['threads']},
  }
  with open(out, 'w') as f:
    json.dump(result, f, indent=1)
    f.write('\n')
  print(f"{name}: final val NELBO {result['final']['mean']:.4f} +- {result['final']['se']:.4f} "
        f"over seeds {result['seeds']}")


if __name__ == '__main__':
  main()
