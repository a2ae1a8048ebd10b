# Shared by training_scripts/*.sh and testing_scripts/*.sh: sourced, never run on its own.
#
# Each paper script is one call:
#   train_paper <experiment> <dataset> <split> <script name> [DATA_ROOT] [CHECKPOINT_DIR] [Hydra overrides ...]
#   test_paper <evaluation> <dataset> <split> <training run> <training script> [DATA_ROOT] [CHECKPOINT] [overrides ...]
# The first two arguments after the fixed ones are paths unless they look like Hydra overrides (contain '=' or
# start with '-', '+' or '~'); an empty argument "" keeps the default. Relative paths given as arguments or in
# DATA_ROOT, CHECKPOINT and CHECKPOINT_DIR are taken from the directory the script is run in; everything
# else (defaults, DIFFATLAS_DATA) is relative to the repository root, where the commands run.
#
# Env: PYTHON (default .venv/bin/python, else python3), DIFFATLAS_DATA (prepared data, default outputs/data),
#      DATA_ROOT (a prepared dataset folder), CHECKPOINT_DIR (training output), CHECKPOINT (the .pt to test),
#      NPROC (training processes on this machine, default 1: one per GPU, or gloo processes on the CPU) and
#      TORCHRUN_ARGS (further torchrun options, e.g. for several machines; README, "Several GPUs").
set -euo pipefail
CALLER_DIR="$PWD"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo "$PWD/.venv/bin/python" || echo python3 )}"
DATA_BASE="${DIFFATLAS_DATA:-outputs/data}"
case "$DATA_BASE" in /*) ;; *) DATA_BASE="$PWD/$DATA_BASE" ;; esac   # printed commands work from anywhere
# TRAIN: the training command; with NPROC > 1 or TORCHRUN_ARGS it starts one process per GPU through torchrun.
NPROC="${NPROC:-1}"
TRAIN=("$PY" -m diffatlas.train)
if [ "$NPROC" != 1 ] || [ -n "${TORCHRUN_ARGS:-}" ]; then
  read -r -a TORCHRUN_EXTRA <<< "${TORCHRUN_ARGS:-}"
  TRAIN=("$PY" -m torch.distributed.run --nproc_per_node="$NPROC" ${TORCHRUN_EXTRA[@]+"${TORCHRUN_EXTRA[@]}"}
    -m diffatlas.train)
fi
OFFICIAL_DATA_URL="https://huggingface.co/datasets/YuheLiuu/DiffAtlas_Preprocessed_Data"

is_override() {
  case "$1" in
    *=* | -* | +* | ~*) return 0 ;;
    *) return 1 ;;
  esac
}

# from_caller <path>: a path given by the user, made absolute against the directory the script was run in.
from_caller() {
  case "$1" in
    /*) echo "$1" ;;
    *) echo "$CALLER_DIR/$1" ;;
  esac
}

die() {
  echo "error: $*" >&2
  exit 1
}

# ensure_ct_phantoms: make the synthetic CT phantoms (and data/splits/phantom_ct/full.json) when they are missing.
ensure_ct_phantoms() {
  [ -f "$DATA_BASE/phantom_ct/dataset.json" ] || "$PY" -m diffatlas.prepare phantom.modality=ct
}

# ensure_mr_test_phantoms: make the MR zero-shot test phantoms (test cases only, a seed of their own so their
# anatomy differs from the CT training cases; data/splits/phantom_mr/zeroshot.json) when they are missing.
ensure_mr_test_phantoms() {
  [ -f "$DATA_BASE/phantom_mr/dataset.json" ] || "$PY" -m diffatlas.prepare phantom.modality=mr \
    phantom.num_train=0 phantom.num_val=0 phantom.seed=1 split_name=zeroshot \
    split_file=data/splits/phantom_mr/zeroshot.json
}

# The quick CPU budget of the phantom comparisons: the same steps and batch for every trained method, and the
# checkpoints of the CT 2-shot comparison, which the zero-shot comparison reuses (resumed, not retrained).
PHANTOM_COMPARE_STEPS=1200
PHANTOM_COMPARE_MODELS="Model/compare_phantom_ct_2shot"
PHANTOM_COMPARE=(training.steps=$PHANTOM_COMPARE_STEPS
  checkpoint_dir=$PHANTOM_COMPARE_MODELS/diffatlas baselines.icf.out_dir=$PHANTOM_COMPARE_MODELS/icf
  baselines.icmd.out_dir=$PHANTOM_COMPARE_MODELS/icmd)

# raw_source_help <dataset>: where the raw data of a dataset comes from.
raw_source_help() {
  case "$1" in
    mmwhs_ct) echo "MM-WHS (CT: ct_train_1001..1020 images and labels), https://zmiclab.github.io/zxh/0/mmwhs/" ;;
    mmwhs_mr) echo "MM-WHS (MRI: mr_train_1001..1020 images and labels), https://zmiclab.github.io/zxh/0/mmwhs/" ;;
    totalsegmentator) echo "TotalSegmentator, https://zenodo.org/records/6802614" ;;
    *) echo "the $1 raw data" ;;
  esac
}

modality_of() {
  case "$1" in
    mmwhs_mr | acdc_ed) echo mr ;;
    *) echo ct ;;
  esac
}

# require_prepared <dataset> <folder>: stop with instructions when <folder>/dataset.json is missing.
require_prepared() {
  local dataset="$1" root="$2"
  [ -f "$root/dataset.json" ] && return 0
  {
    echo "error: no prepared $dataset data at $root ($root/dataset.json is missing)."
    echo "  1. Get the raw data: $(raw_source_help "$dataset")"
    echo "     or the official preprocessed data: $OFFICIAL_DATA_URL"
    echo "  2. Prepare it:"
    echo "     $PY -m diffatlas.prepare source=$dataset raw_dir=<raw folder> out_dir=$root"
    echo "     (the official preprocessed data, unzipped: source=official source.name=$dataset" \
      "source.modality=$(modality_of "$dataset") instead of source=$dataset)"
    echo "  Or pass a prepared folder as the first argument (or DATA_ROOT=<folder>)."
  } >&2
  exit 1
}

# ensure_splits <dataset> <data root> <split> [extra splits-command overrides]: the committed split files
# (data/splits/<dataset>/) are used as they are; missing ones (TotalSegmentator, whose cases are only known once
# it is prepared) are written from the prepared data with the splits command.
ensure_splits() {
  local dataset="$1" root="$2" split="$3"
  shift 3
  [ -f "data/splits/$dataset/$split.json" ] && return 0
  echo "no data/splits/$dataset/$split.json yet: writing the $dataset splits from $root" >&2
  "$PY" -m diffatlas.splits dataset="$dataset" dataset.root="$root" "$@"
}

# leading_paths <max> <args ...>: the first (up to <max>) arguments that are not Hydra overrides, made absolute
# against the directory the script was run in ("" stays empty), in PATHS; how many were taken in NUM_PATHS.
leading_paths() {
  local max="$1"
  shift
  PATHS=("" "")
  NUM_PATHS=0
  while [ "$NUM_PATHS" -lt "$max" ] && [ $# -gt 0 ] && ! is_override "$1"; do
    [ -n "$1" ] && PATHS[NUM_PATHS]="$(from_caller "$1")"
    NUM_PATHS=$((NUM_PATHS + 1))
    shift
  done
}

# env_path <value>: a path from an environment variable, made absolute against the caller's directory ("" stays).
env_path() {
  [ -n "$1" ] && from_caller "$1" || true
}

train_paper() {
  local experiment="$1" dataset="$2" split="$3"
  shift 4
  leading_paths 2 "$@"
  shift "$NUM_PATHS"
  local data="${PATHS[0]:-$(env_path "${DATA_ROOT:-}")}" out="${PATHS[1]:-$(env_path "${CHECKPOINT_DIR:-}")}"
  data="${data:-$DATA_BASE/$dataset}"
  out="${out:-Model/$experiment}"
  require_prepared "$dataset" "$data"
  ensure_splits "$dataset" "$data" "$split"
  "${TRAIN[@]}" experiment="$experiment" dataset.root="$data" checkpoint_dir="$out" "$@"
}

test_paper() {
  local evaluation="$1" dataset="$2" split="$3" run="$4" train_script="$5"
  shift 5
  leading_paths 2 "$@"
  shift "$NUM_PATHS"
  local data="${PATHS[0]:-$(env_path "${DATA_ROOT:-}")}" ckpt="${PATHS[1]:-$(env_path "${CHECKPOINT:-}")}"
  data="${data:-$DATA_BASE/$dataset}"
  ckpt="${ckpt:-Model/$run/checkpoint_last.pt}"
  require_prepared "$dataset" "$data"
  [ -f "$ckpt" ] || die "no checkpoint at $ckpt: train it with 'bash training_scripts/$train_script'" \
    "(or pass a checkpoint as the second argument, or CHECKPOINT=<file>)"
  ensure_splits "$dataset" "$data" "$split"
  "$PY" -m diffatlas.test evaluation="$evaluation" dataset.root="$data" checkpoint="$ckpt" "$@"
}

# prepare_acdc <raw folder> <out folder> <name> <split> [extra splits-command overrides]: prepare an nnU-Net raw
# ACDC-like folder (labels RV, Myo, LV) when <out>/dataset.json is missing (named <name>; "" keeps the source's
# name), then write its splits into <out>/splits/ (outside git: ACDC is patient data) when <split>.json is missing.
# Crop protocol: the paper's (a cube around the labelled structures plus 10 mm), on the grid ACDC_SHAPE
# (default [32,32,32], a CPU-sized grid; [64,64,64] is the paper's).
ACDC_SHAPE="${ACDC_SHAPE:-[32,32,32]}"
prepare_acdc() {
  local raw="$1" out="$2" name="$3" split="$4"
  shift 4
  local named=()
  [ -n "$name" ] && named=("name=$name")
  if [ ! -f "$out/dataset.json" ]; then
    [ -d "$raw" ] || die "no prepared data at $out and no raw nnU-Net folder at $raw: pass the folder holding" \
      "imagesTr/, labelsTr/ and dataset.json (or set ACDC_RAW); it is then prepared with" \
      "'$PY -m diffatlas.prepare source=acdc_ed raw_dir=<folder> out_dir=$out ${named[*]}'"
    "$PY" -m diffatlas.prepare source=acdc_ed raw_dir="$raw" out_dir="$out" shape="$ACDC_SHAPE" "${named[@]}"
  fi
  if [ ! -f "$out/splits/$split.json" ]; then
    "$PY" -m diffatlas.splits dataset=acdc_ed dataset.root="$out" dataset.splits_dir="$out/splits" "$@"
  fi
}

# compare_paper <experiment> <dataset> [<source dataset> <source split>] -- [DATA_ROOT] [Hydra overrides ...]:
# the paper's four-row comparison (ICF, RBA, ICMD, DiffAtlas) for one table row. DiffAtlas resumes the training
# script's checkpoints in Model/<experiment>/ (trained there when missing); the trained baselines go to
# Model/<experiment>/<method>/ with the same budget. A zero-shot row names the source dataset and split: the
# methods are fitted on its training cases (prepared data in $DATA_BASE/<source> or SOURCE_ROOT) and scored
# on every case of <dataset>.
compare_paper() {
  local experiment="$1" dataset="$2" source="" source_split=""
  shift 2
  if [ "$1" != "--" ]; then
    source="$1" source_split="$2"
    shift 2
  fi
  shift
  leading_paths 1 "$@"
  shift "$NUM_PATHS"
  local data="${PATHS[0]:-$(env_path "${DATA_ROOT:-}")}"
  data="${data:-$DATA_BASE/$dataset}"
  require_prepared "$dataset" "$data"
  local zero_shot=()
  if [ -n "$source" ]; then
    local source_root
    source_root="$(env_path "${SOURCE_ROOT:-}")"
    source_root="${source_root:-$DATA_BASE/$source}"
    require_prepared "$source" "$source_root"
    ensure_splits "$source" "$source_root" "$source_split"
    ensure_splits "$dataset" "$data" all
    zero_shot=(dataset="$dataset" split=all dataset@train_dataset="$source" train_dataset.root="$source_root"
      train_split_file="data/splits/$source/$source_split.json" run_name="${experiment}_to_${dataset}_all"
      checkpoint_dir="Model/$experiment" baselines.icf.out_dir="Model/$experiment/icf"
      baselines.icmd.out_dir="Model/$experiment/icmd")
  fi
  "$PY" -m diffatlas.compare experiment="$experiment" dataset.root="$data" "${zero_shot[@]}" "$@"
}

# compare_acdc <split> [RAW_DIR] [Hydra overrides ...]: the comparison on ACDC end-diastole (prepared on the
# ACDC_SHAPE grid from the nnU-Net raw folder when missing; default ../shared/data/ACDC_ED): ICF, RBA, ICMD and
# DiffAtlas fitted on the split's training cases with one training budget and one augmentation (training=cpu_acdc
# cut to ACDC_COMPARE_STEPS steps so that the three trained methods fit a 2-core CPU, and the augment config),
# plus the mean-atlas and nearest-atlas sanity rows. Checkpoints in Model/compare_acdc_ed_<split>/ (resumed by a
# second run); the table in outputs/compare/compare_acdc_ed_<split>/.
ACDC_COMPARE_STEPS="${ACDC_COMPARE_STEPS:-400}"
compare_acdc() {
  local split="$1"
  shift
  leading_paths 1 "$@"
  shift "$NUM_PATHS"
  local raw="${PATHS[0]:-$(env_path "${ACDC_RAW:-}")}"
  raw="${raw:-../shared/data/ACDC_ED}"
  local data="$DATA_BASE/acdc_ed"
  prepare_acdc "$raw" "$data" "" "$split"
  "$PY" -m diffatlas.compare dataset=acdc_ed dataset.root="$data" dataset.splits_dir="$data/splits" split="$split" \
    training=cpu_acdc training.steps="$ACDC_COMPARE_STEPS" "methods=[icf,rba,icmd,diffatlas,mean_atlas,nearest_atlas]" \
    "$@"
}
