#!/usr/bin/env bash
# Download, HERE (the build machine has PyPI), the wheels that the lent GPU machine lacks,
# into .whl/ (git-ignored). The GPU machine cannot download anything; its image has torch,
# triton, numpy, scipy, einops, safetensors, transformers, pytest ... but not the packages
# below (its package list: /work/.library/device/KINDS.md). gpu_owed.sh installs whatever
# lies in .whl/ into /tmp/site first; name .whl in the device call's `carry`.
#
#   bash benchmarks/gpu_wheels.sh kernels         # 0.3 MB: vector-quantize-pytorch and its needs
#   bash benchmarks/gpu_wheels.sh kernels train   # + what anytok's CLI, training and bench import
#
# Versions are the ones this repository's venv runs; --no-deps, so every need is named here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
declare -A WHEELS=(
  [kernels]="vector-quantize-pytorch==1.32.0 einx==0.4.3 loguru==0.7.3 torch-einops-utils==0.2.0 frozendict==2.5.1"
  [train]="av==18.1.0 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 omegaconf==2.4.0 diffusers==0.42.1 importlib_metadata==10.2.0 lazy-importer braceexpand==0.1.7 pystoi==0.4.1"
)
[ $# -gt 0 ] || set -- kernels
mkdir -p .whl
for group in "$@"; do
  [ -n "${WHEELS[$group]:-}" ] || { echo "unknown group $group (kernels | train)"; exit 2; }
  # The GPU image's python3 is CPython 3.12 on x86-64 (KINDS.md).
  # shellcheck disable=SC2086
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl ${WHEELS[$group]}
done
du -sh .whl
ls .whl
