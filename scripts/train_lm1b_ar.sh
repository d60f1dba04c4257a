#!/bin/bash
# Slurm job: ar-lm1b. One mdlm process per GPU (srun starts 4 per node); the ranks
# rendezvous at the first host of the job's node list (see src/dist/launch.rs). trainer.devices
# follows from the task count (SLURM_NTASKS / trainer.num_nodes). Submit from the
# checkout after `cargo build --release`: sbatch scripts/train_lm1b_ar.sh
#SBATCH -J ar-lm1b
#SBATCH -o %x_%j.out
#SBATCH -N 1
#SBATCH --ntasks-per-node=4
#SBATCH --gres=gpu:4
#SBATCH --mem=32000
#SBATCH -t 960:00:00
#SBATCH --get-user-env
#SBATCH --open-mode=append
#SBATCH --requeue
set -euo pipefail
exec scripts/slurm-run.sh train \
  model=small-ar \
  backbone=ar \
  data=lm1b \
  wandb.name=ar-lm1b \
  parameterization=ar \
  time_conditioning=true \
  model.length=128 \
  eval.compute_generative_perplexity=true \
  sampling.steps=1000
