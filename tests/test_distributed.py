"""Two training processes with gloo on the CPU against one process with the same effective batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from diffatlas.data.phantom import write_phantom_dataset
from diffatlas.data.splits import save_split
from diffatlas.diffusion.gaussian import GaussianDiffusion
from diffatlas.training.distributed import World, close_distributed, current_world, init_distributed
from diffatlas.training.trainer import LAST, Trainer, TrainSettings, diffusion_objective, load_checkpoint
from tests.conftest import tiny_unet
from tests.test_scripts import _fake_prepared
from tests.test_scripts import _run as _run_script


def _data():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 16, 16, 16, generator=g) * 2 - 1 for _ in range(5)]


def _trainer(out_dir, grad_accum):
    settings = TrainSettings(steps=4, batch_size=1, grad_accum=grad_accum, lr=1e-3, warmup_steps=1, ema_decay=0.9,
                             checkpoint_every=100, log_every=1, flip_axes=(0,), seed=3)
    diffusion = GaussianDiffusion(num_timesteps=10, prediction="x0", loss="l1")
    return Trainer(tiny_unet(3), diffusion_objective(diffusion), _data(), out_dir, settings, config={"run": 1})


def _rank_main(rank, port, out_dir, stop_at):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        assert init_distributed(torch.device("cpu")) == torch.device("cpu")
        assert current_world() == World(rank, 2)
        trainer = _trainer(out_dir, grad_accum=1)
        assert trainer.effective_batch == 2
        trainer.fit(stop_at=stop_at)
        torch.save(trainer.model.state_dict(), out_dir.parent / f"rank{rank}_{stop_at}.pt")
    finally:
        close_distributed()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(out_dir, stop_at):
    mp.start_processes(_rank_main, args=(_free_port(), out_dir, stop_at), nprocs=2, start_method="spawn")


@pytest.mark.usefixtures("one_thread")
def test_two_gloo_processes_train_like_one_process_and_resume(tmp_path):
    single = _trainer(tmp_path / "single", grad_accum=2)  # batch 1 x accumulation 2 x 1 process
    single.fit()
    run = tmp_path / "ddp"
    _run_two_ranks(run, stop_at=2)  # batch 1 x accumulation 1 x 2 processes, interrupted at step 2
    assert load_checkpoint(run / LAST)["step"] == 2
    _run_two_ranks(run, stop_at=None)  # fresh processes resume from rank 0's checkpoint
    ckpt = load_checkpoint(run / LAST)
    assert ckpt["step"] == 4
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(ckpt["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    for key, value in single.ema.state_dict().items():
        torch.testing.assert_close(ckpt["ema"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    other = torch.load(tmp_path / "rank1_None.pt", weights_only=True)
    for key, value in ckpt["model"].items():
        assert torch.equal(other[key], value), key  # both ranks hold the same weights
    assert len(list((run / "tb").glob("events.out.tfevents*"))) == 2  # one per launch, from rank 0 alone
    assert not torch.equal(ckpt["model"]["stem.weight"], _trainer(tmp_path / "fresh", 2).model.state_dict()["stem.weight"])


ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ["model.base_channels=8", "model.channel_mults=[1,2]", "model.attention_levels=[1]",
              "model.attention_heads=2", "model.norm_groups=4"]


def test_nproc_starts_training_through_torchrun(tmp_path):
    _fake_prepared(tmp_path / "mine")
    rendezvous = "--nnodes=2 --rdzv_backend=c10d --rdzv_endpoint=node0:29500 --rdzv_id=run1"
    done, calls = _run_script(ROOT / "training_scripts" / "train_MMWHSCT_2shot.sh", tmp_path, "mine", NPROC="4",
                              TORCHRUN_ARGS=rendezvous)
    assert done.returncode == 0, done.stderr
    assert calls == [["-m", "torch.distributed.run", "--nproc_per_node=4", *rendezvous.split(), "-m", "diffatlas.train",
                      "experiment=mmwhs_ct_2shot", f"dataset.root={tmp_path}/mine", "checkpoint_dir=Model/mmwhs_ct_2shot"]]


def _torchrun_train(tmp_path, data, steps, run):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
               "-m", "diffatlas.train", f"dataset.root={data}", f"split.file={tmp_path / 'split.json'}", *TINY_MODEL,
               f"checkpoint_dir={tmp_path / 'model'}", f"training.steps={steps}", "training.batch_size=1",
               "training.grad_accum=2", "training.checkpoint_every=2", "training.val_every=0", "device=auto",
               f"hydra.run.dir={tmp_path / run}"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.usefixtures("one_thread")
def test_torchrun_trains_checkpoints_and_resumes_with_gloo(tmp_path):
    data = tmp_path / "phantom_ct"
    cases = write_phantom_dataset(data, 3, "ct", shape=(16, 16, 16), fov_mm=100.0, seed=0)
    save_split({"name": "full", "dataset": "phantom_ct", "train": cases, "val": [], "test": []}, tmp_path / "split.json")
    _torchrun_train(tmp_path, data, 2, "first")
    assert load_checkpoint(tmp_path / "model" / LAST)["step"] == 2
    second = _torchrun_train(tmp_path, data, 4, "second")
    assert load_checkpoint(tmp_path / "model" / LAST)["step"] == 4
    log = (tmp_path / "second" / "train.log").read_text(encoding="utf-8")  # rank 0's log; rank 1 writes none
    assert "resumed from" in log and "at step 2" in log
    assert "effective batch 4 = batch 1 x accumulation 2 x 2 process(es)" in log
    assert "backend gloo" in log
    assert log.count("resumed from") == 1 and "resumed from" not in second.stderr
    assert len(list((tmp_path / "model" / "tb").glob("events.out.tfevents*"))) == 2
