#!/usr/bin/env bash
# Table 3, MM-WHS MRI (all) -> MM-WHS CT (all), zero-shot: segment and score all 20 MM-WHS CT cases with the
# model trained on all MM-WHS MRI cases (configs/evaluation/mmwhs_mr_all_to_mmwhs_ct_all.yaml; DDPM-300
# sampling, the paper's). Prints the Dice/NSD table; the run (predictions, per_case.csv, summary.json,
# table.md) goes to outputs/test/mmwhs_mr_all_to_mmwhs_ct_all/<date>/.
# Usage: bash testing_scripts/test_MMWHSCT_all.sh [DATA_ROOT] [CHECKPOINT] [Hydra overrides ...]
#   DATA_ROOT   prepared mmwhs_ct folder (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/mmwhs_ct)
#   CHECKPOINT  the model (env CHECKPOINT; default Model/mmwhs_mr_all/checkpoint_last.pt, made by
#               training_scripts/train_MMWHSMRI_all.sh)
# Env: PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"
test_paper mmwhs_mr_all_to_mmwhs_ct_all mmwhs_ct all mmwhs_mr_all train_MMWHSMRI_all.sh "$@"
