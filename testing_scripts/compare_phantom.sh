#!/usr/bin/env bash
# The paper's comparison on CT phantoms, 2-shot, with a quick CPU configuration: (a) ICF, (b) RBA, (c) ICMD and
# (d) DiffAtlas fitted on the same 2 training phantoms and scored on the same 10 test phantoms. The three trained
# methods get the same budget (1,200 steps of batch 4, unet_small-sized networks, the phantom SDF encoding);
# RBA uses every training case as an atlas. Makes the CT phantoms when they are missing; prints the table and
# writes it (table.md, summary.json, each method's predictions and reports) to
# outputs/compare/compare_phantom_ct_2shot/<date>/. Checkpoints: Model/compare_phantom_ct_2shot/ (a second run
# resumes them instead of training again).
# Usage: bash testing_scripts/compare_phantom.sh [Hydra overrides ...]   e.g. methods=[rba,diffatlas]
# Env: PYTHON (default .venv/bin/python, else python3), DIFFATLAS_DATA (default outputs/data).
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"
ensure_ct_phantoms
"$PY" -m diffatlas.compare dataset=phantom_ct split=2shot "${PHANTOM_COMPARE[@]}" "$@"
