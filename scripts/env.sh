# Sourced by the other scripts: installs libtorch if needed and points the build at it.
# `.libtorch` in the checkout links to the per-user cache (see .cargo/config.toml), so a plain
# `cargo build` works afterwards too.
_mdlm_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIBTORCH="$(bash "$_mdlm_root/scripts/setup-libtorch.sh")"
export LIBTORCH
ln -sfn "$LIBTORCH" "$_mdlm_root/.libtorch"
# Headers for the c10d bridge (gloo; CUDA crt/CCCL for NCCL): see scripts/setup-dist.sh.
bash "$_mdlm_root/scripts/setup-dist.sh"
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
