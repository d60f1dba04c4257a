#!/usr/bin/env bash
# README command (b): set-up, build, and every test (parity fixtures, resume, CLI, bad input, ...).
# Parity fixtures are read from $MDLM_PARITY_DIR (default ../shared/parity).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# One libtorch thread per test process: the suite runs tests in parallel on small machines.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cargo test --locked "$@" 2>&1
