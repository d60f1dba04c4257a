#!/bin/bash
# Slurm job: sedd-owt. One mdlm process per GPU (srun starts 4 per node); the ranks
# rendezvous at the first host of the job's node list (see src/dist/launch.rs). trainer.devices
# follows from the task count (SLURM_NTASKS / trainer.num_nodes). Submit from the
# checkout after `cargo build --release`: sbatch scripts/train_owt_sedd.sh
#SBATCH -J sedd-owt
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
  model=small \
  data=openwebtext-split \
  wandb.name=sedd-owt \
  parameterization=sedd \
  time_conditioning=true \
  model.length=1024 \
  eval.compute_generative_perplexity=true \
  sampling.steps=1000
