#!/usr/bin/env bash
# The one prepared GPU check: on a machine with CUDA, from a fresh copy of the repository, in about
# 8 minutes in all:
#   1. an environment: the machine's python if it already imports nml's stack; else a venv over the
#      machine's site packages (its CUDA build of torch is kept) with the project's other
#      dependencies installed from the lock (tools/constraints.txt, torch / torchvision pinned to the
#      installed ones), from PyPI or from --wheels DIR (no network);
#   2. the `gpu`-marked tests (pytest -m gpu; junit XML);
#   3. benchmarks/gpu_step.py, every case (nml's step against a bare loop; MFU);
#   4. benchmarks/gpu_pipeline.py (the JPEG pipeline against the model-bound rate, decode_on_device
#      off and on);
#   5. tools/gpu_check_report.py: every figure in OUT/gpu_check.json and a Markdown table ready for
#      BENCHMARKS.md, OUT/gpu_check.md.
#
#   bash tools/gpu_check.sh [--dry_run] [--out DIR] [--wheels DIR]
#
# --dry_run lists the steps and their time limits and runs nothing. Without CUDA it says so and exits
# 1 before anything else runs. NML_PYTHON: the interpreter with the CUDA torch (default: python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="runs/gpu_check"
WHEELS=""
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry_run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    --wheels) WHEELS="$2"; shift ;;
    *) echo "gpu_check: unknown option $1 (expected --dry_run, --out DIR, --wheels DIR)" >&2; exit 2 ;;
  esac
  shift
done
PY="${NML_PYTHON:-python3}"
log() { echo "[gpu_check] $*" >&2; }

STEPS=(
  "env|60|an environment that imports nml's stack over the machine's CUDA torch"
  "tests|150|pytest -m gpu tests/test_gpu.py --junitxml OUT/gpu_tests.xml"
  "step|150|python -m benchmarks.gpu_step --repeats 2 > OUT/gpu_step.jsonl"
  "pipeline|100|python -m benchmarks.gpu_pipeline --repeats 2 > OUT/gpu_pipeline.jsonl"
  "report|10|python tools/gpu_check_report.py OUT -> OUT/gpu_check.json, OUT/gpu_check.md"
)
declare -A LIMIT
for s in "${STEPS[@]}"; do IFS='|' read -r name limit _ <<<"$s"; LIMIT[$name]=$limit; done
if [ "$DRY" = 1 ]; then
  total=0
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name limit what <<<"$s"
    printf '%-9s %4ss  %s\n' "$name" "$limit" "${what//OUT/$OUT}"
    total=$((total + limit))
  done
  printf 'at most %d s in all\n' "$total"
  exit 0
fi

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  log "needs CUDA: $PY has no CUDA device (or no torch); nothing was run"
  exit 1
fi
cd "$ROOT"
mkdir -p "$OUT"
t0=$SECONDS

# 1. the environment
if ! (cd / && "$PY" -c 'import nml, lightning, timm, open_clip, webdataset, pytest') 2>/dev/null; then
  venv="$OUT/venv"
  log "creating $venv over $PY's site packages (its torch is kept)"
  "$PY" -m venv --system-site-packages "$venv"
  lock="$OUT/constraints.txt"
  grep -v -E '^(torch|torchvision|triton|nvidia-[a-z0-9-]+)==' tools/constraints.txt >"$lock"
  "$venv/bin/python" - >>"$lock" <<'EOF'
import importlib.metadata as md
for name in ("torch", "torchvision"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
EOF
  source_args=()
  [ -n "$WHEELS" ] && source_args=(--no-index --find-links "$WHEELS")
  timeout "${LIMIT[env]}" "$venv/bin/python" -m pip install --quiet "${source_args[@]}" -c "$lock" -e ".[dev]"
  PY="$venv/bin/python"
fi
"$PY" -c 'import torch; print(f"[gpu_check] {torch.cuda.get_device_name()} | torch {torch.__version__} (CUDA {torch.version.cuda})")' >&2

# 2-4. tests and benchmarks; a failed step is recorded, the others still run
status=0
timeout "${LIMIT[tests]}" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py --junitxml "$OUT/gpu_tests.xml" >&2 || status=1
timeout "${LIMIT[step]}" "$PY" -m benchmarks.gpu_step --repeats 2 >"$OUT/gpu_step.jsonl" || status=1
timeout "${LIMIT[pipeline]}" "$PY" -m benchmarks.gpu_pipeline --repeats 2 >"$OUT/gpu_pipeline.jsonl" || status=1

# 5. one JSON, one Markdown table
timeout "${LIMIT[report]}" "$PY" tools/gpu_check_report.py "$OUT" --seconds "$((SECONDS - t0))"
log "done in $((SECONDS - t0)) s: $OUT/gpu_check.json, $OUT/gpu_check.md"
exit "$status"
