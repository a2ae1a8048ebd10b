#!/usr/bin/env bash
# Table 2, MM-WHS MRI 4-shot: train DiffAtlas on the 4 training cases of data/splits/mmwhs_mr/4shot.json
# (configs/experiment/mmwhs_mr_4shot.yaml).
# Usage: bash training_scripts/train_MMWHSMRI_4shot.sh [DATA_ROOT] [CHECKPOINT_DIR] [Hydra overrides ...]
#   DATA_ROOT       prepared mmwhs_mr folder (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/mmwhs_mr)
#   CHECKPOINT_DIR  checkpoints and TensorBoard logs (env CHECKPOINT_DIR; default Model/mmwhs_mr_4shot)
# Resumes from CHECKPOINT_DIR/checkpoint_last.pt when it exists. Env: PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
train_paper mmwhs_mr_4shot mmwhs_mr 4shot train_MMWHSMRI_4shot.sh "$@"
