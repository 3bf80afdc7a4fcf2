#!/usr/bin/env bash
# Download the wheels bench/gpu/suite.sh installs on the GPU machine (which reaches no package index) into
# bench/gpu/wheels/, pure Python or abi3 (CPython >= 3.11 on x86_64 Linux: torchtitan 0.3 needs 3.11). Run it here, then carry the folder:
#   bash bench/gpu/fetch_wheels.sh && (device run: carry ["bench/gpu/wheels"], command "bash bench/gpu/suite.sh")
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-../../.venv/bin/python}
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 \
  -r wheels.txt -d wheels
ls -la wheels
