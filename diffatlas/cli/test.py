"""``python -m diffatlas.test``: segment and score a split's test cases (see configs/test.yaml)."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from diffatlas.testing import test
from diffatlas.cli import CONFIG_PATH, reject_moved_overrides, run_or_explain, to_plain
from diffatlas.evaluation.report import format_table


def main() -> None:
    reject_moved_overrides()
    run()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="test")
def run(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    summary = run_or_explain(lambda: test(to_plain(cfg), run_dir))
    print(format_table(summary))
    print(f"\nresults: {run_dir}")


if __name__ == "__main__":
    main()
