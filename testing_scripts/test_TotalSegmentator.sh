#!/usr/bin/env bash
# Table 1, TotalSegmentator (full training set): segment and score the test cases of
# data/splits/totalsegmentator/full.json (configs/evaluation/ts_full.yaml; DDPM-300 sampling, the paper's).
# Prints the Dice/NSD table; the run (predictions, per_case.csv, summary.json, table.md) goes to
# outputs/test/ts_full/<date>/.
# Usage: bash testing_scripts/test_TotalSegmentator.sh [DATA_ROOT] [CHECKPOINT] [Hydra overrides ...]
#   DATA_ROOT   prepared totalsegmentator folder (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/totalsegmentator)
#   CHECKPOINT  the model (env CHECKPOINT; default Model/ts_full/checkpoint_last.pt, made by
#               training_scripts/train_TotalSegmentator.sh)
# Env: PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"
test_paper ts_full totalsegmentator full ts_full train_TotalSegmentator.sh "$@"
