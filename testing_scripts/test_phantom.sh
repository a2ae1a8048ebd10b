#!/usr/bin/env bash
# Segment the held-out CT phantoms with the CT-trained model and print the Dice/NSD table.
# Usage: bash testing_scripts/test_phantom.sh [extra Hydra overrides, e.g. sampler=ddim]
# Env: PYTHON, DIFFATLAS_DATA (default outputs/data), CHECKPOINT (default Model/phantom_ct/checkpoint_last.pt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
CKPT="${CHECKPOINT:-Model/phantom_ct/checkpoint_last.pt}"
if [ ! -f "$CKPT" ]; then
  echo "no checkpoint at $CKPT: run 'bash training_scripts/train_phantom.sh' first (or set CHECKPOINT)" >&2
  exit 1
fi
"$PY" -m diffatlas.test dataset=phantom_ct run_name=phantom_ct checkpoint="$CKPT" "$@"
