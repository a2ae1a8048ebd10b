#!/usr/bin/env bash
# ACDC end-diastole cine-MRI (labels RV, Myo, LV), 2-shot: our real-data experiment on CPU, not a paper row.
# Prepares ${DIFFATLAS_DATA:-outputs/data}/acdc_ed from the nnU-Net raw folder when it is missing, writes its
# splits (acdc_ed/splits/, outside git: patient data) when missing, then trains on the 2 training cases of
# split 2shot with training=cpu_acdc; checkpoints in Model/acdc_ed_2shot (env CHECKPOINT_DIR to change).
# Usage: bash training_scripts/train_ACDC_2shot.sh [RAW_DIR] [Hydra overrides ...]
#   RAW_DIR  nnU-Net raw folder with imagesTr/, labelsTr/, dataset.json (env ACDC_RAW; default
#            ../shared/data/ACDC_ED, relative to the repository root)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
leading_paths 1 "$@"
shift "$NUM_PATHS"
RAW="${PATHS[0]:-$(env_path "${ACDC_RAW:-}")}"
RAW="${RAW:-../shared/data/ACDC_ED}"
OUT_DIR="$(env_path "${CHECKPOINT_DIR:-}")"
prepare_acdc "$RAW" "$DATA_BASE/acdc_ed" "" 2shot
"${TRAIN[@]}" dataset=acdc_ed dataset.root="$DATA_BASE/acdc_ed" \
  dataset.splits_dir="$DATA_BASE/acdc_ed/splits" split=2shot training=cpu_acdc run_name=acdc_ed_2shot \
  checkpoint_dir="${OUT_DIR:-Model/acdc_ed_2shot}" "$@"
