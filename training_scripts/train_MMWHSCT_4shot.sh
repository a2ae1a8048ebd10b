#!/usr/bin/env bash
# Table 2, MM-WHS CT 4-shot: train DiffAtlas on the 4 training cases of data/splits/mmwhs_ct/4shot.json
# (configs/experiment/mmwhs_ct_4shot.yaml).
# Usage: bash training_scripts/train_MMWHSCT_4shot.sh [DATA_ROOT] [CHECKPOINT_DIR] [Hydra overrides ...]
#   DATA_ROOT       prepared mmwhs_ct folder (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/mmwhs_ct)
#   CHECKPOINT_DIR  checkpoints and TensorBoard logs (env CHECKPOINT_DIR; default Model/mmwhs_ct_4shot)
# Resumes from CHECKPOINT_DIR/checkpoint_last.pt when it exists. Env: PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
train_paper mmwhs_ct_4shot mmwhs_ct 4shot train_MMWHSCT_4shot.sh "$@"
