#!/usr/bin/env bash
# Gathers what scripts/gpu-check.sh needs on a GPU machine that has torch in python3 but no Rust
# and no network: the release binary, the bench binary and the Shakespeare corpus, into .gpu/
# (git-ignored; copy or carry it along with the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
raw="$(bash scripts/setup-data.sh)"
cargo build --release --locked
bench="$(cargo bench --no-run --bench dit --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="dit" and m.get("executable"): print(m["executable"])' | tail -1)"
rm -rf .gpu && mkdir -p .gpu/cache/data/shakespeare
cp target/release/mdlm .gpu/mdlm && strip .gpu/mdlm
cp "$bench" .gpu/dit-bench && strip .gpu/dit-bench
cp -r "$raw" .gpu/cache/data/shakespeare/raw
du -sh .gpu
