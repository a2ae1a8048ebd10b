#!/usr/bin/env bash
# Table 3, source model of MM-WHS CT (all) -> MM-WHS MRI (all): train DiffAtlas on all 20 MM-WHS CT cases
# (configs/experiment/mmwhs_ct_all.yaml).
# Usage: bash training_scripts/train_MMWHSCT_all.sh [DATA_ROOT] [CHECKPOINT_DIR] [Hydra overrides ...]
#   DATA_ROOT       prepared mmwhs_ct folder (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/mmwhs_ct)
#   CHECKPOINT_DIR  checkpoints and TensorBoard logs (env CHECKPOINT_DIR; default Model/mmwhs_ct_all)
# Resumes from CHECKPOINT_DIR/checkpoint_last.pt when it exists. Env: PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
train_paper mmwhs_ct_all mmwhs_ct all train_MMWHSCT_all.sh "$@"
