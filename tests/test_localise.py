"""Label-free localisation by atlas registration (``diffatlas.localise``) on small synthetic scans: a torso with a
box heart, the target shifted against the atlases so the answer is known."""

import numpy as np
import pytest
import torch

from diffatlas.data import geometry
from diffatlas.data.geometry import Grid
from diffatlas.localise import (SIZE_PRIOR, AtlasLevel, LocaliserAtlas, _sized_box, fit_atlases, locate, make_atlas,
                                retry_shifts)

SPACING = (1.5, 1.5, 4.0)


def _torso(shift_vox, seed, size=(56, 48, 14)):
    """A scan (an elliptic torso with a bright box heart and darker lungs) and its heart label, everything moved
    ``shift_vox`` voxels along the first two axes."""
    rng = np.random.default_rng(seed)
    i, j, _ = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in size], indexing="ij")
    ci, cj = 26 + shift_vox[0], 24 + shift_vox[1]
    image = rng.normal(10.0, 3.0, size).astype(np.float32)
    torso = ((i - ci) / 20.0) ** 2 + ((j - cj) / 15.0) ** 2 < 1.0
    image[torso] += 80.0
    for side in (-9, 9):
        image[((i - ci - side) / 6.0) ** 2 + ((j - cj + 3) / 7.0) ** 2 < 1.0] -= 60.0
    label = np.zeros(size, dtype=np.uint8)
    label[int(ci) - 4:int(ci) + 5, int(cj) + 2:int(cj) + 10, 3:11] = 1
    image[label > 0] += 70.0
    return image, label


def _image(array, spacing=SPACING):
    return geometry.from_array(array, Grid(tuple(array.shape), spacing, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))


def _centre_mm(mask, spacing=SPACING):
    return np.asarray(np.nonzero(mask)).mean(axis=1) * np.asarray(spacing)


def test_atlases_find_a_moved_heart():
    atlases = []
    for seed in (1, 2):
        image, label = _torso((0, 0), seed)
        atlases.append(make_atlas(f"atlas{seed}", _image(image), _image(label)))
    image, label = _torso((7, -5), seed=3)
    found = locate(_image(image), atlases, case_id="target")
    assert found is not None and found.shape == image.shape
    assert np.array_equal(locate(_image(image), atlases, case_id="target"), found)   # the same seed, the same answer
    truth = label > 0
    # the heart moved by (10.5, -7.5) mm; the found heart sits on it, well inside the training margin (10 mm)
    assert np.linalg.norm(_centre_mm(found) - _centre_mm(truth)) < 4.0
    assert 2 * (found & truth).sum() / (found.sum() + truth.sum()) > 0.6


def test_the_atlas_that_fits_best_places_the_heart():
    """An atlas whose scan shows something else (noise, its 'heart' in a corner) scores far below one that shows
    a torso, and its heart is not mixed into the answer."""
    image, label = _torso((0, 0), seed=1)
    good = make_atlas("torso", _image(image), _image(label))
    noise = np.random.default_rng(5).normal(50.0, 20.0, image.shape).astype(np.float32)
    corner = np.zeros(image.shape, dtype=np.uint8)
    corner[:8, :8, :4] = 1
    stray = make_atlas("noise", _image(noise), _image(corner))
    target, truth = _torso((7, -5), seed=3)
    fits = fit_atlases(_image(target), [stray, good], case_id="target")
    assert [fit.atlas for fit in fits][0] == "torso" and fits[0].score > 0.5 > max(f.score for f in fits[1:])
    found = locate(_image(target), [stray, good])
    assert np.linalg.norm(_centre_mm(found) - _centre_mm(truth > 0)) < 4.0


def test_a_poor_fit_is_tried_again_from_further_starts(caplog):
    image, label = _torso((0, 0), seed=1)
    atlas = make_atlas("torso", _image(image), _image(label))
    noise = np.random.default_rng(6).normal(50.0, 20.0, image.shape).astype(np.float32)
    with caplog.at_level("INFO", logger="diffatlas.localise"):
        fits = fit_atlases(_image(noise), [atlas], case_id="noise")
    assert "noise: the atlases fit poorly" in caplog.text and "from 6 further starts" in caplog.text
    assert 1 < len(fits) <= 1 + len(retry_shifts()) and all(f.score < 0.35 for f in fits)
    assert [f.score for f in fits] == sorted((f.score for f in fits), reverse=True)
    assert sorted(map(tuple, np.abs(retry_shifts(30.0)).tolist())) == sorted([(30.0, 0, 0), (0, 30.0, 0), (0, 0, 30.0)] * 2)


def test_an_atlas_survives_a_checkpoint(tmp_path):
    image, label = _torso((0, 0), seed=1)
    atlas = make_atlas("atlas1", _image(image), _image(label))
    torch.save({"localiser": [atlas.to_record()]}, tmp_path / "c.pt")
    back = LocaliserAtlas.from_record(torch.load(tmp_path / "c.pt", weights_only=True)["localiser"][0])
    assert back.case == "atlas1"
    for mine, theirs in ((back.whole, atlas.whole), (back.local, atlas.local)):
        assert mine.grid == theirs.grid
        assert np.array_equal(mine.image, theirs.image) and np.array_equal(mine.mask, theirs.mask)
    # the coarse grid is a cube over the scan's largest extent (56 x 1.5 mm = 84 mm); the local one covers the
    # heart's box (its largest side: 8 slices of 4 mm) plus 30 mm on each side
    assert back.whole.grid.size == (48, 48, 48) and np.allclose(back.whole.grid.spacing, 84.0 / 48)
    assert np.allclose(back.local.grid.spacing, (32.0 + 60.0) / 48, atol=0.1)


def test_no_heart_is_none_not_a_guess():
    image, label = _torso((0, 0), seed=1)
    atlas = make_atlas("atlas1", _image(image), _image(label))
    blank = AtlasLevel(atlas.whole.image, np.zeros_like(atlas.whole.mask), atlas.whole.grid)
    empty = LocaliserAtlas("empty", blank, atlas.local)
    assert locate(_image(image), [empty]) is None
    assert locate(_image(image), []) is None


def test_an_atlas_needs_a_heart():
    image, _ = _torso((0, 0), seed=1)
    with pytest.raises(ValueError, match="case blank: the label has no foreground"):
        make_atlas("blank", _image(image), _image(np.zeros(image.shape, dtype=np.uint8)))


def test_the_found_box_leans_towards_the_atlas_heart_size():
    """The box keeps the found heart's centre and aspect; its largest side becomes the geometric mean of the found
    one and the atlas's (SIZE_PRIOR = 0.5): 40 mm found, 10 mm in the atlas -> 20 mm."""
    assert SIZE_PRIOR == 0.5
    heart = np.zeros((40, 30, 10), dtype=bool)
    heart[10:30, 5:15, 2:7] = True                   # 20 x 10 x 5 voxels of 2 mm: 40 x 20 x 10 mm
    box = _sized_box(_image(heart.astype(np.float32), (2.0, 2.0, 2.0)), heart, atlas_extent_mm=10.0)
    index = np.nonzero(box)
    assert [(int(i.min()), int(i.max()) + 1) for i in index] == [(15, 25), (8, 13), (3, 6)]
    assert box.sum() == 10 * 5 * 3
    same = _sized_box(_image(heart.astype(np.float32), (2.0, 2.0, 2.0)), heart, atlas_extent_mm=40.0)
    assert np.array_equal(same, heart)


def test_a_heart_network_that_finds_nothing_leaves_the_registration_box(caplog):
    """``locate`` with ``outline``: an untrained heart network (its output layer starts at zero, probability 0.5
    everywhere, so nothing above 0.5) outlines no heart, and the registration's sized box is kept, with a warning."""
    from diffatlas.heart_net import HeartNet, HeartNetSettings
    atlases = []
    for seed in (1, 2):
        image, label = _torso((0, 0), seed)
        atlases.append(make_atlas(f"atlas{seed}", _image(image), _image(label), (16, 16, 16)))
    untrained = HeartNet.train(atlases, HeartNetSettings(steps=0, base_channels=4))
    image, _ = _torso((7, -5), seed=3)
    with caplog.at_level("WARNING", logger="diffatlas.localise"):
        found = locate(_image(image), atlases, case_id="target", outline=untrained.outline)
    assert "target: the heart network found no heart" in caplog.text
    assert np.array_equal(found, locate(_image(image), atlases, case_id="target"))


def test_the_heart_networks_outline_is_taken_near_or_far(caplog):
    """``outline`` is any callable; what it answers is the crop however far it moved from the registered heart (the
    registration can miss by more than the network: see ``locate``), and the move is logged."""
    image, label = _torso((0, 0), seed=1)
    atlases = [make_atlas("torso", _image(image), _image(label))]
    target, _ = _torso((7, -5), seed=3)
    registered = locate(_image(target), atlases, case_id="target")

    def moved_by(voxels):
        def outline(oriented, box):
            return np.roll(box, voxels, axis=0), 0.9
        return outline

    with caplog.at_level("INFO", logger="diffatlas.localise"):
        far = locate(_image(target), atlases, case_id="target", outline=moved_by(30))     # 45 mm, part wrapped
        near = locate(_image(target), atlases, case_id="target", outline=moved_by(4))     # 4 x 1.5 mm
    assert np.array_equal(far, np.roll(registered, 30, axis=0))
    assert np.array_equal(near, np.roll(registered, 4, axis=0))
    assert "target: the heart network's outline around atlas torso's box (NCC" in caplog.text
    assert "confidence 0.900) is centred 6 mm from it" in caplog.text


def test_the_most_confident_outline_of_the_atlases_that_fit_nearly_as_well_is_taken(monkeypatch):
    """Each atlas's best fit within ``NEAR_BEST`` of the best is outlined, and the outline the network is surest of
    wins; an atlas that fits worse than that is not outlined."""
    import diffatlas.localise as localise
    atlases = []
    for seed in (1, 2):
        image, label = _torso((0, 0), seed)
        atlases.append(make_atlas(f"atlas{seed}", _image(image), _image(label)))
    target, _ = _torso((7, -5), seed=3)
    fits = localise._best_per_atlas(fit_atlases(_image(target), atlases))
    assert [fit.score for fit in fits] == sorted((fit.score for fit in fits), reverse=True) and len(fits) == 2
    boxes = [localise._fit_box(_image(target), fit, atlases) for fit in fits]
    asked = []

    def surer_each_time(oriented, box):          # the n-th outline asked for: moved n voxels, confidence 0.7 + n / 10
        asked.append(box)
        return np.roll(box, len(asked), axis=0), 0.7 + len(asked) / 10

    monkeypatch.setattr(localise, "NEAR_BEST", fits[0].score - fits[1].score + 0.01)
    assert np.array_equal(locate(_image(target), atlases, outline=surer_each_time), np.roll(boxes[1], 2, axis=0))
    assert len(asked) == 2 and all(np.array_equal(a, b) for a, b in zip(asked, boxes))    # the best fit first
    monkeypatch.setattr(localise, "NEAR_BEST", fits[0].score - fits[1].score - 0.01)
    asked.clear()
    assert np.array_equal(locate(_image(target), atlases, outline=surer_each_time), np.roll(boxes[0], 1, axis=0))
    assert len(asked) == 1
