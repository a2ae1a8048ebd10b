#!/usr/bin/env bash
# The paper's comparison, zero-shot across modalities on phantoms: (a) ICF, (b) RBA, (c) ICMD and (d) DiffAtlas
# fitted on the 2 CT training phantoms of testing_scripts/compare_phantom.sh (the same budget, and the same
# checkpoints when that script ran first: they are resumed, not retrained) and scored on the 10 MR test phantoms
# of the zero-shot split (their own seed, so their anatomy differs too). RBA registers the CT atlases to the MR
# scans with Mattes mutual information. Makes the phantoms when they are missing; prints the table and writes it
# to outputs/compare/compare_phantom_ct_2shot_to_mr/<date>/table.md.
# Usage: bash testing_scripts/compare_phantom_zeroshot.sh [Hydra overrides ...]
# Env: PYTHON (default .venv/bin/python, else python3), DIFFATLAS_DATA (default outputs/data).
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"
ensure_ct_phantoms
ensure_mr_test_phantoms
"$PY" -m diffatlas.compare dataset=phantom_mr split=zeroshot dataset@train_dataset=phantom_ct \
  train_split_file=data/splits/phantom_ct/2shot.json run_name=compare_phantom_ct_2shot_to_mr \
  "${PHANTOM_COMPARE[@]}" "$@"
