#!/bin/bash
# Slurm job: eval-mdlm-T. `mdlm ppl-eval` runs as one process on one GPU (it is not data parallel,
# unlike the reference's 4-GPU Lightning eval; the NLL is the same, it only takes longer).
# Set CKPT to the checkpoint (ours, .safetensors, or the reference's Lightning .ckpt).
#SBATCH -J eval-mdlm-T
#SBATCH -o %x_%j.out
#SBATCH -N 1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:1
#SBATCH --mem=100000
#SBATCH -t 960:00:00
#SBATCH --get-user-env
#SBATCH --open-mode=append
#SBATCH --requeue
set -euo pipefail
: "${CKPT:?set CKPT=/path/to/checkpoint}"
for T in 0 1000; do
  echo "T=$T"
  scripts/slurm-run.sh ppl-eval \
    data=openwebtext-split \
    model=small \
    parameterization=subs \
    backbone=dit \
    model.length=1024 \
    T="$T" \
    eval.checkpoint_path="$CKPT" \
    hydra.run.dir="outputs/eval-mdlm-T$T"
done
