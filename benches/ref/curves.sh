#!/usr/bin/env bash
# Regenerates a committed reference curve, tests/ref_curves/NAME.json: the original MDLM trained
# on mdlm's own prepared Shakespeare blocks (char, L128), once per seed, then pooled.
#
# Usage: benches/ref/curves.sh NAME "SEEDS" [extra train_ref.py flags]
#   NAME   dit_full | dit_ci | ar | dimamba   (the configurations in tests/support/curve.rs; the
#          original's DiMamba runs here only through mamba-ssm's pure-torch references, minutes a
#          step on two cores, so dimamba.json is not committed)
#   SEEDS  e.g. "0 1 2"
# Needs the original's git mirror in MDLM_REF_MIRROR (the search tool's `fetch` of
# github:kuleshov-group/mdlm) and ../shared/refbench; installs the rest (libtorch, the corpus, the
# original's Python env). Runs are kept in target/ref-curves/ so an interrupted pass resumes.
set -euo pipefail
cd "$(dirname "$0")/../.."
NAME=${1:?usage: curves.sh NAME SEEDS}; SEEDS=${2:?usage: curves.sh NAME SEEDS}; shift 2
REFBENCH=$(cd ../shared/refbench && pwd)
source scripts/env.sh
DATA=$(bash scripts/setup-data.sh)
cargo build --release --locked -q
CACHE=${MDLM_CACHE:-$HOME/.cache/mdlm}
# setup_ref.sh's own check imports mamba_ssm without the CPU shims, so it reinstalls every time;
# skip it when the original's env already imports with them.
REF=$CACHE/ref/mdlm; PY=$CACHE/ref/venv/bin/python
if [ ! -f "$REF/diffusion.py" ] || ! PYTHONPATH="$REFBENCH/shims" "$PY" -c 'import torch, lightning, mamba_ssm, hydra' 2>/dev/null; then
  eval "$(bash "$REFBENCH/setup_ref.sh" "${MDLM_REF_MIRROR:?set MDLM_REF_MIRROR to the original mirror}" | tail -1)"
fi

# mdlm prepares the blocks the original then reads (a one-step run does it).
BLOCKS=$CACHE/data/shakespeare
if [ ! -f "$BLOCKS/char-L128-train.bin" ]; then
  ./target/release/mdlm train experiment=shakespeare trainer.max_steps=1 trainer.accelerator=cpu \
    "hydra.run.dir=target/ref-curves/prepare" >/dev/null
fi

# The shapes of tests/support/curve.rs (keep the two in step).
common=(--hidden 128 --blocks 4 --heads 4 --cond 64 --length 128 --batch 32 --eval-batch 32
        --lr 3e-4 --warmup 100 --dropout 0.1 --eval-every 100 --val-windows 100000
        --eval-repeats 1 --final-repeats 4 --epoch-shuffle --no-eval-at-start)
script=("$REFBENCH/train_ref.py")
case $NAME in
  dit_full) args=(--backbone dit --steps 600) ;;
  dit_ci) args=(--backbone dit --steps 300) ;;
  ar) args=(--backbone ar --steps 600) ;;
  dimamba) args=(--steps 300); script=(benches/ref/train_ref_dimamba.py --refbench "$REFBENCH") ;;
  *) echo "unknown curve $NAME" >&2; exit 2 ;;
esac
OUT=target/ref-curves/$NAME; mkdir -p "$OUT"
runs=()
for s in $SEEDS; do
  f=$OUT/seed$s.json
  if [ ! -s "$f" ]; then
    "$PY" "${script[@]}" --ref "$REF" --ref-commit "$(git --git-dir="$MDLM_REF_MIRROR" rev-parse HEAD)" \
      --blocks-train "$BLOCKS/char-L128-train.bin" --blocks-valid "$BLOCKS/char-L128-validation.bin" \
      "${common[@]}" "${args[@]}" --seed "$s" "$@" >"$f.tmp" 2>"$OUT/seed$s.log"
    mv "$f.tmp" "$f"
  fi
  runs+=("$f")
done
"$PY" benches/ref/aggregate.py "$NAME" "tests/ref_curves/$NAME.json" "${runs[@]}"
