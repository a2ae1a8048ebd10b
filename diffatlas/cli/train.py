"""``python -m diffatlas.train``: fit the joint image-mask denoiser (see configs/train.yaml)."""

import logging

import hydra
from omegaconf import DictConfig

from diffatlas.fitting import train
from diffatlas.cli import CONFIG_PATH, run_or_explain, to_plain


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> None:
    path = run_or_explain(lambda: train(to_plain(cfg)))
    logging.getLogger(__name__).info("checkpoint: %s", path)


if __name__ == "__main__":
    main()
