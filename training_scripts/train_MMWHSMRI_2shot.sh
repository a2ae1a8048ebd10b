#!/usr/bin/env bash
# Table 2, MM-WHS MRI 2-shot: train DiffAtlas on the 2 training cases of data/splits/mmwhs_mr/2shot.json
# (configs/experiment/mmwhs_mr_2shot.yaml).
# Usage: bash training_scripts/train_MMWHSMRI_2shot.sh [DATA_ROOT] [CHECKPOINT_DIR] [Hydra overrides ...]
#   DATA_ROOT       prepared mmwhs_mr folder (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/mmwhs_mr)
#   CHECKPOINT_DIR  checkpoints and TensorBoard logs (env CHECKPOINT_DIR; default Model/mmwhs_mr_2shot)
# Resumes from CHECKPOINT_DIR/checkpoint_last.pt when it exists. Env: PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
train_paper mmwhs_mr_2shot mmwhs_mr 2shot train_MMWHSMRI_2shot.sh "$@"
