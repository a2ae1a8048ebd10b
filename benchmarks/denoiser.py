"""Cost of the joint denoiser: parameters, forward and training-step seconds, peak memory, at 32^3 and 64^3.

    python benchmarks/denoiser.py [--model unet_small] [--sizes 32 64] [--batch 1] [--repeats 3]

Each measurement runs in a fresh process so that its peak memory (max RSS on CPU, max allocated on CUDA)
is its own. The official DiffAtlas network's forward pass at 64^3 takes about 27 s on a 2-core CPU
(../shared/DESIGN.md); the last column gives our speed-up over that figure.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OFFICIAL_FORWARD_64_S = 27.0


def _measure(model_name: str, size: int, batch: int, repeats: int, device: str, threads: int, queue) -> None:
    import torch
    from omegaconf import OmegaConf

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="unet_small", help="a file name in configs/model/")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    print(f"model={args.model} batch={args.batch} device={args.device} threads={args.threads}")
    print("| grid | parameters | forward (s) | train step (s) | peak memory (MB) | forward speed-up vs official 64^3 |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(args.model, size, args.batch, args.repeats, args.device,
                                                  args.threads, queue))
        proc.start()
        r = queue.get()
        proc.join()
        speedup = f"{OFFICIAL_FORWARD_64_S / r['forward_s']:.1f}x" if size == 64 and args.batch == 1 else "-"
        print(f"| {size}^3 | {r['params']:,} | {r['forward_s']:.3f} | {r['train_step_s']:.3f} | "
              f"{r['peak_mb']:.0f} | {speedup} |")


if __name__ == "__main__":
    main()
