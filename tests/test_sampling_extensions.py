"""Refinement from a coarse mask, ensembles with uncertainty, reconstruction guidance, and their config."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from diffatlas.data.io import write_volume
from diffatlas.data.layout import ChannelLayout
from diffatlas.data.sdf import decode_sdf_torch, encode_sdf
from diffatlas.diffusion.gaussian import GaussianDiffusion
from diffatlas.methods.diffatlas import DiffAtlasSegmenter, case_seed, member_seed
from diffatlas.builders import build_plan, sampling_options
from diffatlas.sampling.ensemble import fuse, uncertainty_map
from diffatlas.sampling.guidance import ReconstructionGuidance, lncc
from diffatlas.sampling.plans import ddim_plan, ddpm_plan, make_plan
from tests.conftest import tiny_unet

T = 20
LAYOUT = ChannelLayout(2)
CLIP, SCALE = 0.2, 4.0
ROOT = Path(__file__).resolve().parents[1]


def _net():
    net = tiny_unet(LAYOUT.num_channels)
    torch.nn.init.normal_(net.head[-1].weight, std=0.1)
    return net


NET = _net()


def _seg(plan, **kw):
    diffusion = GaussianDiffusion(num_timesteps=T, prediction="x0")
    return DiffAtlasSegmenter(NET, diffusion, LAYOUT, plan, sdf_clip=CLIP, sdf_scale_vox=SCALE, **kw)


def _images(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, 16, generator=g) * 2 - 1


def _coarse(n=2):
    """Boxes: structure 1 and, beside it, structure 2, shifted per case."""
    label = np.zeros((n, 16, 16, 16), dtype=np.uint8)
    for b in range(n):
        label[b, 3 + b:9 + b, 4:10, 4:12] = 1
        label[b, 10:14, 4:10, 4:12] = 2
    return label


@pytest.mark.parametrize("fusion, uncertainty", [("mean_sdf", "sdf_std"), ("vote", "entropy")])
def test_refinement_from_t0_minus_one_returns_the_coarse_mask(fusion, uncertainty, tmp_path):
    """start_t = -1 (x_0, "t0 = 0" in Ho et al.'s notation) is the empty plan: no noise, no network call; the
    result is the encoded coarse mask and decodes to the coarse labels exactly."""
    coarse = _coarse()
    seg = _seg(make_plan("ddpm", T, start_t=-1), ensemble_size=3, fusion=fusion, uncertainty=uncertainty)
    assert seg.refines and seg.network_evaluations == 0
    sdf = seg.sample_sdf(_images(), ["a", "b"], coarse=coarse)
    want = np.stack([encode_sdf(c, 2, SCALE, CLIP) for c in coarse])
    assert np.array_equal(sdf.numpy(), want)
    # every member is the same (the empty plan draws nothing that reaches the masks): zero uncertainty
    labels, unc = seg.segment_with_uncertainty(_images(), ["a", "b"], coarse=torch.from_numpy(coarse))
    assert np.array_equal(labels.numpy(), coarse) and unc.shape == (2, 16, 16, 16) and torch.all(unc == 0)
    # the same from NIfTI files, given per case or through coarse_dir
    for case, label in zip("ab", coarse):
        write_volume(tmp_path / f"{case}.nii.gz", label, np.diag([2.0, 2.0, 2.0, 1.0]))
    files = [tmp_path / "a.nii.gz", str(tmp_path / "b.nii.gz")]
    assert np.array_equal(seg.segment(_images(), ["a", "b"], coarse=files).numpy(), coarse)
    from_dir = _seg(make_plan("ddim", T, start_t=-1), coarse_dir=tmp_path)
    assert np.array_equal(from_dir.segment(_images(), ["a", "b"]).numpy(), coarse)


def test_refinement_starts_from_the_noised_coarse_mask_and_is_seeded():
    coarse = _coarse()
    seg = _seg(ddpm_plan(T, start_t=3), seed=5)
    a = seg.sample_sdf(_images(), ["a", "b"], coarse=coarse)
    assert torch.equal(a, _seg(ddpm_plan(T, start_t=3), seed=5).sample_sdf(_images(), ["a", "b"], coarse=coarse))
    assert not torch.equal(a, seg.sample_sdf(_images(), ["a", "b"], coarse=coarse[::-1].copy()))
    assert a.abs().max() <= CLIP + 1e-6
    # the start state is q(x_t0 | [image, coarse SDFs]) with the case's own noise
    gens = [torch.Generator().manual_seed(case_seed(5, c)) for c in "ab"]
    coarse_sdf = seg.encode_coarse(coarse, ["a", "b"], (16, 16, 16))
    x = seg._start_state(_images(), coarse_sdf, gens)
    ab = seg.diffusion.alphas_cumprod[3]
    gens = [torch.Generator().manual_seed(case_seed(5, c)) for c in "ab"]
    noise = torch.stack([torch.randn(3, 16, 16, 16, generator=g) for g in gens])
    assert torch.allclose(x[:, LAYOUT.masks], ab.sqrt() * coarse_sdf + (1 - ab).sqrt() * noise[:, 1:], atol=1e-6)


def test_identical_members_have_zero_uncertainty_and_fuse_to_themselves():
    sdf = torch.rand(1, 2, 2, 5, 5, 5) * 0.4 - 0.2
    members = sdf.expand(4, -1, -1, -1, -1, -1)
    for fusion in ("mean_sdf", "vote"):
        assert torch.equal(fuse(members, fusion), fuse(sdf, "mean_sdf"))
    for kind in ("sdf_std", "entropy"):
        assert torch.all(uncertainty_map(members, kind) == 0)


def test_vote_and_mean_sdf_by_hand():
    # one voxel, one case, 2 structures, 3 members: labels 1, 1, 2 (member 3 deep inside 2)
    members = torch.tensor([[-0.1, 0.1], [-0.1, 0.1], [0.3, -0.3]]).view(3, 1, 2, 1, 1, 1)
    assert fuse(members, "vote").item() == 1
    assert fuse(members, "mean_sdf").item() == 2  # mean SDFs 1/30 and -1/30
    p = torch.tensor([2 / 3, 1 / 3])
    assert math.isclose(uncertainty_map(members, "entropy").item(), float(-(p * p.log()).sum()), rel_tol=1e-6)
    assert math.isclose(uncertainty_map(members, "sdf_std").item(), float(members[:, 0, 0].std(unbiased=False)),
                        rel_tol=1e-5)
    tie = torch.tensor([[-0.1, 0.1], [0.1, -0.1]]).view(2, 1, 2, 1, 1, 1)
    assert fuse(tie, "vote").item() == 1  # ties go to the lowest label


def test_ensemble_is_seeded_repeatable_and_member_zero_is_the_plain_sample():
    plan = ddim_plan(T, 3, eta=0.0)
    images = _images()
    members = _seg(plan, seed=2, ensemble_size=3).sample_members(images, ["a", "b"])
    assert members.shape == (3, 2, 2, 16, 16, 16)
    assert not torch.equal(members[0], members[1])
    assert len({member_seed(2, "a", n) for n in range(5)}) == 5 and member_seed(2, "a", 0) == case_seed(2, "a")
    # separately built segmenters repeat the members exactly
    seg = _seg(plan, seed=2, ensemble_size=3, fusion="vote", uncertainty="entropy")
    labels, unc = seg.segment_with_uncertainty(images, ["a", "b"])
    assert torch.equal(labels, fuse(members, "vote")) and torch.equal(unc, uncertainty_map(members, "entropy"))
    assert labels.shape == unc.shape == (2, 16, 16, 16) and unc.dtype == torch.float32
    assert uncertainty_map(members, "sdf_std").max() > 0
    plain = _seg(plan, seed=2)
    assert torch.equal(plain.sample_sdf(images, ["a", "b"]), members[0])
    labels, unc = plain.segment_with_uncertainty(images, ["a", "b"])
    assert unc is None and torch.equal(labels, decode_sdf_torch(members[0]))


def test_guidance_scale_zero_is_bit_identical_and_installs_nothing(monkeypatch):
    plan = ddim_plan(T, 3, eta=1.0)
    images = _images()
    plain = _seg(plan, seed=1).sample_sdf(images, ["a", "b"])

    def forbidden(*args, **kwargs):
        raise AssertionError("guidance must not be built at scale 0")

    monkeypatch.setattr("diffatlas.methods.diffatlas.ReconstructionGuidance", forbidden)
    assert torch.equal(plain, _seg(plan, seed=1, guidance_scale=0.0).sample_sdf(images, ["a", "b"]))
    monkeypatch.undo()
    guided = _seg(plan, seed=1, guidance_scale=0.02).sample_sdf(images, ["a", "b"])
    assert not torch.equal(plain, guided) and guided.abs().max() <= CLIP + 1e-6


def test_guidance_moves_only_the_mask_channels_uphill():
    image = _images(1)
    x_t = torch.randn(1, LAYOUT.num_channels, 16, 16, 16).requires_grad_(True)
    x0_hat = x_t * torch.linspace(0.5, 1.5, LAYOUT.num_channels).view(1, -1, 1, 1, 1) + x_t[:, 1:2]
    step = ReconstructionGuidance(image, LAYOUT.image, LAYOUT.masks, scale=0.01)(x_t, x0_hat, 5)
    assert torch.all(step[:, LAYOUT.image] == 0) and not step.requires_grad
    assert math.isclose(step[:, LAYOUT.masks].pow(2).mean().sqrt().item(), 0.01, rel_tol=1e-4)
    before = lncc(x0_hat[:, LAYOUT.image], image)
    moved = x_t.detach() + step
    after = lncc((moved * torch.linspace(0.5, 1.5, 3).view(1, -1, 1, 1, 1) + moved[:, 1:2])[:, LAYOUT.image], image)
    assert after > before


def test_lncc():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 12, 12, 12, generator=g)
    assert torch.allclose(lncc(a, a), torch.ones(2), atol=1e-2)
    assert torch.allclose(lncc(a, 1 - 3 * a), torch.ones(2), atol=1e-2)  # contrast and its sign are ignored
    assert lncc(a, torch.rand(2, 1, 12, 12, 12, generator=g)).max() < 0.2
    assert lncc(a[..., 0], a[..., 0], window=3).shape == (2,)
    with pytest.raises(ValueError, match="odd"):
        lncc(a, a, window=4)


def test_bad_sampler_options_are_explained():
    plan = ddim_plan(T, 3)
    with pytest.raises(ValueError, match="unknown fusion 'median'; allowed: 'mean_sdf', 'vote'"):
        _seg(plan, fusion="median")
    with pytest.raises(ValueError, match="unknown uncertainty 'var'; allowed: 'sdf_std', 'entropy'"):
        _seg(plan, uncertainty="var")
    with pytest.raises(ValueError, match="ensemble_size must be >= 1"):
        _seg(plan, ensemble_size=0)
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        _seg(plan, guidance_scale=-1.0)
    with pytest.raises(ValueError, match="guidance_window"):
        _seg(plan, guidance_window=4)
    with pytest.raises(ValueError, match=r"start_t must lie in -1\.\.19"):
        make_plan("ddpm", T, start_t=T)
    with pytest.raises(ValueError, match="outside"):
        _seg(ddpm_plan(50))
    refine = _seg(ddpm_plan(T, start_t=4))
    with pytest.raises(ValueError, match="refinement needs a coarse mask"):
        refine.segment(_images(), ["a", "b"])
    with pytest.raises(ValueError, match=r"case b has shape \(16, 16, 8\), the image has \(16, 16, 16\)"):
        refine.segment(_images(), ["a", "b"], coarse=[_coarse()[0], _coarse()[1][..., :8]])
    with pytest.raises(ValueError, match="2 coarse masks for 1 cases"):
        refine.segment(_images(1), ["a"], coarse=_coarse())
    with pytest.raises(FileNotFoundError, match="coarse mask not found"):
        refine.segment(_images(1), ["a"], coarse=["/nonexistent/a.nii.gz"])
    diffusion = GaussianDiffusion(num_timesteps=T, prediction="x0")
    with pytest.raises(ValueError, match="sdf_scale_vox"):
        DiffAtlasSegmenter(NET, diffusion, LAYOUT, ddpm_plan(T, start_t=4), sdf_clip=CLIP).segment(
            _images(1), ["a"], coarse=_coarse(1))


PLAN_KEYS = {"plan", "num_steps", "eta", "start_t", "jump_length", "jump_n_sample", "coarse_dir", "image_level"}
SAMPLER_CONFIGS = sorted(p.stem for p in (ROOT / "configs" / "sampler").glob("*.yaml"))


@pytest.mark.parametrize("name", SAMPLER_CONFIGS)
def test_sampler_configs_hold_the_timestep_plan_only(name, tmp_path):
    cfg = OmegaConf.load(ROOT / "configs" / "sampler" / f"{name}.yaml")
    assert set(cfg) <= PLAN_KEYS and not set(cfg) & set(DiffAtlasSegmenter.CASE_KEYS)
    if name == "refine":
        cfg.coarse_dir, cfg.start_t = str(tmp_path), 4
    cfg = OmegaConf.to_container(cfg)
    plan = build_plan(cfg, T)
    assert plan.timesteps[-1] == -1
    inference = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "inference" / "default.yaml"))
    options = sampling_options(cfg, inference)
    assert options["ensemble_size"] == 1 and options["guidance_scale"] == 0.0 and options["seed"] == 0
    if name == "refine":
        seg = _seg(plan, **options)
        assert seg.refines and seg.coarse_dir == tmp_path
    with pytest.raises(ValueError, match=r"^sampler.ensemble_size moved to inference.ensemble_size \(the sampler"):
        build_plan({**cfg, "ensemble_size": 3}, T)


def test_the_inference_group_holds_every_per_case_setting_and_reaches_the_sampler():
    keys = set(DiffAtlasSegmenter.CASE_KEYS) | {"roi", "roi_passes", "roi_margin_mm", "postprocess"}
    default = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "inference" / "default.yaml"))
    assert set(default) == keys and default["roi"] == "label"
    assert default["postprocess"] == {"largest_component": [], "fill_holes": []}
    segment = OmegaConf.load(ROOT / "configs" / "inference" / "segment.yaml")
    assert list(segment.defaults) == ["default", "_self_"] and segment.roi == "auto" and segment.box_file is None
    assert "postprocess" not in segment   # none by default, as in `default` (measured: README)
    plan = make_plan("ddim", T, num_steps=3)
    options = sampling_options({"plan": "ddim", "num_steps": 3},
                               {**default, "seed": 4, "ensemble_size": 2, "fusion": "vote", "uncertainty": "entropy",
                                "guidance_scale": 0.01, "guidance_window": 3, "bf16": False})
    seg = _seg(plan, **options)
    assert (seg.seed, seg.ensemble_size, seg.fusion, seg.uncertainty, seg.guidance_scale, seg.guidance_window) == \
        (4, 2, "vote", "entropy", 0.01, 3)
    labels, spread = seg.segment_with_uncertainty(_images(1), ["a"])
    assert spread is not None and spread.shape == labels.shape