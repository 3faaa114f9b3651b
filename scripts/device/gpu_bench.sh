#!/usr/bin/env bash
# GPU benchmark of the layer-wise AdaMerging step: adamerge on burn's wgpu vs the PyTorch reference on
# CUDA, ViT-B/32-shaped random checkpoints, 8 tasks × 16 images, 20 steps; seconds per step (median,
# first step left out) and peak GPU memory, ours with the task vectors in f32 and in f16, as a
# Markdown table in $OUT/gpu_bench.md (+ .json, logs).
# The single command for the lent device machine (no Rust, no network there); see gpu_bench.py for
# what is measured.
#
# Prepare HERE (once per checkout; .devbench/ is git-ignored, ~25 min build on 2 cores):
#   CARGO_TARGET_DIR=/tmp/target-wgpu cargo build --release --features wgpu --bin adamerge
#   mkdir -p .devbench/gl && strip -o .devbench/adamerge /tmp/target-wgpu/release/adamerge
#   (if the tree gets too big: xz -9 .devbench/adamerge, leaving .devbench/adamerge.xz; the script unpacks it)
#   mkdir -p /tmp/amd64/partial; o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
#   apt-get $o update; (cd .devbench/gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
#   du -sh .devbench        # must stay well under 64 MiB with the rest of the tree
#
# Then the device tool's `run` call (paste as is):
#   command:   bash scripts/device/gpu_bench.sh
#   carry:     [".devbench"]
#   timeout_s: 480   (gpu_bench.py stops itself at GPU_BENCH_BUDGET=420 s; expect ~3-5 min; leaves device time for one rerun)
#   (kind left out: an H100 or H200; the table names the card.)
# $OUT/gpu_bench.md, gpu_bench.json, gpu_bench.log, ours-f32.err, ours-f16.err, torch.err (and
# vulkaninfo.txt) come back.
#
# Test here at a tiny shape on lavapipe (CPU PyTorch stands in for CUDA, and the table says so):
#   PYTHON=/tmp/venv-scripts/bin/python OUT=/tmp/gpu-bench-out GPU_BENCH_ARGS='--k 3 --steps 4' \
#     bash scripts/device/gpu_bench.sh
#
# Environment: OUT (default /tmp/gpu-bench-out), PYTHON (default python3), DEVBENCH (default
# .devbench), GPU_BENCH_ARGS (default '--vit-b32 --k 8 --steps 20'; no --vit-b32 = tiny shape),
# GPU_BENCH_BUDGET (seconds for gpu_bench.py, generation included; default 420). Extra arguments
# go to gpu_bench.py after GPU_BENCH_ARGS.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:-/tmp/gpu-bench-out}
mkdir -p "$OUT"
DEV=${DEVBENCH:-.devbench}
PY=${PYTHON:-python3}
ARGS=${GPU_BENCH_ARGS:---vit-b32 --k 8 --steps 20}
BUDGET=${GPU_BENCH_BUDGET:-420}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
exec > >(tee "$OUT/gpu_bench.log") 2>&1

echo "== $(date -u +%FT%TZ) $(uname -srm); $(nproc) cores"
# Vulkan loader: carried .debs (the device README's `.gl` recipe), only where none is installed.
if ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
    if ls "$DEV"/gl/*.deb >/dev/null 2>&1; then
        for f in "$DEV"/gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
        echo "unpacked $(ls "$DEV"/gl/*.deb | wc -l) loader packages from $DEV/gl"
    else
        echo "WARNING: no libvulkan.so.1 and no $DEV/gl/*.deb to unpack"
    fi
fi
ldconfig -p | grep -m1 'libvulkan\.so\.1' || echo "WARNING: libvulkan.so.1 still missing"
# NVIDIA's Vulkan ICD: on the lent machines it lives under /usr/local/nvidia (device README).
NV_ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ] && [ -f "$NV_ICD" ] \
   && ! ls /usr/share/vulkan/icd.d/nvidia*.json /etc/vulkan/icd.d/nvidia*.json >/dev/null 2>&1; then
    export VK_DRIVER_FILES=$NV_ICD
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    echo "VK_DRIVER_FILES=$VK_DRIVER_FILES"
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
else
    echo "no nvidia-smi: GPU memory columns will read n/a"
fi
if command -v vulkaninfo >/dev/null; then
    vulkaninfo --summary >"$OUT/vulkaninfo.txt" 2>&1
    grep -E 'deviceName|driverName|driverInfo|apiVersion' "$OUT/vulkaninfo.txt" | head -12
fi
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "| transformers", transformers.__version__)'

BIN=$DEV/adamerge
if [ ! -f "$BIN" ] && [ -f "$BIN.xz" ]; then  # carried compressed when the plain one is too big to travel
    xz -dc "$BIN.xz" >/tmp/adamerge-wgpu && chmod +x /tmp/adamerge-wgpu && BIN=/tmp/adamerge-wgpu
fi
[ -x "$BIN" ] || chmod +x "$BIN" 2>/dev/null
"$BIN" --version || { echo "ERROR: $BIN does not run"; exit 1; }
# shellcheck disable=SC2086  # ARGS is a word list on purpose
"$PY" scripts/device/gpu_bench.py $ARGS --bin "$BIN" --python "$PY" --out-dir "$OUT" --budget "$BUDGET" "$@"
rc=$?
echo "== gpu_bench.py exited $rc; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $rc
