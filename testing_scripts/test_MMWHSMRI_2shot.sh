#!/usr/bin/env bash
# Table 2, MM-WHS MRI 2-shot: segment and score the 4 test cases of data/splits/mmwhs_mr/2shot.json (those of
# full.json) (configs/evaluation/mmwhs_mr_2shot.yaml; DDPM-300 sampling, the paper's). Prints the Dice/NSD
# table; the run (predictions, per_case.csv, summary.json, table.md) goes to
# outputs/test/mmwhs_mr_2shot/<date>/.
# Usage: bash testing_scripts/test_MMWHSMRI_2shot.sh [DATA_ROOT] [CHECKPOINT] [Hydra overrides ...]
#   DATA_ROOT   prepared mmwhs_mr folder (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/mmwhs_mr)
#   CHECKPOINT  the model (env CHECKPOINT; default Model/mmwhs_mr_2shot/checkpoint_last.pt, made by
#               training_scripts/train_MMWHSMRI_2shot.sh)
# Env: PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"
test_paper mmwhs_mr_2shot mmwhs_mr 2shot mmwhs_mr_2shot train_MMWHSMRI_2shot.sh "$@"
