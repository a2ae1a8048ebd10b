#!/usr/bin/env bash
# One check of a GPU machine, about 8 minutes on one GPU: the environment, benchmarks/trainer.py, then a 64^3
# DiffAtlas run on CT phantoms with model=unet_base training=paper for a fixed number of steps, killed
# half-way and resumed, and tested with DDIM-50. Ends with one summary table.
#
# Usage: bash benchmarks/gpu_check.sh            (device=auto: the GPU when there is one)
#        QUICK=1 bash benchmarks/gpu_check.sh    (16^3 phantoms, unet_small, 20 steps: a CPU run of a few minutes)
# Env: PYTHON (default .venv/bin/python, else python3), OUT (default outputs/gpu_check, emptied first),
#      STEPS (training steps, default 400; QUICK: 20), DEVICE (default auto).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo "$PWD/.venv/bin/python" || echo python3 )}"
OUT="${OUT:-outputs/gpu_check}"
DEVICE="${DEVICE:-auto}"
if [ "${QUICK:-0}" = 1 ]; then
  STEPS="${STEPS:-20}"
  PHANTOMS=(phantom.shape=[16,16,16] phantom.num_train=4 phantom.num_test=2)
  TRAIN=(model=unet_small training=cpu_demo training.batch_size=2 training.val_every=0)
  BENCH=(--quick --threads 1)
  TEST=(sampler.num_steps=50 batch_size=2)
else
  STEPS="${STEPS:-400}"
  PHANTOMS=(phantom.shape=[64,64,64] phantom.num_train=16 phantom.num_test=6)
  TRAIN=(model=unet_base training=paper training.val_every=0)
  BENCH=(--variants plain channels_last compile)
  TEST=(sampler.num_steps=50 batch_size=6)
fi
HALF=$((STEPS / 2))
rm -rf "$OUT"
mkdir -p "$OUT"
START=$SECONDS

echo "== environment"
"$PY" - <<'EOF' | tee "$OUT/environment.txt"
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA build {torch.version.cuda}")
print(f"CUDA available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}")
print(f"bf16 supported: {torch.cuda.is_available() and torch.cuda.is_bf16_supported()}")
print(f"CPU threads: {torch.get_num_threads()}, machine {platform.machine()}")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$OUT/environment.txt"

echo "== trainer benchmark"
"$PY" benchmarks/trainer.py --device "$DEVICE" --json "$OUT/trainer.json" "${BENCH[@]}" | tee "$OUT/trainer.md"

echo "== CT phantoms"
DATA="$OUT/data/phantom_ct"
SPLIT="$OUT/splits/full.json"
"$PY" -m diffatlas.prepare phantom.modality=ct phantom.num_val=0 "${PHANTOMS[@]}" out_dir="$DATA" \
  split_file="$SPLIT" hydra.run.dir="$OUT/prepare" > "$OUT/prepare.log" 2>&1

RUN=(dataset=phantom_ct dataset.root="$DATA" split.file="$SPLIT" checkpoint_dir="$OUT/model" device="$DEVICE"
  "${TRAIN[@]}" training.steps="$STEPS" training.checkpoint_every="$HALF" training.log_every=10
  training.keep_checkpoints=false)
CKPT="$OUT/model/checkpoint_last.pt"
echo "== training to step $STEPS, killed after the step-$HALF checkpoint"
T0=$SECONDS
"$PY" -m diffatlas.train "${RUN[@]}" hydra.run.dir="$OUT/train_first" > "$OUT/train_first.log" 2>&1 &
PID=$!
while [ ! -f "$CKPT" ] && kill -0 "$PID" 2>/dev/null; do sleep 0.1; done
kill -9 "$PID" 2>/dev/null || true
wait "$PID" 2>/dev/null || true
[ -f "$CKPT" ] || { echo "error: the first run wrote no checkpoint; see $OUT/train_first.log" >&2; exit 1; }
KILLED_AT=$("$PY" -c "import torch, sys; print(torch.load(sys.argv[1], map_location='cpu', weights_only=True)['step'])" "$CKPT")
echo "killed; checkpoint at step $KILLED_AT"
"$PY" -m diffatlas.train "${RUN[@]}" hydra.run.dir="$OUT/train_resumed" > "$OUT/train_resumed.log" 2>&1
TRAIN_S=$((SECONDS - T0))

echo "== test, DDIM-50"
"$PY" -m diffatlas.test dataset=phantom_ct dataset.root="$DATA" split.file="$SPLIT" checkpoint="$CKPT" sampler=ddim \
  device="$DEVICE" "${TEST[@]}" hydra.run.dir="$OUT/test" > "$OUT/test.log" 2>&1

"$PY" - "$OUT" "$STEPS" "$KILLED_AT" "$TRAIN_S" "$((SECONDS - START))" <<'EOF'
import json, re, sys
from pathlib import Path

import torch

out, steps, killed_at, train_s, total_s = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), *map(int, sys.argv[4:])
ckpt = torch.load(out / "model" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
resumed_log = (out / "train_resumed.log").read_text(encoding="utf-8")
resumed = re.search(r"resumed from .* at step (\d+)", resumed_log)
rates = re.findall(r"step (\d+)/\d+: loss ([0-9.]+), ([0-9.]+) s/step", resumed_log)
bench = json.loads((out / "trainer.json").read_text(encoding="utf-8"))
summary = json.loads((out / "test" / "summary.json").read_text(encoding="utf-8"))
rows = [("machine", bench["machine"])]
for r in bench["rows"]:
    rows.append((f"trainer / network step, {r['model']} {r['grid']}^3, {r['batch']} x {r['grad_accum']}, {r['variant']}",
                 f"{r['trainer_step_s']:.4f} s / {r['network_step_s']:.4f} s = {r['ratio']:.2f}"))
rows += [
    ("training run", f"U-Net of {sum(v.numel() for v in ckpt['model'].values()):,} parameters, {steps} steps, "
                     f"batch {ckpt['settings']['batch_size']} x {ckpt['settings']['grad_accum']}"),
    ("killed with a checkpoint at step", str(killed_at)),
    ("resumed from step", resumed.group(1) if resumed else "not resumed"),
    ("final checkpoint step", str(ckpt["step"])),
    ("s/step after resuming", rates[-1][2] if rates else "-"),
    ("final training loss", rates[-1][1] if rates else "-"),
    ("training wall time (both runs)", f"{train_s} s"),
    (f"test, {summary['sampler']['plan']}, {summary['num_cases']} cases: mean Dice / NSD (%)",
     " / ".join("-" if summary["mean"][m] is None else f"{100 * summary['mean'][m]:.2f}" for m in ("dice", "nsd"))),
    ("seconds per test case", f"{summary['seconds_per_case']:.2f}"),
    ("total wall time", f"{total_s} s"),
]
print("== summary")
print("| check | result |\n|---|---|")
for name, value in rows:
    print(f"| {name} | {value} |")
ok = resumed is not None and int(resumed.group(1)) == killed_at < steps and ckpt["step"] == steps
print("gpu_check: " + ("passed" if ok else "FAILED: the run was not killed and resumed half-way"))
sys.exit(0 if ok else 1)
EOF
