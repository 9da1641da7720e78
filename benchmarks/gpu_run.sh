#!/usr/bin/env bash
# The one command a GPU session runs on the H100 to produce the GPU results of
# docs/PERFORMANCE.md: the engine's CUDA tests, then `sfdfuse bench` at the three sizes with the
# quality check and the training step. Everything goes to $OUT (else benchmarks/results).
#
#   bash benchmarks/gpu_run.sh            # PYTHON=... to pick the interpreter (CUDA torch)
#
# Environment: PYTHON (default: .venv/bin/python if present, else python3), OUT, WEIGHTS (a
# weights file; default: the shipped weights if installed, else a random full-size network),
# QUALITY_DATA (default: ../shared/data/ivf/test, the TNO and RoadScene pairs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT_DIR="${OUT:-benchmarks/results}"
mkdir -p "$OUT_DIR"
QUALITY="${QUALITY_DATA:-../shared/data/ivf/test}"
SHIPPED=sfdfuse_core/weights/sfdfuse_ivf.safetensors
WEIGHT_ARGS=()
if [[ -n "${WEIGHTS:-}" ]]; then WEIGHT_ARGS=(--weights "$WEIGHTS")
elif [[ ! -f "$SHIPPED" ]]; then echo "no shipped weights: benchmarking random weights"; fi

{ nvidia-smi; "$PYTHON" -c 'import torch; print(torch.__version__, torch.version.cuda,
  torch.cuda.get_device_name())'; } > "$OUT_DIR/gpu_env.txt" 2>&1 || true

# 1. the CUDA tests of the engine (bf16 PSNR, CUDA graphs, compile) and the export tests
"$PYTHON" -m pytest test/test_engine.py test/test_export.py -q -rs 2>&1 \
    | tee "$OUT_DIR/gpu_tests.log"

# 2. latency / throughput / memory / PSNR at three sizes, quality on real pairs, training step
QUALITY_ARGS=()
if [[ -d "$QUALITY" ]]; then QUALITY_ARGS=(--quality-data "$QUALITY"); fi
"$PYTHON" -m sfdfuse_core bench --device cuda --sizes 640x480,640x512,1280x1024 \
    --repeats 100 --eager-repeats 10 --warmup 10 --train-repeats 20 \
    "${QUALITY_ARGS[@]}" "${WEIGHT_ARGS[@]}" --out "$OUT_DIR" 2>&1 | tee "$OUT_DIR/bench_cuda.log"
