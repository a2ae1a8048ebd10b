#!/usr/bin/env bash
# Table 3, TotalSegmentator -> MM-WHS MRI (all), zero-shot: segment and score all 20 MM-WHS MRI cases with the
# TotalSegmentator model (configs/evaluation/ts_full_to_mmwhs_mr_all.yaml; DDPM-300 sampling, the paper's).
# Prints the Dice/NSD table; the run (predictions, per_case.csv, summary.json, table.md) goes to
# outputs/test/ts_full_to_mmwhs_mr_all/<date>/.
# Usage: bash testing_scripts/test_MMWHSMRI_all_train_TotalSegmentator.sh [DATA_ROOT] [CHECKPOINT] [Hydra overrides ...]
#   DATA_ROOT   prepared mmwhs_mr folder (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/mmwhs_mr)
#   CHECKPOINT  the model (env CHECKPOINT; default Model/ts_full/checkpoint_last.pt, made by
#               training_scripts/train_TotalSegmentator.sh)
# Env: PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"
test_paper ts_full_to_mmwhs_mr_all mmwhs_mr all ts_full train_TotalSegmentator.sh "$@"
