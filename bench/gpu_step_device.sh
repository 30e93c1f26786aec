#!/usr/bin/env bash
# bench/gpu_step.py on the lent GPU machine, as one command: install the carried wheels (bench/device_wheels.sh
# fetched them into .whl/), check that everything imports (a missing package stops here in seconds, with the
# versions printed, not minutes into the run), then run the benchmark; its JSON and log land in $OUT.
#
#     device run, carry [".whl"]:  bash bench/gpu_step_device.sh [gpu_step.py options]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_step_out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 3; }
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 - <<'EOF' || exit 4
import importlib, sys
names = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "huggingface_hub", "tokenizers",
         "soundfile", "soxr", "omegaconf", "httpx2", "triton", "liger_kernel"]
bad = []
for n in names:
    try:
        m = importlib.import_module(n)
        print(f"{n} {getattr(m, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001 - report every failure, not only the first
        bad.append(f"{n}: {type(e).__name__}: {e}")
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
# the project's own imports, as the benchmark makes them
for n in ["audiothink.trainer", "audiothink.models", "audiothink.toy.omni", "rewards"]:
    try:
        importlib.import_module(n)
    except Exception as e:  # noqa: BLE001
        bad.append(f"{n}: {type(e).__name__}: {e}")
if bad:
    print("import check failed:\n  " + "\n  ".join(bad))
    sys.exit(1)
EOF
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
python3 bench/gpu_step.py --out "$OUT/gpu_step.json" "$@" 2>&1 | tee "$OUT/gpu_step.log"
exit "${PIPESTATUS[0]}"
