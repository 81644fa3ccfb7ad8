#!/usr/bin/env bash
# Set up (or reuse) the environment, then run the main job on the embedded default data.
# For now that job builds the embedded benchmark (no downloads) and prints its summary as JSON.
#   NML_DATA  output directory (default: data/embedded in this checkout)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NML_VENV:-$HOME/.cache/nml/venv-py311}"
"$ROOT/tools/setup.sh"
cd "$ROOT"
"$VENV/bin/nml" data embedded --config data/embedded.yaml --out "${NML_DATA:-data/embedded}" "$@"
