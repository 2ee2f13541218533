#!/usr/bin/env bash
# Create the virtualenv and install ASCA Workbench into it (idempotent, fast when up to date).
#   scripts/setup.sh          the library, the app and the notebooks: .[app,notebooks]
#   scripts/setup.sh test     everything the test suite and lint need: .[test] (a superset of
#                             the above) and Debian's chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
want=${1:-app}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "ASCA Workbench needs Python 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi

case "$want" in
  app) extras="[app,notebooks]" ;;  # the app links to the notebooks
  test) extras="[test]" ;;
  *) echo "usage: scripts/setup.sh [app|test]" >&2; exit 2 ;;
esac
stamp="$VENV/.installed-${want}"
current() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ]; }  # installed since pyproject.toml changed
if ! current "$stamp" && ! { [ "$want" = app ] && current "$VENV/.installed-test"; }; then
  echo "installing asca-workbench$extras into $VENV (first time: a few minutes, about 6 GB)"
  "$VENV/bin/python" -m pip install --quiet --progress-bar off -e ".$extras"
  touch "$stamp"
fi

if [ "$want" = test ] && ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
