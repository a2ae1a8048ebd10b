#!/usr/bin/env bash
# ACDC end-diastole, 2-shot model (training_scripts/train_ACDC_2shot.sh): segment and score the test cases of
# acdc_ed split 2shot or, when UNSEEN_RAW_DIR is given, every case of that second nnU-Net raw folder (unseen
# cases with the same labels, prepared into ${DIFFATLAS_DATA:-outputs/data}/acdc_ed_unseen, split all).
# Samples with DDIM-50 by default (sampler=ddpm for the paper's DDPM-300).
# Usage: bash testing_scripts/test_ACDC_2shot.sh [RAW_DIR] [UNSEEN_RAW_DIR] [Hydra overrides ...]
#   RAW_DIR         nnU-Net raw folder of ACDC ED (env ACDC_RAW; default ../shared/data/ACDC_ED), prepared
#                   into ${DIFFATLAS_DATA:-outputs/data}/acdc_ed when that is missing
#   UNSEEN_RAW_DIR  optional; prepared (when missing) and tested instead of the acdc_ed test cases
# Env: CHECKPOINT (default Model/acdc_ed_2shot/checkpoint_last.pt), PYTHON.
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"
leading_paths 2 "$@"
shift "$NUM_PATHS"
RAW="${PATHS[0]:-$(env_path "${ACDC_RAW:-}")}"
RAW="${RAW:-../shared/data/ACDC_ED}"
UNSEEN="${PATHS[1]}"
CKPT="$(env_path "${CHECKPOINT:-}")"
CKPT="${CKPT:-Model/acdc_ed_2shot/checkpoint_last.pt}"
[ -f "$CKPT" ] || die "no checkpoint at $CKPT: train it with 'bash training_scripts/train_ACDC_2shot.sh'" \
  "(or set CHECKPOINT=<file>)"
SAMPLER=(sampler=ddim sampler.num_steps=50)
if [ -n "$UNSEEN" ]; then
  DATA="$DATA_BASE/acdc_ed_unseen"
  prepare_acdc "$UNSEEN" "$DATA" acdc_ed_unseen all "shots=[]"
  "$PY" -m diffatlas.test dataset=acdc_ed dataset.root="$DATA" dataset.splits_dir="$DATA/splits" split=all \
    run_name=acdc_ed_2shot_to_unseen checkpoint="$CKPT" "${SAMPLER[@]}" "$@"
else
  DATA="$DATA_BASE/acdc_ed"
  prepare_acdc "$RAW" "$DATA" "" 2shot
  "$PY" -m diffatlas.test dataset=acdc_ed dataset.root="$DATA" dataset.splits_dir="$DATA/splits" split=2shot \
    run_name=acdc_ed_2shot checkpoint="$CKPT" "${SAMPLER[@]}" "$@"
fi
