"""The localiser's heart network (``diffatlas.heart_net``): trained on small synthetic torsos, it outlines a heart
of a size it never saw, and it round-trips through a checkpoint record."""

import numpy as np
import pytest
import torch

from diffatlas.data import geometry
from diffatlas.data.geometry import Grid
from diffatlas.heart_net import HeartNet, HeartNetSettings, heart_loss, scale_region
from diffatlas.localise import make_atlas

SPACING = (2.0, 2.0, 4.0)
SHAPE = (16, 16, 16)


def _torso(centre, half, seed, size=(48, 40, 16)):
    """A scan with an elliptic torso and a bright box heart of half-sides ``half`` voxels at ``centre``."""
    rng = np.random.default_rng(seed)
    i, j, _ = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in size], indexing="ij")
    image = rng.normal(10.0, 3.0, size).astype(np.float32)
    image[((i - 24) / 21.0) ** 2 + ((j - 20) / 17.0) ** 2 < 1.0] += 80.0
    label = np.zeros(size, dtype=np.uint8)
    (ci, cj, ck), (hi, hj, hk) = centre, half
    label[ci - hi:ci + hi + 1, cj - hj:cj + hj + 1, ck - hk:ck + hk + 1] = 1
    image[label > 0] += 70.0
    return image, label


def _image(array):
    return geometry.from_array(array, Grid(tuple(array.shape), SPACING, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))


def _atlases():
    return [make_atlas(f"atlas{seed}", _image(image), _image(label), SHAPE)
            for seed, (image, label) in ((1, _torso((24, 20, 8), (5, 5, 3), 1)), (2, _torso((22, 21, 8), (6, 5, 3), 2)))]


@pytest.fixture(scope="module")
def trained():
    return HeartNet.train(_atlases(), HeartNetSettings(steps=120, base_channels=4, lr=5e-3, seed=0))


def test_scale_region_uses_the_scanned_part_only():
    image = np.zeros((4, 4, 4), dtype=np.float32)       # 0 is the fill outside the scan
    image[1:, :, :] = np.linspace(10.0, 110.0, 48).reshape(3, 4, 4)
    out = scale_region(image)
    assert np.all(out[0] == -1.0) and out.min() == -1.0 and out.max() == 1.0
    inside = out[1:]
    assert np.all(np.diff(inside.ravel()) >= 0)           # order kept
    assert np.count_nonzero(inside == 1.0) == 1           # only the top 1 % clipped
    assert np.all(scale_region(np.full((3, 3, 3), 5.0, np.float32)) == -1.0)   # nothing scanned: all outside


def test_loss_is_lower_for_the_right_answer():
    target = torch.zeros(1, 1, 8, 8, 8)
    target[..., 2:6, 2:6, 2:6] = 1
    right, wrong = heart_loss(20 * (2 * target - 1), target), heart_loss(-20 * (2 * target - 1), target)
    assert float(right) < 0.01 < 1.5 < float(wrong)


def test_it_outlines_a_larger_heart_than_it_saw(trained):
    image, label = _torso((21, 18, 8), (7, 7, 4), seed=3)          # moved, and a third larger than the atlases'
    truth = label > 0
    registered = np.zeros_like(truth)                              # a registration's box: off by 2 voxels, too small
    registered[21 - 3:21 + 6, 18 - 3:18 + 6, 5:12] = True
    outlined = trained.outline(_image(image), registered)
    assert outlined is not None
    found, confidence = outlined
    assert found.shape == truth.shape and 0.5 < confidence <= 1.0       # the mean probability over what it outlined
    # every side of its box lies within one voxel of the region's grid (5.5 mm here) of the true box's; the box it
    # started from was 4-8 mm short on every side
    truth_box = np.concatenate(geometry.mask_bounds(truth)) * np.tile(SPACING, 2)
    found_box = np.concatenate(geometry.mask_bounds(found)) * np.tile(SPACING, 2)
    start_box = np.concatenate(geometry.mask_bounds(registered)) * np.tile(SPACING, 2)
    assert np.abs(found_box - truth_box).max() <= 6.0 < np.abs(start_box - truth_box).max()
    assert np.abs(found_box - truth_box).sum() < np.abs(start_box - truth_box).sum() / 2
    assert 2 * (found & truth).sum() / (found.sum() + truth.sum()) > 0.6


def test_record_round_trip_and_seeding(trained):
    region = _atlases()[0].local.image
    again = HeartNet.from_record(trained.to_record())
    assert again.shape == SHAPE and again.settings == trained.settings
    assert np.array_equal(again.probability(region), trained.probability(region))
    short = HeartNetSettings(steps=3, base_channels=4, seed=7)
    first, second = HeartNet.train(_atlases(), short), HeartNet.train(_atlases(), short)
    assert all(torch.equal(a, b) for a, b in zip(first.net.state_dict().values(), second.net.state_dict().values()))


def test_bad_settings_and_inputs_are_refused():
    with pytest.raises(ValueError, match="heart_net.steps must be >= 0"):
        HeartNetSettings(steps=-1)
    with pytest.raises(ValueError, match="heart_net.lr must be > 0"):
        HeartNetSettings(lr=0.0)
    with pytest.raises(ValueError, match="at least one localiser atlas"):
        HeartNet.train([], HeartNetSettings(steps=1))


def test_training_keeps_the_network_of_the_checkpoint_it_resumes(tmp_path, trained):
    from diffatlas.fitting import _heart_net
    from diffatlas.training.runguard import CHECKPOINT_KEYS
    localiser = [atlas.to_record() for atlas in _atlases()]
    torch.save({**{key: 0 for key in CHECKPOINT_KEYS}, "heart_net": trained.to_record()},
               tmp_path / "checkpoint_last.pt")
    cfg = {"seed": 0, "checkpoint_dir": str(tmp_path), "resume": True,
           "heart_net": {"steps": 120, "base_channels": 4, "lr": 5e-3}}
    kept = _heart_net(cfg, localiser, torch.device("cpu"))
    assert all(torch.equal(kept["state"][k], v) for k, v in trained.to_record()["state"].items())
    changed = _heart_net({**cfg, "heart_net": {"steps": 1, "base_channels": 4}}, localiser, torch.device("cpu"))
    assert changed["settings"]["steps"] == 1                     # other settings: trained again
    assert _heart_net({**cfg, "heart_net": {"steps": 0}}, localiser, torch.device("cpu")) is None
