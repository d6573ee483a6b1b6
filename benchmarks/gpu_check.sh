#!/usr/bin/env bash
# The GPU checks in one go, results under $OUT (default benchmarks/out/gpu-check):
#   1. the gpu-marked tests (tests/integration/*gpu*.py: CUDA plan, compiled warm-up, every mode's
#      results, streaming and cancellation through continuous batching) -> $OUT/gpu-tests.xml
#   2. benchmarks/gpu_check.py: continuous vs static batching at 32 concurrent callers on the real
#      length mix, batch-1 latency per token against the bandwidth floor, a ~1B-parameter model in
#      bf16 built on the fly -> $OUT/gpu_check.json
# On a CUDA machine:            OUT=/some/dir benchmarks/gpu_check.sh
# Anywhere, as a smoke run:     benchmarks/gpu_check.sh --tiny   (CPU, tiny model; the tests skip)
# A machine without a package index: benchmarks/gpu_wheels.sh here, carry .whl there ($WHEELS).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out/gpu-check}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
WHEELS="${WHEELS:-.whl}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE="${SITE:-$(mktemp -d)}"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
status=0
"$PYTHON" -m pytest -q -m gpu tests/integration -p no:cacheprovider --junitxml "$OUT/gpu-tests.xml" || status=$?
"$PYTHON" benchmarks/gpu_check.py --output "$OUT/gpu_check.json" "$@"
exit "$status"
