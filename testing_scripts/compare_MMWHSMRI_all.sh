#!/usr/bin/env bash
# Table 3, zero-shot MM-WHS CT (all) -> MM-WHS MRI (all). The paper's comparison, (a) ICF, (b) RBA, (c) ICMD and
# (d) DiffAtlas on the same cases (python -m diffatlas.compare experiment=mmwhs_ct_all). DiffAtlas resumes
# Model/mmwhs_ct_all/ (made by this row's training script; trained here when missing); the baselines are trained
# into Model/mmwhs_ct_all/<method>/ with the same steps, batch and accumulation. Prints the table; the run goes to
# outputs/compare/<run name>/<date>/.
# Usage: bash testing_scripts/compare_MMWHSMRI_all.sh [DATA_ROOT] [Hydra overrides ...]
#   e.g. methods=[rba,diffatlas] to run some of the methods
#   DATA_ROOT  the prepared test dataset (env DATA_ROOT; default ${DIFFATLAS_DATA:-outputs/data}/<dataset>)
# Env: SOURCE_ROOT (the prepared source dataset; default ${DIFFATLAS_DATA:-outputs/data}/<source>),
#      PYTHON (see training_scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"
compare_paper mmwhs_ct_all mmwhs_mr mmwhs_ct all -- "$@"
