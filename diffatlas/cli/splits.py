"""``python -m diffatlas.splits dataset=<name>``: write a prepared dataset's split files (see configs/splits.yaml).

Reads the case ids of ``${dataset.root}/dataset.json`` and writes ``full.json``, ``<N>shot.json`` and
``all.json`` into ``${dataset.splits_dir}`` (see :func:`diffatlas.data.splits.write_standard_splits`).
"""

import hydra
from omegaconf import DictConfig

from diffatlas.cli import CONFIG_PATH, run_or_explain, to_plain
from diffatlas.data.splits import write_dataset_splits


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="splits")
def main(cfg: DictConfig) -> None:
    plain = to_plain(cfg)
    run_or_explain(lambda: write_dataset_splits(
        plain["dataset"]["root"], plain["dataset"]["splits_dir"], seed=int(plain["seed"]),
        test_fraction=float(plain["test_fraction"]), shots=[int(n) for n in plain["shots"] or []],
        val_count=int(plain["val_count"])))


if __name__ == "__main__":
    main()
