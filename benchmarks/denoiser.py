"""Cost of the joint denoiser: parameters, forward and training-step seconds, peak memory, at 32^3 and 64^3.

    python benchmarks/denoiser.py [--models unet_small unet_base] [--sizes 32 64] [--batch 1] [--repeats 3]
        [--conv onednn plain]

Each measurement runs in a fresh process so that its peak memory (max RSS on CPU, max allocated on CUDA)
is its own. The machine is printed with the table. Beneath it come the official DiffAtlas network's figures
(35.85M parameters, measured elsewhere, with their machine and batch) and, for a model of about its size
measured on the same kind of machine with the same batch, the like-for-like ratio; a smaller network is not
compared with it.

``--conv plain`` adds rows with PyTorch's own dispatch of 3D convolutions, which on the CPU sends a batch of one to
its im2col kernel; the default rows use ``unet.Conv3d``, which sends it to oneDNN.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OFFICIAL_PARAMETERS = 35_850_000
OFFICIAL_64 = {  # (device type, batch of the forward, batch of the training step) -> seconds, and the machine
    ("cpu", 1, 1): {"forward_s": 27.0, "train_step_s": 92.0, "machine": "2-core CPU"},
    ("cuda", 5, 2): {"forward_s": 0.293, "train_step_s": 0.319, "machine": "one H100, torch 2.11, float32"},
}


def _measure(model_name: str, size: int, batch: int, repeats: int, device: str, threads: int, conv: str,
             queue) -> None:
    import torch
    from omegaconf import OmegaConf

    from diffatlas.nets import unet

    if conv == "plain":
        unet.Conv3d._conv_forward = torch.nn.Conv3d._conv_forward

    from diffatlas.data.layout import ChannelLayout
    from diffatlas.diffusion.gaussian import GaussianDiffusion
    from diffatlas.nets.unet import count_parameters
    from diffatlas.builders import build_denoiser

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layout = ChannelLayout(5)
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / f"{model_name}.yaml"))
    net = build_denoiser(cfg, layout).to(device)
    diffusion = GaussianDiffusion(num_timesteps=300, prediction="x0").to(device)
    x = torch.randn(batch, layout.num_channels, size, size, size, device=device)
    t = torch.randint(300, (batch,), device=device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def forward() -> None:
        with torch.no_grad():
            net(x, t)

    def train_step() -> None:
        opt.zero_grad()
        diffusion.loss(net, x, t, torch.randn_like(x)).backward()
        opt.step()

    out = {"params": count_parameters(net)}
    for name, fn in (("forward_s", forward), ("train_step_s", train_step)):
        fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        out[name] = (time.perf_counter() - t0) / repeats
    if device.startswith("cuda"):
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(out)


def _machine(device: str, threads: int) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__}"
    return f"CPU ({platform.machine()}, {threads} threads), torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["unet_small", "unet_base"], help="file names in configs/model/")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--conv", nargs="+", default=["onednn"], choices=["onednn", "plain"],
                        help="3D convolution dispatch: onednn (unet.Conv3d) and/or plain (PyTorch's own)")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    print(f"machine: {_machine(args.device, args.threads)}; batch {args.batch}")
    print("| model | grid | convolution | parameters | forward (s) | train step (s) | peak memory (MB) |")
    print("|---|---|---|---:|---:|---:|---:|")
    same_size = []
    for model, size, conv in itertools.product(args.models, args.sizes, args.conv):
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(model, size, args.batch, args.repeats, args.device, args.threads,
                                                  conv, queue))
        proc.start()
        r = queue.get()
        proc.join()
        print(f"| {model} | {size}^3 | {conv} | {r['params']:,} | {r['forward_s']:.3f} | {r['train_step_s']:.3f} | "
              f"{r['peak_mb']:.0f} |")
        if conv == "onednn" and size == 64 and abs(r["params"] - OFFICIAL_PARAMETERS) < 0.1 * OFFICIAL_PARAMETERS:
            same_size.append((model, r))
    print(f"official Unet3D ({OFFICIAL_PARAMETERS / 1e6:.2f}M parameters) at 64^3, measured elsewhere:")
    for (_, fwd_batch, train_batch), ref in OFFICIAL_64.items():
        print(f"  {ref['machine']}: forward (batch {fwd_batch}) {ref['forward_s']} s, training step "
              f"(batch {train_batch}) {ref['train_step_s']} s")
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    for model, r in same_size:
        for (ref_kind, fwd_batch, train_batch), ref in OFFICIAL_64.items():
            ratios = [f"{name} {ref[key] / r[key]:.1f}x faster" for name, key, batch in
                      (("forward", "forward_s", fwd_batch), ("training step", "train_step_s", train_batch))
                      if ref_kind == kind and batch == args.batch]
            if ratios:
                print(f"  {model} ({r['params'] / 1e6:.2f}M, batch {args.batch}) against the {ref['machine']} "
                      f"figures: {', '.join(ratios)} (same kind of machine, not the same one)")


if __name__ == "__main__":
    main()
