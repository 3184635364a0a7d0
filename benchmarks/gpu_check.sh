#!/usr/bin/env bash
# One prepared check for a machine with a GPU (never needed by CI): the CUDA tests, then every
# benchmark at GPU sizes with --json, then docs/PERFORMANCE.md regenerated and every ratio printed
# against its goal. Each step runs under a timeout taken from one budget, so the whole script ends
# in under 8 minutes (GPU_CHECK_BUDGET seconds, default 450, plus the report).
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine; results in benchmarks/results/
#   bash benchmarks/gpu_check.sh --cpu-dry-run   # the same steps at tiny sizes on the CPU, results
#                                                # and page in a temporary folder: checks the script
#
# Python: $GPU_CHECK_PYTHON if set; else .venv (the dry run), or a venv with a CUDA build of torch
# made the way .ci/run / `make venv` makes .venv (VENV=.venv-gpu; TORCH_SPEC and TORCH_INDEX as in
# the Makefile: on Linux x86_64 PyPI's torch wheel is a CUDA build; e.g. TORCH_INDEX='--index-url
# https://download.pytorch.org/whl/cu126' for another CUDA).
# Afterwards: commit benchmarks/results/*.json and docs/PERFORMANCE.md (the page is generated).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
case "${1:-}" in
  --cpu-dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--cpu-dry-run]" >&2; exit 2 ;;
esac
# seconds for all steps: < 8 min in all on a GPU; the dry run's tiny steps get more on a busy CPU
BUDGET=${GPU_CHECK_BUDGET:-$((DRY ? 1800 : 450))}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then
  PY=$GPU_CHECK_PYTHON
elif [[ $DRY == 1 ]]; then
  [[ -x .venv/bin/python ]] || make venv
  PY=.venv/bin/python
else
  VENV=${GPU_CHECK_VENV:-.venv-gpu}
  if ! [[ -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    make venv VENV="$VENV" ${TORCH_SPEC:+TORCH_SPEC="$TORCH_SPEC"} ${TORCH_INDEX:+TORCH_INDEX="$TORCH_INDEX"} || exit 1
  fi
  PY=$VENV/bin/python
fi

if [[ $DRY == 1 ]]; then
  RESULTS=$(mktemp -d /tmp/gpu_check_dry.XXXXXX)
  PAGE=$RESULTS/PERFORMANCE.md
  DEV=cpu
  export OMP_NUM_THREADS=1
  echo "gpu_check: CPU dry run (tiny sizes); results and page in $RESULTS"
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: torch sees no CUDA device (use --cpu-dry-run on a CPU)')" || exit 1
  RESULTS=benchmarks/results
  PAGE=docs/PERFORMANCE.md
  DEV=cuda
  "$PY" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
fi
export HF_NC_RESULTS_DIR=$RESULTS
LOGS=$(mktemp -d /tmp/gpu_check_logs.XXXXXX)
STATUS=()
FAILED=0

# step NAME SECONDS CMD...: runs CMD under min(SECONDS, what is left of the budget); never stops the script
step() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - SECONDS))
  if ((left < 10)); then STATUS+=("SKIPPED  $name (budget spent)"); FAILED=1; return; fi
  ((limit > left)) && limit=$left
  echo; echo "=== [$SECONDS s] $name (timeout ${limit} s): $*"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log" | grep -v -E "Warning|warn\(" 
  local rc=${PIPESTATUS[0]}
  if ((rc == 0)); then STATUS+=("ok       $name ($((SECONDS - start)) s)")
  elif ((rc == 124 || rc == 137)); then STATUS+=("TIMEOUT  $name (${limit} s; log $LOGS/$name.log)"); FAILED=1
  else STATUS+=("FAILED   $name (rc $rc; log $LOGS/$name.log)"); FAILED=1; fi
}

if [[ $DRY == 1 ]]; then
  step cuda-tests     120 "$PY" -m pytest -q -rs -p no:cacheprovider -k cuda tests/test_metrics.py
  step nc_metrics     480 "$PY" benchmarks/nc_metrics.py --quick --sizes 2048,4096 --memory_runs 0 --parts abc --repeats 1 --dtypes float64,float32 --json
  step trainer        400 "$PY" benchmarks/trainer.py --epochs 0.2 --repeats 1 --nc_train_samples 32 --skip_uncached --json
  step prefix_cache   200 "$PY" benchmarks/prefix_cache.py --quick --hidden 64 --heads 2 --image 32 --steps 2 --images 16 --json
  step prefix_dinov2  200 "$PY" benchmarks/prefix_cache.py --quick --family dinov2 --image 28 --steps 1 --images 16 --json
  step adapters       200 "$PY" benchmarks/adapters.py --hidden 64 --heads 2 --image 32 --batch 4 --steps 1 --json
else
  # every test whose name mentions cuda (they skip without a GPU)
  step cuda-tests     90 "$PY" -m pytest -q -rs -p no:cacheprovider -k cuda tests/
  # NCStats update vs one H^T H in float64 and float32; NC logging vs an eval pass; K = 1000
  step nc_metrics     150 "$PY" benchmarks/nc_metrics.py --device cuda --dtypes float64,float32 --repeats 3 --json
  step trainer        100 "$PY" benchmarks/trainer.py --device cuda --repeats 3 --json
  step prefix_cache   60 "$PY" benchmarks/prefix_cache.py --device cuda --hidden 768 --heads 12 --image 224 --batch 32 --images 320 --json
  step prefix_dinov2  40 "$PY" benchmarks/prefix_cache.py --device cuda --family dinov2 --batch 64 --images 640 --json
  step adapters       50 "$PY" benchmarks/adapters.py --device cuda --shape vit-b16 --steps 20 --json
fi

echo; echo "=== [$SECONDS s] report: $PAGE from $RESULTS"
"$PY" benchmarks/performance_report.py --results "$RESULTS" --output "$PAGE" --summary || { STATUS+=("FAILED   report"); FAILED=1; }

echo; echo "=== gpu_check: steps ($SECONDS s in all; logs in $LOGS)"
printf '  %s\n' "${STATUS[@]}"
exit $FAILED
