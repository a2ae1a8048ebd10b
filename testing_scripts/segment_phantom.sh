#!/usr/bin/env bash
# The segment command on unlabelled phantom scans: writes the 10 held-out CT test phantoms as raw scans (HU, no
# labels) into ${DIFFATLAS_DATA:-outputs/data}/phantom_ct_raw when missing, then runs testing_scripts/segment.sh
# with the demo checkpoint (make demo) into OUTPUT (default outputs/segment/phantom_ct).
# Usage: bash testing_scripts/segment_phantom.sh [OUTPUT] [Hydra overrides ...]   Env: CHECKPOINT, PYTHON.
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"
leading_paths 1 "$@"
shift "$NUM_PATHS"
OUTPUT="${PATHS[0]:-outputs/segment/phantom_ct}"
CKPT="$(env_path "${CHECKPOINT:-}")"
CKPT="${CKPT:-Model/phantom_ct/checkpoint_last.pt}"
RAW="$DATA_BASE/phantom_ct_raw"
[ -f "$CKPT" ] || die "no checkpoint at $CKPT: run 'make demo' (or set CHECKPOINT=<file>)"
[ -d "$RAW" ] || "$PY" -m diffatlas.prepare phantom.modality=ct out_dir="$RAW" raw_scans=true
bash testing_scripts/segment.sh "$CKPT" "$RAW" "$OUTPUT" "$@"
