"""``python -m diffatlas.segment``: label maps for new scans, no label needed (see configs/segment.yaml)."""

import hydra
from omegaconf import DictConfig

from diffatlas.cli import CONFIG_PATH, reject_moved_overrides, run_or_explain, to_plain
from diffatlas.segmenting import segment


def main() -> None:
    reject_moved_overrides()
    run()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="segment")
def run(cfg: DictConfig) -> None:
    summary = run_or_explain(lambda: segment(to_plain(cfg)))
    print(f"segmented {len(summary['segmented'])} scans into {cfg.output} in {summary['seconds']:.1f} s")
    for name, reason in summary["failed"].items():
        print(f"failed: {name}: {reason}")
    if summary["failed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
