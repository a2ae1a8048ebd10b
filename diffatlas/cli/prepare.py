"""``python -m diffatlas.prepare``: write prepared data (see configs/prepare.yaml)."""

import hydra
from omegaconf import DictConfig

from diffatlas.cli import CONFIG_PATH, run_or_explain, to_plain
from diffatlas.data.prepare import prepare_from_config
from diffatlas.inputs import prepare_phantoms


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="prepare")
def main(cfg: DictConfig) -> None:
    if cfg.source.kind == "phantom":
        run_or_explain(lambda: prepare_phantoms(to_plain(cfg)))
    else:
        run_or_explain(lambda: prepare_from_config(to_plain(cfg)))


if __name__ == "__main__":
    main()
