#!/usr/bin/env bash
# Set up (or reuse) the environment, then run the main job on the embedded default data: the
# quickstart study (builds the embedded benchmark first when it is missing; no downloads).
# Extra arguments go to `nml study`, e.g. --grid.seeds '[0]' or --dry_run.
#   NML_DATA  benchmark directory (default: data/embedded in this checkout)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_DIR="${NML_ENV:-$ROOT/.venv}"
"$ROOT/tools/setup.sh"
cd "$ROOT"
export NML_DATA="${NML_DATA:-data/embedded}"
if [ ! -f "$NML_DATA/manifest.json" ]; then
  "$ENV_DIR/bin/nml" data embedded --config data/embedded.yaml --out "$NML_DATA"
fi
"$ENV_DIR/bin/nml" study --config study_quickstart.yaml "$@"
