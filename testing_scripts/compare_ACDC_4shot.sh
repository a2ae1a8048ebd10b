#!/usr/bin/env bash
# ACDC end-diastole cine MRI, 4-shot, on the 32^3 CPU grid: ICF, RBA, ICMD and DiffAtlas fitted on the same 4
# training cases (one training budget, training=cpu_acdc, and one augmentation for every trained method), scored
# on the same 20 test cases, with the mean-atlas and nearest-atlas sanity rows. Prepares the nnU-Net raw folder
# and its splits when missing (outside git: patient data). Prints the table and writes it (table.md,
# summary.json, each method's predictions and reports) to outputs/compare/compare_acdc_ed_4shot/<date>/;
# checkpoints in Model/compare_acdc_ed_4shot/ (a second run resumes them).
# Usage: bash testing_scripts/compare_ACDC_4shot.sh [RAW_DIR] [Hydra overrides ...]
#   RAW_DIR  nnU-Net raw folder with imagesTr/, labelsTr/, dataset.json (env ACDC_RAW; default
#            ../shared/data/ACDC_ED)
# Env: PYTHON, DIFFATLAS_DATA (default outputs/data).
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"
compare_acdc 4shot "$@"
