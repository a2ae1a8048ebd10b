#!/usr/bin/env bash
# Table 1, TotalSegmentator (full training set); also the source model of Table 3, TotalSegmentator -> MM-WHS
# MRI: train DiffAtlas on the training cases of data/splits/totalsegmentator/full.json (written from the
# prepared data when missing), 50k steps (configs/experiment/ts_full.yaml).
# Usage: bash training_scripts/train_TotalSegmentator.sh [DATA_ROOT] [CHECKPOINT_DIR] [Hydra overrides ...]
#   DATA_ROOT       prepared totalsegmentator folder (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/totalsegmentator)
#   CHECKPOINT_DIR  checkpoints and TensorBoard logs (env CHECKPOINT_DIR; default Model/ts_full)
# Resumes from CHECKPOINT_DIR/checkpoint_last.pt when it exists. Env: PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
train_paper ts_full totalsegmentator full train_TotalSegmentator.sh "$@"
