#!/usr/bin/env bash
# Segment new scans with a trained checkpoint: no label, no preparation step.
# Usage: bash testing_scripts/segment.sh CHECKPOINT INPUT OUTPUT [Hydra overrides ...]
#   CHECKPOINT  a checkpoint_*.pt written by python -m diffatlas.train (e.g. Model/phantom_ct/checkpoint_last.pt),
#               or an ICF or ICMD one written by python -m diffatlas.compare (Model/<run>/icf/checkpoint_last.pt)
#   INPUT       a scan (NIfTI, NRRD, MHA), a DICOM series folder, or a folder of them
#   OUTPUT      folder for <scan name>.nii.gz (the scan's geometry), report.html, volumes.csv and qc/*.png
# Samples with DDIM-10 and finds the heart without a label (inference.roi=auto); e.g. sampler.num_steps=50,
# inference.ensemble_size=3 (uncertainty maps), inference.roi=whole, inference.roi=box inference.box_file=<json>,
# inference.postprocess.fill_holes=[LV].
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"
[ $# -ge 3 ] || die "usage: bash testing_scripts/segment.sh CHECKPOINT INPUT OUTPUT [Hydra overrides ...]"
CKPT="$(from_caller "$1")"
INPUT="$(from_caller "$2")"
OUTPUT="$(from_caller "$3")"
shift 3
[ -f "$CKPT" ] || die "no checkpoint at $CKPT: train one first (e.g. make demo, or a script in training_scripts/)"
[ -e "$INPUT" ] || die "no scan or folder at $INPUT"
"$PY" -m diffatlas.segment checkpoint="$CKPT" input="$INPUT" output="$OUTPUT" sampler=ddim sampler.num_steps=10 "$@"
