#!/usr/bin/env bash
# Table 3, MM-WHS CT (all) -> MM-WHS MRI (all), zero-shot: segment and score all 20 MM-WHS MRI cases with the
# model trained on all MM-WHS CT cases (configs/evaluation/mmwhs_ct_all_to_mmwhs_mr_all.yaml; DDPM-300
# sampling, the paper's). Prints the Dice/NSD table; the run (predictions, per_case.csv, summary.json,
# table.md) goes to outputs/test/mmwhs_ct_all_to_mmwhs_mr_all/<date>/.
# Usage: bash testing_scripts/test_MMWHSMRI_all.sh [DATA_ROOT] [CHECKPOINT] [Hydra overrides ...]
#   DATA_ROOT   prepared mmwhs_mr folder (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/mmwhs_mr)
#   CHECKPOINT  the model (env CHECKPOINT; default Model/mmwhs_ct_all/checkpoint_last.pt, made by
#               training_scripts/train_MMWHSCT_all.sh)
# Env: PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"
test_paper mmwhs_ct_all_to_mmwhs_mr_all mmwhs_mr all mmwhs_ct_all train_MMWHSCT_all.sh "$@"
