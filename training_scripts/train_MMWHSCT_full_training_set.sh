#!/usr/bin/env bash
# Table 1, MM-WHS CT (full training set): train DiffAtlas on the 16 training cases of
# data/splits/mmwhs_ct/full.json (configs/experiment/mmwhs_ct_full.yaml).
# Usage: bash training_scripts/train_MMWHSCT_full_training_set.sh [DATA_ROOT] [CHECKPOINT_DIR] [Hydra overrides ...]
#   DATA_ROOT       prepared mmwhs_ct folder (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/mmwhs_ct)
#   CHECKPOINT_DIR  checkpoints and TensorBoard logs (env CHECKPOINT_DIR; default Model/mmwhs_ct_full)
# Resumes from CHECKPOINT_DIR/checkpoint_last.pt when it exists. Env: PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
train_paper mmwhs_ct_full mmwhs_ct full train_MMWHSCT_full_training_set.sh "$@"
