#!/usr/bin/env bash
# Zero-shot cross-modality: the CT-trained phantom model segments MR phantoms it never saw.
# Usage: bash testing_scripts/test_phantom_zeroshot.sh [extra Hydra overrides]
# Env: PYTHON, DIFFATLAS_DATA (default outputs/data), CHECKPOINT (default Model/phantom_ct/checkpoint_last.pt).
# The MR phantoms form a test-only split, data/splits/phantom_mr/zeroshot.json (split=zeroshot).
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"
CKPT="$(env_path "${CHECKPOINT:-}")"
CKPT="${CKPT:-Model/phantom_ct/checkpoint_last.pt}"
[ -f "$CKPT" ] || die "no checkpoint at $CKPT: run 'bash training_scripts/train_phantom.sh' first (or set CHECKPOINT)"
ensure_mr_test_phantoms
"$PY" -m diffatlas.test dataset=phantom_mr split=zeroshot run_name=phantom_ct_to_mr checkpoint="$CKPT" "$@"
