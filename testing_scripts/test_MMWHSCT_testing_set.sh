#!/usr/bin/env bash
# Table 1, MM-WHS CT (full training set): segment and score the 4 test cases of data/splits/mmwhs_ct/full.json
# (configs/evaluation/mmwhs_ct_full.yaml; DDPM-300 sampling, the paper's). Prints the Dice/NSD table; the run
# (predictions, per_case.csv, summary.json, table.md) goes to outputs/test/mmwhs_ct_full/<date>/.
# Usage: bash testing_scripts/test_MMWHSCT_testing_set.sh [DATA_ROOT] [CHECKPOINT] [Hydra overrides ...]
#   DATA_ROOT   prepared mmwhs_ct folder (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/mmwhs_ct)
#   CHECKPOINT  the model (env CHECKPOINT; default Model/mmwhs_ct_full/checkpoint_last.pt, made by
#               training_scripts/train_MMWHSCT_full_training_set.sh)
# Env: PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"
test_paper mmwhs_ct_full mmwhs_ct full mmwhs_ct_full train_MMWHSCT_full_training_set.sh "$@"
