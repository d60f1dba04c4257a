#!/usr/bin/env bash
# Installs libtorch from PyPI (torch==2.11.0, the same build the GPU machines carry) into a per-user
# cache outside the checkout, so every clone and every CI run reuses it. Idempotent: a finished
# install leaves a stamp and a second call returns at once. Prints the torch directory on stdout.
set -euo pipefail

TORCH_VERSION="2.11.0"
CACHE_ROOT="${MDLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mdlm}"
PREFIX="$CACHE_ROOT/torch-$TORCH_VERSION"
STAMP="$PREFIX/.installed"

if [ -f "$STAMP" ] && [ -f "$PREFIX/torch/lib/libtorch_cpu.so" ]; then
  echo "$PREFIX/torch"
  exit 0
fi

PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null || { echo "setup-libtorch: python3 with pip is needed to fetch torch==$TORCH_VERSION" >&2; exit 1; }

mkdir -p "$CACHE_ROOT"
# Install into a scratch folder and move it into place only when complete, so an interrupted
# install never looks finished.
TMP="$(mktemp -d "$CACHE_ROOT/torch-install.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
echo "setup-libtorch: installing torch==$TORCH_VERSION (with its CUDA runtime wheels) into $PREFIX" >&2
# The CUDA wheels come along because libtorch_cuda.so is linked unconditionally (so a GPU box uses
# CUDA) and its dependencies must resolve even on a CPU-only machine.
"$PY" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --target "$TMP/site" "torch==$TORCH_VERSION" >&2
rm -rf "$PREFIX"
mv "$TMP/site" "$PREFIX"
touch "$STAMP"
echo "$PREFIX/torch"
