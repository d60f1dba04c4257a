#!/bin/bash
# What every slurm job of scripts/ runs once its #SBATCH header has set up the allocation:
#   scripts/slurm-run.sh train OVERRIDE...     srun starts one mdlm process per task (GPU); the
#                                              ranks meet at the first host of the node list
#   scripts/slurm-run.sh ppl-eval OVERRIDE...  one process, on one GPU
# Both take the seed's per-device batch of 16. Training writes into a fixed run directory (one
# per job name, or $RUN_DIR), so every rank sees the same one and a requeued job resumes from its
# last checkpoint. Run from the checkout (sbatch's working directory) after
# `cargo build --release`.
set -euo pipefail
cmd="$1"
shift
common=(loader.batch_size=16 loader.eval_batch_size=16)
case "$cmd" in
  train)
    run_dir="${RUN_DIR:-outputs/${SLURM_JOB_NAME:-mdlm}}"
    exec srun ./target/release/mdlm train \
      trainer.num_nodes="${SLURM_NNODES:-1}" hydra.run.dir="$run_dir" "${common[@]}" "$@"
    ;;
  ppl-eval)
    exec srun ./target/release/mdlm ppl-eval "${common[@]}" "$@"
    ;;
  *)
    echo "slurm-run.sh: unknown command '$cmd' (train, ppl-eval)" >&2
    exit 2
    ;;
esac
