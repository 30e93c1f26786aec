#!/usr/bin/env bash
# The wheels bench/gpu_step.py needs on the lent GPU machine, fetched here (where the package registry is
# reachable) into .whl/ (ignored by git), to be carried to that machine: it has Python 3.12, torch + CUDA,
# accelerate, huggingface-hub, tokenizers, safetensors, numpy, pandas, pyarrow, rich, ... but not this
# project's pins, and it reaches no registry. Versions: the ones the CPU test suite runs with.
#
#     bash bench/device_wheels.sh          # ~20 MB into .whl/; then bench/gpu_step_device.sh on the GPU
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
PIP="${PYTHON:-python3} -m pip"
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    transformers==5.23.0 trl==1.16.0 peft==0.21.2 liger-kernel==0.8.5 \
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 \
    regex==2026.11.19 \
    omegaconf==2.3.1 \
    soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0 \
    httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5
# omegaconf's parser runtime is published as a source archive only: build its (pure-Python) wheel here
$PIP wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls .whl
du -sh .whl
