"""The DiffAtlas recipe's levers: joint augmentation, decoupled image and mask noise levels, sample selection,
and the mean- and nearest-atlas sanity baselines."""

from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffatlas.data.datasets import CaseData
from diffatlas.data.layout import ChannelLayout
from diffatlas.data.phantom import make_phantom
from diffatlas.data.sdf import decode_sdf_torch, encode_sdf
from diffatlas.diffusion.gaussian import GaussianDiffusion
from diffatlas.methods.atlas import MeanAtlas, NearestAtlas
from diffatlas.methods.diffatlas import DiffAtlasSegmenter
from diffatlas.nets.unet import UNet
from diffatlas.sampling.ensemble import fuse, image_agreement
from diffatlas.sampling.loop import ImageReplacement, image_level, make_generators
from diffatlas.sampling.plans import ddim_plan
from diffatlas.training.augment import AugmentSettings, JointAugment, make_augment, warp
from diffatlas.training.objectives import decoupled_objective, draw_image_levels
from diffatlas.training.trainer import diffusion_objective
from tests.conftest import tiny_unet

K = 5


def _phantom_batch(n: int = 2) -> torch.Tensor:
    """``(n, 1 + K + 1, 24, 24, 24)``: image, K SDFs, then the label map itself."""
    return _phantoms(n).clone()


@lru_cache(maxsize=None)
def _phantoms(n: int) -> torch.Tensor:
    items = []
    for seed in range(n):
        p = make_phantom(seed, "ct", (24, 24, 24), 100.0)
        sdf = encode_sdf(p.label, K, 6.0, 1.0)
        image = np.clip(p.image / 1000.0, -1, 1)
        items.append(np.concatenate([image[None], sdf, p.label[None].astype(np.float32)]))
    return torch.from_numpy(np.stack(items)).float()


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def test_a_known_shift_moves_masks_and_label_map_alike():
    """A shift of exactly 3 voxels along array axis 0 (a hand-built grid) moves the SDF channels, decoded, and
    the label channel, resampled by nearest neighbour, to the label map rolled by 3 voxels."""
    batch = _phantom_batch(1)
    theta = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, -3 * 2 / 24]]])  # x, y, z = axes 2, 1, 0
    grid = F.affine_grid(theta, [1, 1, 24, 24, 24], align_corners=False)
    out = warp(batch, grid, label_channels=(1 + K,))
    expected = torch.roll(batch[0, 1 + K].long(), shifts=3, dims=0)[3:]   # rows 0..2 repeat the border
    assert torch.equal(out[0, 1 + K].long()[3:], expected)
    assert torch.equal(decode_sdf_torch(out[:, 1:1 + K])[0][3:], expected)
    assert torch.allclose(out[0, 0, 3:], torch.roll(batch[0, 0], 3, 0)[3:], atol=1e-5)


def test_random_deformations_keep_image_masks_and_labels_aligned():
    """Under random rotations, zooms, shifts and elastic displacements the warped SDFs decode to the
    nearest-neighbour warped label map (Dice > 0.9 per structure) and the image moved with them."""
    batch = _phantom_batch(2).repeat(2, 1, 1, 1, 1)
    aug = JointAugment(AugmentSettings(spatial_prob=1.0, elastic_prob=1.0, rotate_deg=20, intensity_prob=0.0),
                       image_channels=(0,), label_channels=(1 + K,))
    out = aug(batch, torch.Generator().manual_seed(3))
    decoded = decode_sdf_torch(out[:, 1:1 + K])
    labels = out[:, 1 + K].round().long()
    for b in range(out.shape[0]):
        assert not torch.equal(out[b, 0], batch[b, 0]), "every sample was to be moved"
        for k in range(1, K + 1):
            assert _dice(decoded[b] == k, labels[b] == k) > 0.9
    assert set(labels.unique().tolist()) <= set(range(K + 1)), "nearest resampling keeps integer labels"


def test_augmentation_is_seeded_and_intensity_touches_only_the_image():
    batch = _phantom_batch(2)
    aug = JointAugment(AugmentSettings(spatial_prob=0.0, intensity_prob=1.0), image_channels=(0,))
    a = aug(batch, torch.Generator().manual_seed(0))
    b = aug(batch, torch.Generator().manual_seed(0))
    c = aug(batch, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, 1:], batch[:, 1:])
    assert not torch.equal(a[:, 0], batch[:, 0])
    assert a[:, 0].min() >= -1 and a[:, 0].max() <= 1


def test_augmentation_settings_and_config_errors():
    with pytest.raises(ValueError, match="augment.spatial_prob"):
        AugmentSettings(spatial_prob=1.5)
    with pytest.raises(ValueError, match="augment.scale"):
        AugmentSettings(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="both image and label"):
        JointAugment(image_channels=(0,), label_channels=(0,))
    with pytest.raises(ValueError, match="do not exist"):
        JointAugment(image_channels=(4,))(torch.zeros(1, 2, 8, 8, 8), torch.Generator())
    assert make_augment(None) is None and make_augment({"enabled": False, "rotate_deg": 5}) is None
    assert make_augment({"enabled": True, "rotate_deg": 5}).s.rotate_deg == 5


def test_the_wide_augmentation_is_the_default_with_wider_shifts_and_zooms():
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    configs = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        default = OmegaConf.to_container(compose("train", overrides=["augment=default"]).augment)
        wide = OmegaConf.to_container(compose("train", overrides=["augment=wide"]).augment)
    assert {k: v for k, v in wide.items() if k not in ("scale", "translate")} == \
        {k: v for k, v in default.items() if k not in ("scale", "translate")}
    assert wide["translate"] > default["translate"] and wide["scale"][0] < default["scale"][0] < 1 < \
        default["scale"][1] < wide["scale"][1]
    assert make_augment(wide).s.translate == wide["translate"]


def test_levels_equal_to_t_give_q_sample_and_level_minus_one_is_clean():
    d = GaussianDiffusion(num_timesteps=50, prediction="x0")
    x0, noise = torch.randn(3, 4, 8, 8, 8), torch.randn(3, 4, 8, 8, 8)
    t = torch.tensor([0, 17, 49])
    assert torch.equal(d.q_sample_levels(x0, t[:, None].repeat(1, 4), noise), d.q_sample(x0, t, noise))
    levels = t[:, None].repeat(1, 4)
    levels[:, 0] = -1
    mixed = d.q_sample_levels(x0, levels, noise)
    assert torch.equal(mixed[:, 0], x0[:, 0]) and torch.equal(mixed[:, 1:], d.q_sample(x0, t, noise)[:, 1:])


def test_decoupled_training_with_equal_levels_is_the_joint_loss():
    """With equal_prob = 1 the decoupled objective draws the same t and noise as the joint objective and
    noises every channel at t, so the two losses of one network are equal."""
    torch.manual_seed(0)
    net = UNet(in_channels=3, out_channels=3, base_channels=8, channel_mults=(1, 2), norm_groups=4,
               image_time=True)
    d = GaussianDiffusion(num_timesteps=40, prediction="x0", channel_weights=[1.0, 5.0, 5.0])
    batch = torch.randn(2, 3, 8, 8, 8)

    def same_levels(x, t):
        return net(x, t, t_image=t)

    joint = diffusion_objective(d)(same_levels, batch, torch.Generator().manual_seed(4))
    decoupled = decoupled_objective(d, slice(0, 1), equal_prob=1.0)(net, batch, torch.Generator().manual_seed(4))
    assert torch.allclose(joint, decoupled, rtol=0, atol=0)


def test_image_levels_are_drawn_between_clean_and_the_mask_level():
    t = torch.arange(300).repeat(20)
    levels = draw_image_levels(t, 0.0, torch.Generator().manual_seed(0))
    assert (levels >= -1).all() and (levels <= t).all()
    assert (levels == -1).any() and (levels < t).float().mean() > 0.9
    assert torch.equal(draw_image_levels(t, 1.0, torch.Generator().manual_seed(0)), t)
    with pytest.raises(ValueError, match="equal_prob"):
        decoupled_objective(GaussianDiffusion(num_timesteps=10), slice(0, 1), equal_prob=2.0)


def test_image_level_ratio_and_replacement():
    assert image_level(99, 1.0) == 99 and image_level(99, 0.0) == -1 and image_level(99, 0.5) == 49
    d = GaussianDiffusion(num_timesteps=100)
    image = torch.rand(2, 1, 8, 8, 8)
    x = torch.randn(2, 3, 8, 8, 8)
    gens = make_generators([0, 1])
    clean = ImageReplacement(d, image, slice(0, 1), level_ratio=0.0)(x, 60, gens)
    assert torch.equal(clean[:, :1], image) and torch.equal(clean[:, 1:], x[:, 1:])
    paper = ImageReplacement(d, image, slice(0, 1))(x, 60, make_generators([0, 1]))
    assert not torch.equal(paper[:, :1], image)
    with pytest.raises(ValueError, match="level ratio"):
        ImageReplacement(d, image, slice(0, 1), level_ratio=1.5)


def test_image_level_below_one_needs_a_decoupled_network():
    layout = ChannelLayout(2)
    d = GaussianDiffusion(num_timesteps=20, prediction="x0")
    with pytest.raises(ValueError, match="image_time"):
        DiffAtlasSegmenter(tiny_unet(3), d, layout, ddim_plan(20, 4), sdf_clip=0.2, image_level=0.5)
    torch.manual_seed(0)
    net = UNet(in_channels=3, out_channels=3, base_channels=8, channel_mults=(1, 2), norm_groups=4,
               image_time=True)
    with pytest.raises(ValueError, match="t_image"):
        net(torch.zeros(1, 3, 8, 8, 8), torch.zeros(1, dtype=torch.long))
    seg = DiffAtlasSegmenter(net, d, layout, ddim_plan(20, 4), sdf_clip=0.2, image_level=0.0)
    labels = seg.segment(torch.rand(1, 1, 8, 8, 8) * 2 - 1, ["a"])
    assert labels.shape == (1, 8, 8, 8)


def test_selection_keeps_the_member_whose_generated_image_matches_the_scan():
    """Three members with distinct masks; only member 1's generated image is the scan (up to contrast), so
    its agreement is 1 and selection returns its mask, where mean fusion would not."""
    g = torch.Generator().manual_seed(0)
    scan = torch.rand(1, 1, 12, 12, 12, generator=g)
    generated = [torch.rand(1, 1, 12, 12, 12, generator=g), 0.5 * scan + 0.1, -scan]
    scores = torch.stack([image_agreement(img, scan) for img in generated])
    assert scores[1].item() == pytest.approx(1.0, abs=1e-5) and scores[2].item() == pytest.approx(-1.0, abs=1e-5)
    labels = np.zeros((3, 12, 12, 12), dtype=np.uint8)
    labels[0, :4], labels[1, 4:8], labels[2, 8:] = 1, 1, 1
    sdfs = torch.from_numpy(np.stack([encode_sdf(lab, 1, 3.0, 0.5) for lab in labels]))[:, None]
    chosen = fuse(sdfs, "select", scores)
    assert torch.equal(chosen[0], torch.from_numpy(labels[1]).long())
    assert not torch.equal(fuse(sdfs, "mean_sdf")[0], chosen[0])
    with pytest.raises(ValueError, match="scores"):
        fuse(sdfs, "select")


def test_segmenter_selection_is_seeded_and_picks_a_member():
    layout = ChannelLayout(2)
    d = GaussianDiffusion(num_timesteps=20, prediction="x0")
    net = tiny_unet(3)
    torch.nn.init.normal_(net.head[-1].weight, std=0.1)
    seg = DiffAtlasSegmenter(net, d, layout, ddim_plan(20, 4), sdf_clip=0.2, ensemble_size=3, fusion="select")
    images = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    members, scores = seg.sample_scored_members(images, ["c"])
    assert scores.shape == (3, 1) and ((scores >= -1) & (scores <= 1)).all()
    expected = decode_sdf_torch(members[scores[:, 0].argmax(), 0][None])[0]
    assert torch.equal(seg.segment(images, ["c"])[0], expected)


def _case(name: str, image: np.ndarray, label: np.ndarray) -> CaseData:
    return CaseData(case=name, image=image, label=label, affine=np.eye(4), spacing_mm=(1.0, 1.0, 1.0))


class _Data:
    """The two members of ``PreparedData`` the atlas baselines use, for hand-made cases."""

    def __init__(self, cases: dict[str, CaseData], num_structures: int):
        self.cases = tuple(cases)
        self.name = "hand"
        self.root = "hand"
        self.num_structures = num_structures
        self._cases = cases

    def load_case(self, case_id: str) -> CaseData:
        return self._cases[case_id]


def test_mean_and_nearest_atlas_on_hand_made_cases():
    shape = (4, 4, 4)
    labels = [np.zeros(shape, np.uint8) for _ in range(3)]
    labels[0][:2], labels[1][:3], labels[2][1:3] = 1, 1, 2
    images = [np.full(shape, 0.0, np.float32) for _ in range(3)]
    for i, img in enumerate(images):
        img[i] = 1.0                     # a bright plane at a different depth per case
    data = _Data({f"c{i}": _case(f"c{i}", images[i], labels[i]) for i in range(3)}, num_structures=2)
    mean = MeanAtlas()
    mean.fit(data, ["c0", "c1", "c2"])
    out = mean.segment(_case("new", images[0], labels[0]))
    # plane 0: votes 1, 1, 0 -> 1; plane 1: 1, 1, 2 -> 1; plane 2: 0, 1, 2 -> tie, lowest label 0; plane 3: 0
    assert out[0].max() == 1 and (out[1] == 1).all() and (out[2] == 0).all() and (out[3] == 0).all()
    nearest = NearestAtlas()
    nearest.fit(data, ["c0", "c1", "c2"])
    probe = images[2] * 3 + 0.5          # the image of c2 with another contrast
    assert nearest.nearest(_case("p", probe, labels[0])) == 2
    assert np.array_equal(nearest.segment(_case("p", probe, labels[0])), labels[2])
    with pytest.raises(RuntimeError, match="fit"):
        NearestAtlas().segment(_case("p", probe, labels[0]))
