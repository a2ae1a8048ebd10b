#!/usr/bin/env bash
# Zero-shot cross-modality: the CT-trained phantom model segments MR phantoms it never saw.
# Usage: bash testing_scripts/test_phantom_zeroshot.sh [extra Hydra overrides]
# Env: PYTHON, DIFFATLAS_DATA (default outputs/data), CHECKPOINT (default Model/phantom_ct/checkpoint_last.pt).
# The MR phantoms form a test-only split, data/splits/phantom_mr/zeroshot.json (split=zeroshot).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
DATA="${DIFFATLAS_DATA:-outputs/data}"
CKPT="${CHECKPOINT:-Model/phantom_ct/checkpoint_last.pt}"
if [ ! -f "$CKPT" ]; then
  echo "no checkpoint at $CKPT: run 'bash training_scripts/train_phantom.sh' first (or set CHECKPOINT)" >&2
  exit 1
fi
if [ ! -f "$DATA/phantom_mr/dataset.json" ]; then
  # MR test phantoms only, with a seed of their own so their anatomy differs from the CT training cases
  "$PY" -m diffatlas.prepare phantom.modality=mr phantom.num_train=0 phantom.num_val=0 phantom.seed=1 \
    split_name=zeroshot split_file=data/splits/phantom_mr/zeroshot.json
fi
"$PY" -m diffatlas.test dataset=phantom_mr split=zeroshot run_name=phantom_ct_to_mr checkpoint="$CKPT" "$@"
