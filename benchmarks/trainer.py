"""Where a training step's time goes: the project Trainer against the network's own step.

    python benchmarks/trainer.py [--device auto] [--variants plain channels_last compile] [--quick]

For each setting (``unet_small`` at 32^3 and ``unet_base`` at 64^3; ``--quick``: ``unet_small`` at 16^3) it
times, on ``--device`` (``auto``: CUDA when available):

- the trainer's step (``Trainer.train_step``: batch assembly, flips, noise, forward and backward, clipping,
  AdamW, EMA), steps back to back with one device synchronisation at the end, plus the amortised cost of
  reading and logging the loss every ``log_every`` steps;
- the network's own step: the same network, shapes, autocast and AdamW on tensors made beforehand
  (``grad_accum`` forward and backward passes, one optimizer step);
- each phase of a step on its own, the device synchronised around it: batch assembly, noise, forward and
  backward, optimizer (clipping and AdamW), EMA, logging.

On CUDA the batches are the paper's (6 x 2 accumulation at 64^3, bf16 autocast) and 8 at 32^3; on the CPU
1 x 1, so the whole run stays within a few minutes. Prints a Markdown table and writes the rows as JSON
(``--json``). ``ratio`` is trainer step / network step; the target on a GPU is at most 1.2.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from diffatlas.diffusion.gaussian import GaussianDiffusion  # noqa: E402
from diffatlas.nets.unet import UNet, count_parameters  # noqa: E402
from diffatlas.training.trainer import Trainer, TrainSettings, diffusion_objective  # noqa: E402

NUM_STRUCTURES = 5
NUM_CASES = 8
VARIANTS = ("plain", "channels_last", "compile")


def settings_for(device: torch.device, quick: bool) -> list[dict]:
    """The measured settings: model, grid, batch, accumulation and step counts per device."""
    if quick:
        return [dict(model="unet_small", size=16, batch=1, accum=1, steps=2)]
    if device.type == "cuda":
        return [dict(model="unet_small", size=32, batch=8, accum=1, steps=20),
                dict(model="unet_base", size=64, batch=6, accum=2, steps=10)]
    return [dict(model="unet_small", size=32, batch=1, accum=1, steps=3),
            dict(model="unet_base", size=64, batch=1, accum=1, steps=2)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Mean seconds of ``fn`` over ``repeats`` calls, synchronised at both ends."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def build(model_name: str, size: int, device: torch.device, settings: TrainSettings, out_dir: Path):
    """A Trainer on random ``(1 + K, size^3)`` volumes, its network's config and diffusion."""
    channels = 1 + NUM_STRUCTURES
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / f"{model_name}.yaml"))
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=channels, out_channels=channels, time_conditioned=True, **cfg)
    diffusion = GaussianDiffusion(num_timesteps=300, prediction="x0", loss="l1").to(device)
    g = torch.Generator().manual_seed(0)
    volumes = [torch.cat([torch.rand(1, size, size, size, generator=g) * 2 - 1,
                          torch.rand(NUM_STRUCTURES, size, size, size, generator=g) * 0.4 - 0.2])
               for _ in range(NUM_CASES)]
    trainer = Trainer(net, diffusion_objective(diffusion), volumes, out_dir, settings, device=device)
    return trainer, diffusion


def measure(spec: dict, variant: str, device: torch.device) -> dict:
    """One row of the table: the trainer step, the network step and the phase split, in seconds."""
    settings = TrainSettings(steps=10**6, batch_size=spec["batch"], grad_accum=spec["accum"], lr=1e-4,
                             ema_decay=0.995, amp=True, log_every=50, channels_last=variant == "channels_last",
                             compile=variant == "compile")
    steps = spec["steps"]
    with tempfile.TemporaryDirectory() as tmp:
        trainer, diffusion = build(spec["model"], spec["size"], device, settings, Path(tmp))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer.train_step()  # warm-up (and compilation)
        window = torch.zeros((), device=device)

        def trainer_step() -> None:
            nonlocal window
            window = window + trainer.train_step()

        trainer_s = _timed(trainer_step, device, steps)
        writer = SummaryWriter(Path(tmp) / "tb")

        def log_once() -> None:
            writer.add_scalar("train/loss", trainer._read_loss(window, steps, 0), trainer.step)

        logging_s = _timed(log_once, device, 3) / settings.log_every
        writer.close()

        trainer.generator.manual_seed(0)
        batch = trainer.draw_batch()
        t = torch.randint(diffusion.num_timesteps, (batch.shape[0],), generator=trainer.generator, device=device)
        noise = torch.randn(batch.shape, generator=trainer.generator, device=device)
        net, optimizer = trainer.net, trainer.optimizer
        autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=trainer.amp_enabled)

        def forward_backward() -> None:
            with torch.autocast(**autocast):
                loss = diffusion.loss(net, batch, t, noise)
            (loss / spec["accum"]).backward()

        def network_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            for _ in range(spec["accum"]):
                forward_backward()
            optimizer.step()

        network_s = _timed(network_step, device, steps)

        def assemble() -> None:
            trainer.generator.manual_seed(1)
            trainer.draw_batch()

        def draw_noise() -> None:
            torch.randint(diffusion.num_timesteps, (batch.shape[0],), generator=trainer.generator, device=device)
            torch.randn(batch.shape, generator=trainer.generator, device=device)

        def optimizer_step() -> None:
            nn.utils.clip_grad_norm_(trainer.model.parameters(), settings.grad_clip, foreach=True)
            optimizer.step()

        repeats = max(1, steps // 2)
        phases = {
            "batch_s": spec["accum"] * _timed(assemble, device, repeats),
            "noise_s": spec["accum"] * _timed(draw_noise, device, repeats),
            "forward_backward_s": spec["accum"] * _timed(forward_backward, device, repeats),
            "optimizer_s": _timed(optimizer_step, device, repeats),
            "ema_s": _timed(trainer.update_ema, device, repeats),
            "logging_s": logging_s,
        }
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        return {"model": spec["model"], "grid": spec["size"], "parameters": count_parameters(trainer.model),
                "batch": spec["batch"], "grad_accum": spec["accum"], "variant": variant,
                "amp_bf16": trainer.amp_enabled, "trainer_step_s": trainer_s + logging_s,
                "network_step_s": network_s, "ratio": (trainer_s + logging_s) / network_s, **phases,
                "peak_gib": peak}


def machine(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"CPU ({platform.processor() or platform.machine()}), {threads} threads, torch {torch.__version__}"


def format_table(rows: list[dict]) -> str:
    lines = ["| model | grid | parameters | batch x accum | variant | trainer step (s) | network step (s) | ratio "
             "| batch (s) | noise (s) | fwd+bwd (s) | optimizer (s) | EMA (s) | logging (s) | peak (GiB) |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        lines.append(f"| {r['model']} | {r['grid']}^3 | {r['parameters']:,} | {r['batch']} x {r['grad_accum']} "
                     f"| {r['variant']} | {r['trainer_step_s']:.4f} | {r['network_step_s']:.4f} | {r['ratio']:.2f} "
                     f"| {r['batch_s']:.4f} | {r['noise_s']:.4f} | {r['forward_backward_s']:.4f} "
                     f"| {r['optimizer_s']:.4f} | {r['ema_s']:.4f} | {r['logging_s']:.5f} | {peak} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--variants", nargs="+", default=["plain"], choices=VARIANTS)
    parser.add_argument("--quick", action="store_true", help="unet_small at 16^3, two steps: a smoke run")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--json", default="outputs/benchmarks/trainer.json", help="where the rows are written")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    torch.set_num_threads(args.threads)
    where = machine(device, args.threads)
    print(f"device: {where}")
    rows = []
    start = time.perf_counter()
    for spec in settings_for(device, args.quick):
        for variant in args.variants:
            rows.append(measure(spec, variant, device))
    print(format_table(rows))
    print(f"total {time.perf_counter() - start:.0f} s")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": where, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"rows written to {out}")


if __name__ == "__main__":
    main()
