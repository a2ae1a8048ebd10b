#!/usr/bin/env bash
# Table 3, source model of MM-WHS MRI (all) -> MM-WHS CT (all): train DiffAtlas on all 20 MM-WHS MRI cases
# (configs/experiment/mmwhs_mr_all.yaml).
# Usage: bash training_scripts/train_MMWHSMRI_all.sh [DATA_ROOT] [CHECKPOINT_DIR] [Hydra overrides ...]
#   DATA_ROOT       prepared mmwhs_mr folder (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/mmwhs_mr)
#   CHECKPOINT_DIR  checkpoints and TensorBoard logs (env CHECKPOINT_DIR; default Model/mmwhs_mr_all)
# Resumes from CHECKPOINT_DIR/checkpoint_last.pt when it exists. Env: PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
train_paper mmwhs_mr_all mmwhs_mr all train_MMWHSMRI_all.sh "$@"
