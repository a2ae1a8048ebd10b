"""``QUICK=1 bash benchmarks/gpu_check.sh`` on the CPU: every stage runs, the training run is killed after its
half-way checkpoint and resumed from it, and the summary table is printed."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_gpu_check_kills_resumes_and_summarises_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    env = dict(os.environ, QUICK="1", OUT=str(out), DEVICE="cpu", PYTHON=sys.executable, OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = done.stdout[done.stdout.index("== summary"):]
    assert "| killed with a checkpoint at step | 10 |" in summary
    assert "| resumed from step | 10 |" in summary
    assert "| final checkpoint step | 20 |" in summary
    assert "trainer / network step, unet_small 16^3" in summary
    assert summary.rstrip().endswith("gpu_check: passed")
    assert "resumed from" not in (out / "train_first.log").read_text(encoding="utf-8")
    scores = json.loads((out / "test" / "summary.json").read_text(encoding="utf-8"))
    assert scores["sampler"]["plan"] == "ddim50" and scores["num_cases"] == 2
    assert json.loads((out / "trainer.json").read_text(encoding="utf-8"))["rows"][0]["ratio"] > 0
