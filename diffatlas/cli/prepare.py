"""``python -m diffatlas.prepare``: write prepared data (see configs/prepare.yaml)."""

import hydra
from omegaconf import DictConfig

from diffatlas import pipeline
from diffatlas.cli import CONFIG_PATH, run_or_explain, to_plain


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="prepare")
def main(cfg: DictConfig) -> None:
    plain = to_plain(cfg)
    if plain["source"] != "phantom":
        raise SystemExit(f"unknown source {plain['source']!r}; available: phantom")
    run_or_explain(lambda: pipeline.prepare_phantoms(plain))


if __name__ == "__main__":
    main()
