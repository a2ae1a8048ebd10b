"""ICF U-Net segmenter on tiny phantoms: the loss falls, labels have the right shape, runs repeat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffatlas.data.datasets import PreparedData
from diffatlas.methods.base import SegmentationMethod
from diffatlas.methods.icf import ICF, ImageLabelDataset, segmentation_loss, segmentation_objective

NETWORK = dict(base_channels=8, channel_mults=(1, 2), attention_levels=(), norm_groups=4)
TRAINING = dict(steps=30, batch_size=2, lr=3e-3, ema_decay=0.9, checkpoint_every=1000, seed=3)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tiny_ct_phantoms: PreparedData) -> PreparedData:
    return tiny_ct_phantoms


def _loss(model: torch.nn.Module, data: PreparedData, cases: list[str]) -> float:
    batch = torch.stack([item for item in ImageLabelDataset(data, cases)])
    with torch.no_grad():
        return float(segmentation_objective()(model.eval(), batch, torch.Generator().manual_seed(0)))


def test_training_lowers_the_loss_and_segments(data: PreparedData, tmp_path: Path) -> None:
    cases = list(data.cases[:2])
    icf = ICF(out_dir=tmp_path / "run", network=NETWORK, training=TRAINING)
    assert isinstance(icf, SegmentationMethod)
    before = _loss(icf.build_network(data.num_structures), data, cases)
    icf.fit(data, cases)
    after = _loss(icf.model, data, cases)
    assert after < 0.8 * before
    assert (tmp_path / "run" / "checkpoint_last.pt").is_file()
    pred = icf.segment(data.load_case(data.cases[2]))
    assert pred.shape == data.shape and pred.dtype == np.uint8
    assert pred.max() <= data.num_structures


def test_same_seed_same_labels(data: PreparedData, tmp_path: Path) -> None:
    training = dict(TRAINING, steps=5)
    preds = []
    for run in ("a", "b"):
        icf = ICF(out_dir=tmp_path / run, network=NETWORK, training=training)
        icf.fit(data, list(data.cases[:2]))
        preds.append(icf.segment(data.load_case(data.cases[2])))
    np.testing.assert_array_equal(preds[0], preds[1])


def test_loss_by_hand() -> None:
    labels = torch.tensor([[[[0, 1]]]])
    perfect = 100.0 * torch.nn.functional.one_hot(labels, 2).movedim(-1, 1).float() - 50.0
    assert float(segmentation_loss(perfect, labels, 1.0, 1.0)) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(1, 2, 1, 1, 2)
    # CE of a uniform 2-class guess is log 2; soft Dice of p = 0.5 on one of two voxels: (2*0.5+1)/(1+1+1) = 2/3.
    expected = np.log(2) + (1 - 2 / 3)
    assert float(segmentation_loss(uniform, labels, 1.0, 1.0)) == pytest.approx(expected, rel=1e-6)


def test_errors(data: PreparedData, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must not set \['out_channels'\]"):
        ICF(out_dir=tmp_path, network={"out_channels": 3})
    with pytest.raises(ValueError, match="not both 0"):
        ICF(out_dir=tmp_path, ce_weight=0.0, dice_weight=0.0)
    icf = ICF(out_dir=tmp_path, network=NETWORK, training=TRAINING)
    with pytest.raises(RuntimeError, match="call fit"):
        icf.segment(data.load_case(data.cases[0]))
    with pytest.raises(ValueError, match="no training cases"):
        icf.fit(data, [])


def test_config_file_builds_the_method(tmp_path: Path) -> None:
    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "method" / "icf.yaml").read_text(encoding="utf-8"))
    assert config.pop("_target_") == "diffatlas.methods.icf.ICF"
    config["out_dir"] = tmp_path
    icf = ICF(**config)
    assert icf.settings.flip_axes == () and icf.network["base_channels"] == 16
