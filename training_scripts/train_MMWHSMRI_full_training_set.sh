#!/usr/bin/env bash
# Table 1, MM-WHS MRI (full training set): train DiffAtlas on the 16 training cases of
# data/splits/mmwhs_mr/full.json (configs/experiment/mmwhs_mr_full.yaml).
# Usage: bash training_scripts/train_MMWHSMRI_full_training_set.sh [DATA_ROOT] [CHECKPOINT_DIR] [Hydra overrides ...]
#   DATA_ROOT       prepared mmwhs_mr folder (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/mmwhs_mr)
#   CHECKPOINT_DIR  checkpoints and TensorBoard logs (env CHECKPOINT_DIR; default Model/mmwhs_mr_full)
# Resumes from CHECKPOINT_DIR/checkpoint_last.pt when it exists. Env: PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
train_paper mmwhs_mr_full mmwhs_mr full train_MMWHSMRI_full_training_set.sh "$@"
