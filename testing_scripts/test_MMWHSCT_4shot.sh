#!/usr/bin/env bash
# Table 2, MM-WHS CT 4-shot: segment and score the 4 test cases of data/splits/mmwhs_ct/4shot.json (those of
# full.json) (configs/evaluation/mmwhs_ct_4shot.yaml; DDPM-300 sampling, the paper's). Prints the Dice/NSD
# table; the run (predictions, per_case.csv, summary.json, table.md) goes to
# outputs/test/mmwhs_ct_4shot/<date>/.
# Usage: bash testing_scripts/test_MMWHSCT_4shot.sh [DATA_ROOT] [CHECKPOINT] [Hydra overrides ...]
#   DATA_ROOT   prepared mmwhs_ct folder (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/mmwhs_ct)
#   CHECKPOINT  the model (env CHECKPOINT; default Model/mmwhs_ct_4shot/checkpoint_last.pt, made by
#               training_scripts/train_MMWHSCT_4shot.sh)
# Env: PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"
test_paper mmwhs_ct_4shot mmwhs_ct 4shot mmwhs_ct_4shot train_MMWHSCT_4shot.sh "$@"
