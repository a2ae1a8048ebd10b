"""``python -m diffatlas.compare``: the paper's comparison of methods on one dataset and split
(see configs/compare.yaml)."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from diffatlas.comparison import compare
from diffatlas.cli import CONFIG_PATH, reject_moved_overrides, run_or_explain, to_plain


def main() -> None:
    reject_moved_overrides()
    run()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="compare")
def run(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    run_or_explain(lambda: compare(to_plain(cfg), run_dir))
    print((Path(run_dir) / "table.md").read_text(encoding="utf-8"))
    print(f"results: {run_dir}")


if __name__ == "__main__":
    main()
