#!/usr/bin/env bash
# Wheels of what the GPU check needs beyond torch, for a GPU machine without a package index
# (CPython 3.12, manylinux x86_64), into DIR (default .whl):
#   benchmarks/gpu_wheels.sh [DIR]
# benchmarks/gpu_check.sh installs them from $WHEELS (default .whl, when present) into a private
# directory on PYTHONPATH, so the machine's own torch is used and nothing of its site changes.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.whl}"
mkdir -p "$DIR"
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DIR" "transformers>=5.25,<5.26" "langchain-core>=1.0" "langgraph>=1.0" "pydantic>=2.7" \
  "tenacity>=8.2" "sentencex>=1.0.32" "pytest-asyncio>=0.24"
# A machine with torch has numpy and pytest already; their wheels would only shadow its own (and
# the whole set must stay small enough to carry).
rm -f "$DIR"/numpy-*.whl "$DIR"/pytest-[0-9]*.whl "$DIR"/pluggy-*.whl "$DIR"/iniconfig-*.whl "$DIR"/pygments-*.whl
du -sh "$DIR"
