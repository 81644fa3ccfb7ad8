#!/usr/bin/env bash
# Set up (or reuse) the environment, then run the whole test suite. Extra args go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_DIR="${NML_ENV:-$ROOT/.venv}"
"$ROOT/tools/setup.sh" --text  # the suite tests the text modality too
cd "$ROOT"
set +e
"$ENV_DIR/bin/python" -m pytest -q -p no:cacheprovider --durations=15 tests "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "[test] pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
