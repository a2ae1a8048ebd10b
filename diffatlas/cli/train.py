"""``python -m diffatlas.train``: fit the joint image-mask denoiser (see configs/train.yaml).

``torchrun --nproc_per_node=N -m diffatlas.train ...`` trains with N processes (README, "Several GPUs")."""

import logging

import hydra
from omegaconf import DictConfig

from diffatlas.cli import CONFIG_PATH, quiet_other_ranks, run_or_explain, to_plain
from diffatlas.fitting import train
from diffatlas.training.distributed import close_distributed


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _train(cfg: DictConfig) -> None:
    try:
        path = run_or_explain(lambda: train(to_plain(cfg)))
    finally:
        close_distributed()
    logging.getLogger(__name__).info("checkpoint: %s", path)


def main() -> None:
    quiet_other_ranks()
    _train()


if __name__ == "__main__":
    main()
