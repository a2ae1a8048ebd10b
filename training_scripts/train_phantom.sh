#!/usr/bin/env bash
# Make CT heart phantoms (if missing) and train DiffAtlas on them with the CPU demo recipe.
# Usage: bash training_scripts/train_phantom.sh [extra Hydra overrides]
# Env: PYTHON (default .venv/bin/python or python3), DIFFATLAS_DATA (default outputs/data).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_ct_phantoms
"${TRAIN[@]}" dataset=phantom_ct run_name=phantom_ct "$@"
