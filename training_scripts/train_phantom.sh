#!/usr/bin/env bash
# Make CT heart phantoms (if missing) and train DiffAtlas on them with the CPU demo recipe.
# Usage: bash training_scripts/train_phantom.sh [extra Hydra overrides]
# Env: PYTHON (default .venv/bin/python or python3), DIFFATLAS_DATA (default outputs/data).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
DATA="${DIFFATLAS_DATA:-outputs/data}"
if [ ! -f "$DATA/phantom_ct/dataset.json" ]; then
  "$PY" -m diffatlas.prepare phantom.modality=ct
fi
"$PY" -m diffatlas.train dataset=phantom_ct run_name=phantom_ct "$@"
