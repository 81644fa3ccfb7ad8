#!/usr/bin/env bash
# Set up (or reuse) the environment, then run the main job on the embedded default data:
# build the embedded benchmark (no downloads; skipped when it is already there) and pre-train the
# supervised model on it. Extra arguments go to `nml fit`, e.g. --data.noise.rate 0.3.
#   NML_DATA  benchmark directory (default: data/embedded in this checkout)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NML_VENV:-$HOME/.cache/nml/venv-py311}"
"$ROOT/tools/setup.sh"
cd "$ROOT"
export NML_DATA="${NML_DATA:-data/embedded}"
if [ ! -f "$NML_DATA/manifest.json" ]; then
  "$VENV/bin/nml" data embedded --config data/embedded.yaml --out "$NML_DATA"
fi
"$VENV/bin/nml" fit --config pretrain_supervised.yaml "$@"
