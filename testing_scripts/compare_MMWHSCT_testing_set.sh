#!/usr/bin/env bash
# Table 1, MM-WHS CT, full training set (16 train / 4 test). The paper's comparison, (a) ICF, (b) RBA, (c) ICMD
# and (d) DiffAtlas on the same cases (python -m diffatlas.compare experiment=mmwhs_ct_full). DiffAtlas resumes
# Model/mmwhs_ct_full/ (made by this row's training script; trained here when missing); the baselines are trained
# into Model/mmwhs_ct_full/<method>/ with the same steps, batch and accumulation. Prints the table; the run goes
# to outputs/compare/<run name>/<date>/.
# Usage: bash testing_scripts/compare_MMWHSCT_testing_set.sh [DATA_ROOT] [Hydra overrides ...]
#   e.g. methods=[rba,diffatlas] to run some of the methods
#   DATA_ROOT  the prepared test dataset (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/<dataset>)
# Env: PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"
compare_paper mmwhs_ct_full mmwhs_ct -- "$@"
