#!/usr/bin/env bash
# Short CUDA check with a prebuilt release binary (see scripts/gpu-pack.sh): bf16 training of the
# preset and of a `small`-shaped model, sampling with ddpm and ddpm_cache, NCCL training and
# evaluation (world size 1), and the benches. Prints
# the device, tokens/s, MFU and peak GPU memory. Uses the libtorch of python3's torch when there is one.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN="${MDLM_BIN:-.gpu/mdlm}"
BENCH="${MDLM_BENCH_BIN:-.gpu/dit-bench}"
OUTDIR="${OUT:-/tmp}/gpu-check"
mkdir -p "$OUTDIR"
export MDLM_CACHE="${MDLM_CACHE:-$PWD/.gpu/cache}"
if lib="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)"; then
  export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  python3 -c 'import torch; print("python torch", torch.__version__, "| cuda", torch.cuda.is_available())'
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

peak_file="$OUTDIR/peak_mib"
echo 0 > "$peak_file"
( peak=0; while sleep 0.2; do
    m="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)"
    [ -n "$m" ] && [ "$m" -gt "$peak" ] && peak="$m" && echo "$peak" > "$peak_file"
  done ) &
sampler=$!
trap 'kill $sampler 2>/dev/null' EXIT
peak() { echo "peak GPU memory so far: $(cat "$peak_file") MiB (nvidia-smi, whole device)"; }

set -x
"$BIN" train experiment=shakespeare trainer.accelerator=cuda trainer.precision=bf16 \
  trainer.max_steps=400 trainer.val_check_interval=200 callbacks.checkpoint_every_n_steps.every_n_train_steps=200 \
  optim.lr=1e-3 hydra.run.dir="$OUTDIR/preset" 2>&1 | grep -v '^[│├└]' | tail -6
{ set +x; } 2>/dev/null; peak; set -x
for pred in ddpm ddpm_cache first_hitting analytic; do
  "$BIN" sample-eval experiment=shakespeare trainer.accelerator=cuda sampling.predictor=$pred sampling.steps=1000 \
    loader.eval_global_batch_size=16 eval.checkpoint_path="$OUTDIR/preset/checkpoints/last.safetensors" \
    hydra.run.dir="$OUTDIR/sample-$pred" 2>&1 | tail -1
done
"$BIN" sample-eval experiment=shakespeare trainer.accelerator=cuda loader.eval_global_batch_size=2 \
  eval.checkpoint_path="$OUTDIR/preset/checkpoints/last.safetensors" hydra.run.dir="$OUTDIR/sample-show" 2>&1 | tail -6
# The reference's `small` DiT (768 hidden, 12 blocks) on 1024-character blocks, bf16.
"$BIN" train experiment=shakespeare model=small model.length=1024 trainer.accelerator=cuda trainer.precision=bf16 \
  loader.global_batch_size=32 trainer.max_steps=200 trainer.val_check_interval=200 trainer.limit_val_batches=4 \
  callbacks.checkpoint_every_n_steps.every_n_train_steps=1000 hydra.run.dir="$OUTDIR/small" 2>&1 | grep -v '^[│├└]' \
  | tee "$OUTDIR/small.log" | tail -4
{ set +x; } 2>/dev/null; peak
# MFU: the run's model TFLOP/s (6 per multiplying weight + attention, per token; start-up and the
# validation pass included, so a lower bound) over the device's dense bf16 peak.
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
case "$gpu" in
  *H100*|*H200*|*GH200*) peak_tflops=989.4 ;;
  *A100*) peak_tflops=312 ;;
  *L40S*) peak_tflops=362 ;;
  *) peak_tflops="" ;;
esac
tflops="$(sed -n 's/.*(\([0-9.]*\) model TFLOP\/s.*/\1/p' "$OUTDIR/small.log" | tail -1)"
if [ -n "$tflops" ] && [ -n "$peak_tflops" ]; then
  awk -v t="$tflops" -v p="$peak_tflops" -v g="$gpu" \
    'BEGIN { printf "small, L=1024, bf16: %.1f model TFLOP/s, MFU %.1f%% of %s dense bf16 peak %.1f TFLOP/s\n", t, 100*t/p, g, p }'
else
  echo "MFU: no peak figure for '$gpu' (model TFLOP/s: ${tflops:-none})"
fi
set -x
# NCCL process group of world size 1 (torchrun-style variables): rendezvous, weight broadcast,
# per-step gradient all-reduce, validation all-reduce, barrier and shutdown on libtorch_cuda's
# ProcessGroupNCCL. The last lines must show the trained steps; an error names the rank.
RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517 \
  "$BIN" train experiment=shakespeare trainer.accelerator=cuda trainer.max_steps=50 trainer.val_check_interval=50 \
  trainer.dist_timeout_s=120 hydra.run.dir="$OUTDIR/nccl" 2>&1 | grep -v '^[│├└]' | tail -4
# Data-parallel evaluation on NCCL (world size 1, torchrun-style variables): ppl-eval's
# all-reduce of token-weighted sums and sample-eval's gather, each against the same command run
# alone — the NLL and the sample tokens must be equal.
CK="$OUTDIR/nccl/checkpoints/last.safetensors"
RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29518 \
  "$BIN" ppl-eval experiment=shakespeare trainer.accelerator=cuda eval.checkpoint_path="$CK" \
  trainer.limit_val_batches=8 trainer.dist_timeout_s=120 hydra.run.dir="$OUTDIR/nccl-ppl" 2>&1 | tail -1
"$BIN" ppl-eval experiment=shakespeare trainer.accelerator=cuda eval.checkpoint_path="$CK" \
  trainer.limit_val_batches=8 hydra.run.dir="$OUTDIR/alone-ppl" 2>&1 | tail -1
RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29519 \
  "$BIN" sample-eval experiment=shakespeare trainer.accelerator=cuda eval.checkpoint_path="$CK" \
  loader.eval_global_batch_size=4 sampling.num_samples=12 trainer.dist_timeout_s=120 \
  hydra.run.dir="$OUTDIR/nccl-sample" 2>&1 | tail -1
"$BIN" sample-eval experiment=shakespeare trainer.accelerator=cuda eval.checkpoint_path="$CK" \
  loader.eval_global_batch_size=4 sampling.num_samples=12 hydra.run.dir="$OUTDIR/alone-sample" 2>&1 | tail -1
{ set +x; } 2>/dev/null
python3 - "$OUTDIR" <<'PY'
import json, sys
d = sys.argv[1]
nll = [json.loads(open(f"{d}/{r}/metrics.jsonl").readline())["val/nll"] for r in ("nccl-ppl", "alone-ppl")]
tok = [[json.loads(l)["tokens"] for l in open(f"{d}/{r}/samples.jsonl")] for r in ("nccl-sample", "alone-sample")]
print(f"NCCL ppl-eval nll {nll[0]!r} vs alone {nll[1]!r}: {'equal' if nll[0] == nll[1] else 'DIFFERENT'}")
print(f"NCCL sample-eval {len(tok[0])} samples vs alone {len(tok[1])}: {'equal' if tok[0] == tok[1] else 'DIFFERENT'}")
PY
set -x
# DiMamba on CUDA: the closed-form scan and its recomputing backward (scan.cpp), bf16.
"$BIN" train experiment=shakespeare backbone=dimamba model=tiny-dimamba model.n_blocks=4 trainer.accelerator=cuda \
  trainer.precision=bf16 trainer.max_steps=30 trainer.val_check_interval=30 trainer.limit_val_batches=2 \
  hydra.run.dir="$OUTDIR/dimamba" 2>&1 | grep -v '^[│├└]' | tail -3
# The profiler on CUDA: ops per bf16 training step of the preset, trace.json in the run directory.
"$BIN" train experiment=shakespeare trainer.accelerator=cuda trainer.precision=bf16 trainer.max_steps=6 \
  trainer.profile=true hydra.run.dir="$OUTDIR/profile" 2>&1 | grep -A14 '^ops per step'
{ set +x; } 2>/dev/null
[ -x "$BENCH" ] && MDLM_BENCH_DEVICE=cuda "$BENCH"
peak
