#!/usr/bin/env bash
# On a lent GPU machine, from the repo root, with .devkit/ carried (bash benchmarks/devkit.sh):
# installs the kit into /tmp/mergesweep-site (no network there), then runs
#   1. the GPU tests (pytest -m gpu): CUDA merges against the CPU's, GPU sweeps inline and on Ray,
#      AdaMerging's descent on the GPU;
#   2. benchmarks/gpu_sweep.py: the quick start's trials/hour, merge_ms and eval_ms, GPU vs CPU;
#   3. benchmarks/merge_bandwidth.py --device cuda (~100M parameters, 8 experts), if time is left.
# Logs and JSON results go to $OUT (the device tool brings them back).
#
#   run(command="bash benchmarks/device_run.sh", carry=[".devkit"], timeout_s=540)
#
# DEVICE=cpu (with PYTHON pointing at a stand-in Python and KIT_PYTHON matching it in devkit.sh)
# rehearses the whole script on a machine without a GPU.
set -uo pipefail
OUT=${OUT:-/tmp/mergesweep-device-out}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SITE=${SITE:-/tmp/mergesweep-site}
start=$SECONDS
mkdir -p "$OUT"
exec > >(tee "$OUT/device_run.log") 2>&1
step() { echo "== [$((SECONDS - start)) s] $*"; }

test -e .venv && { echo "device_run.sh: run it on the device machine's copy of the tree, not in a checkout with .venv"; exit 2; }
test -f .devkit/ray.tar.xz || { echo "device_run.sh: no .devkit/ (run benchmarks/devkit.sh here, carry .devkit)"; exit 2; }
step "install the kit into $SITE"
rm -rf "$SITE" && mkdir -p "$SITE"
$PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .devkit/whl/*.whl || exit 3
tar -C "$SITE" -xJf .devkit/ray.tar.xz || exit 3
# mergesweep's subpackages live in spaces/, search/ and objectives/ (pyproject's package-dir):
# linked into this throwaway copy's mergesweep/, the tree imports whole from wherever Ray's
# workers start (they inherit the driver's sys.path and cwd).
for sub in spaces search objectives; do ln -sfn "../$sub" "mergesweep/$sub" || exit 3; done
export PYTHONPATH=$SITE:$PWD MERGESWEEP_CACHE=$PWD/.devkit/cache MERGESWEEP_TEST_ZOO_CACHE=$PWD/.devkit/cache
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export RAY_USAGE_STATS_ENABLED=0
# -P: the repo root must not shadow the installed package (its subpackages live in spaces/, ...)
$PYTHON -P - <<'EOF' || exit 3
import importlib
for name in ("torch", "transformers", "datasets", "pyarrow", "optuna", "ray", "mergesweep"):
    mod = importlib.import_module(name)
    print(f"{name} {getattr(mod, '__version__', '?')}  {mod.__file__}")
import torch
print("cuda:", torch.version.cuda, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

step "GPU tests"
timeout 240 $PYTHON -P -m pytest -q -ra -m gpu -p no:cacheprovider \
  tests/merge/test_cuda.py tests/runtime/test_cuda_sweep.py tests/search/test_cuda_adamerging.py
echo "pytest rc=$?"

step "gpu_sweep.py"
(cd benchmarks && timeout 240 $PYTHON gpu_sweep.py --device "$DEVICE" --out "$OUT/gpu_sweep.json")
echo "gpu_sweep rc=$?"

left=$((${DEVICE_BUDGET_S:-520} - (SECONDS - start)))
if [ "$DEVICE" != cpu ] && [ "$left" -gt 120 ]; then
  step "merge_bandwidth.py --device cuda (${left} s left)"
  (cd benchmarks && timeout $((left - 20)) $PYTHON merge_bandwidth.py --device cuda \
    --out "$OUT/merge_bandwidth_gpu.json")
  echo "merge_bandwidth rc=$?"
fi
step "done"
