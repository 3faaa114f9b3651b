#!/usr/bin/env bash
# Prepares .devbench/ for scripts/device/gpu_bench.sh HERE (not on the device): waits for / runs the
# wgpu release build of HEAD in a separate target dir, strips it into .devbench/adamerge (xz if the
# plain binary would make the tree too big), fetches the Vulkan loader .debs into .devbench/gl, prints
# the carried size, then runs gpu_bench.sh end to end at a tiny shape on lavapipe (CPU PyTorch).
#   bash scripts/device/prepare.sh            # log: stdout; the tiny table: /tmp/gpu-bench-tiny/gpu_bench.md
set -euo pipefail
cd "$(dirname "$0")/../.."
T=${CARGO_TARGET_DIR_WGPU:-/tmp/target-wgpu}
SRC=${ADAMERGE_SRC:-/tmp/adamerge-src}
# Always HEAD's files (a tree left by an earlier commit would build a stale binary); the target dir
# keeps the dependencies, so only the crate itself recompiles.
rm -rf "$SRC"; mkdir -p "$SRC"; git archive HEAD | tar -x -C "$SRC"
(cd "$SRC" && CARGO_TARGET_DIR=$T cargo build --release --features wgpu --bin adamerge)
mkdir -p .devbench/gl
rm -f .devbench/adamerge .devbench/adamerge.xz
strip -o .devbench/adamerge "$T/release/adamerge"
if [ -z "$(ls .devbench/gl/*.deb 2>/dev/null)" ]; then
  mkdir -p /tmp/amd64/partial; o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  apt-get $o update >/dev/null; (cd .devbench/gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
carry=$(du -sb .devbench | cut -f1)
if [ $((tree + carry)) -gt $((56 * 1024 * 1024)) ]; then xz -9 -T0 .devbench/adamerge; carry=$(du -sb .devbench | cut -f1); fi
echo "carried .devbench: $((carry / 1024)) KiB; tracked tree $((tree / 1024)) KiB; $(ls .devbench)"
echo "built from $(git log -1 --format='%h %s')"
PYTHON=${PYTHON:-/tmp/venv-scripts/bin/python} OUT=/tmp/gpu-bench-tiny GPU_BENCH_ARGS='--k 3 --steps 4' \
  GPU_BENCH_BUDGET=300 bash scripts/device/gpu_bench.sh
