#!/usr/bin/env bash
# Installs the headers the c10d bridge (src/dist/*.cpp) compiles against; the libraries are
# libtorch's own. Idempotent: a finished install leaves a stamp and a second call returns at once.
#  - Gloo: torch 2.11's ProcessGroupGloo.hpp includes <gloo/...>, which the wheel does not ship;
#    Debian's libgloo-dev provides them (apt). Only the headers are used: the gloo that runs is
#    the copy inside libtorch_cpu.
#  - NCCL: the wheel's nvidia packages carry cuda_runtime.h and nccl.h but not crt/ nor CCCL's
#    nv/target, which ProcessGroupNCCL.hpp reaches; the nvidia-cuda-crt / nvidia-cuda-cccl header
#    wheels of the same CUDA 13.0 release go next to libtorch (headers only, nothing is linked).
set -euo pipefail

TORCH_VERSION="2.11.0"
CRT="nvidia-cuda-crt==13.0.88"
CCCL="nvidia-cuda-cccl==13.0.85"
CACHE_ROOT="${MDLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mdlm}"
PREFIX="$CACHE_ROOT/torch-$TORCH_VERSION"
HEADERS="$PREFIX/mdlm-cuda-headers"
STAMP="$HEADERS/.installed-13.0.88-13.0.85"

if [ ! -f /usr/include/gloo/algorithm.h ] && [ ! -f /usr/local/include/gloo/algorithm.h ]; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup-dist: installing libgloo-dev (gloo headers for torch's ProcessGroupGloo)" >&2
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends libgloo-dev >&2
  else
    echo "setup-dist: gloo headers missing and no apt-get: install gloo's headers and set MDLM_GLOO_INCLUDE" >&2
  fi
fi

if [ ! -f "$STAMP" ]; then
  PY="${PYTHON:-python3}"
  mkdir -p "$PREFIX"
  TMP="$(mktemp -d "$PREFIX/headers.XXXXXX")"
  trap 'rm -rf "$TMP"' EXIT
  echo "setup-dist: installing CUDA crt/CCCL headers ($CRT, $CCCL) into $HEADERS" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-warn-script-location \
    --target "$TMP/site" "$CRT" "$CCCL" >&2
  rm -rf "$HEADERS"
  mv "$TMP/site" "$HEADERS"
  touch "$STAMP"
fi
