#!/usr/bin/env bash
# Set up (or reuse) the nml environment. Idempotent: a second run installs nothing new.
#
#   NML_VENV     where the venv lives (default: ~/.cache/nml/venv-py311, outside the checkout)
#   NML_PYTHON   the interpreter to build it from (default: python3.11, else python3)
#   NML_FONTS    "debian" (default): install the pinned Debian font packages when running as root
#                with apt-get; "skip": never touch system packages (the fallback fonts are used)
#
# The venv is keyed by a hash of pyproject.toml + tools/constraints.txt: when they change, the
# dependencies are re-installed into it; otherwise only nml itself is (re)linked to this checkout.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NML_VENV:-$HOME/.cache/nml/venv-py311}"
PY="${NML_PYTHON:-$(command -v python3.11 || command -v python3)}"
log() { echo "[setup] $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV from $PY ($("$PY" --version 2>&1))"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
fi
key="$(cat "$ROOT/pyproject.toml" "$ROOT/tools/constraints.txt" | sha256sum | cut -c1-16)"
stamp="$VENV/.nml-deps-$key"
if [ ! -f "$stamp" ]; then
  log "installing dependencies into $VENV (first install: ~3-15 min, ~6 GB; see README)"
  t0=$SECONDS
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # the distribution was once named "nml" (PyPI's nml is another project): drop a stale install of it
  "$VENV/bin/python" -m pip uninstall --quiet --yes nml >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install --quiet -c "$ROOT/tools/constraints.txt" -e "$ROOT[dev]"
  rm -f "$VENV"/.nml-deps-*
  touch "$stamp"
  log "dependencies installed in $((SECONDS - t0)) s"
else
  # from / so that the working directory's nml (a checkout) cannot shadow the installed one
  here="$(cd / && "$VENV/bin/python" -c 'import nml, os; print(os.path.dirname(os.path.dirname(nml.__file__)))' 2>/dev/null || true)"
  if [ "$here" != "$ROOT" ]; then
    log "linking nml to this checkout ($ROOT)"
    "$VENV/bin/python" -m pip install --quiet --no-deps -e "$ROOT"
  fi
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
log "ready: $VENV (activate with: source $VENV/bin/activate)"
