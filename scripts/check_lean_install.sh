#!/usr/bin/env bash
# The library alone, for real: a fresh virtualenv (no system site-packages) gets `pip install .`
# without extras, imports asca_core from outside the checkout, trains one tiny epoch on the demo
# set with `asca train demo`, and cannot import streamlit, jupyterlab, plotly or ipywidgets.
#   scripts/check_lean_install.sh
# Downloads the core wheels (torch among them, several GB without a warm pip cache). Set
# PYTHON=/path/to/python3.11 to choose the interpreter, LOCK=FILE to hold that lock file (flock)
# around the training step, KEEP=1 to keep the temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
work=$(mktemp -d "${TMPDIR:-/tmp}/asca-lean.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
echo "lean install check in $work"

# the working tree's files (tracked and new, not ignored), so the build leaves nothing in the checkout
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do if [ -f "$f" ]; then printf '%s\0' "$f"; fi; done |
  tar --null -T - -cf - | tar -xf - -C "$work/src"

"$PYTHON" -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet --progress-bar off --upgrade pip
echo "pip install asca-workbench (no extras)"
"$py" -m pip install --quiet --progress-bar off "$work/src"

cd "$work"  # away from the checkout: asca_core must come from the virtualenv
"$py" -c 'import asca_core, sys; assert asca_core.__file__.startswith(sys.prefix), asca_core.__file__; print("imported", asca_core.__file__)'

absent=(streamlit jupyterlab plotly ipywidgets)
for module in "${absent[@]}"; do
  if "$py" -c "import $module" 2>/dev/null; then
    echo "FAIL: $module is installed by the core install" >&2
    exit 1
  fi
done
echo "absent as intended: ${absent[*]}"

lock=()
[ -n "${LOCK:-}" ] && lock=(flock "$LOCK")
echo "asca train demo (one tiny epoch)"
ASCA_CACHE_DIR="$work/cache" ASCA_RUNS_DIR="$work/runs" "${lock[@]}" "$work/venv/bin/asca" train demo \
  --run-dir "$work/run" --quiet \
  --set model.name=asca_pico --set features.n_mels=32 \
  --set features.clip_seconds=1.0 --set train.epochs=1 --set train.batch_size=16 --set train.num_threads=1

"$py" - "$work/run/status.json" <<'EOF'
import json, sys
status = json.load(open(sys.argv[1]))
assert status["state"] == "finished", status
print("run finished:", {k: status[k] for k in ("state", "epoch") if k in status})
EOF
echo "lean install check passed"
