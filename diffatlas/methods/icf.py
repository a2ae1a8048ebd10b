"""ICF: image-conditional feedforward segmentation, the paper's baseline (a) (an nnU-Net-like 3D U-Net).

The network is the project's ``UNet`` without time input: one image channel in, ``K + 1`` logits out
(background and the K structures). It is trained with the project ``Trainer`` (same optimiser, EMA,
flips and seeding as DiffAtlas) on cross-entropy plus soft Dice, and segments with the EMA weights by a
voxelwise argmax. Its checkpoints record the network and the training data's preparation, so
``ICF.from_checkpoint`` (and ``Segmenter.from_checkpoint``) rebuild it to segment new scans.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from diffatlas.data.datasets import CaseData, PreparedData
from diffatlas.device import resolve_device
from diffatlas.methods.base import check_segmenter_record, check_train_cases, plain, segmenter_record
from diffatlas.nets.unet import UNet
from diffatlas.training.augment import make_augment
from diffatlas.training.trainer import Objective, Trainer, TrainSettings, load_checkpoint

logger = logging.getLogger(__name__)

_RESERVED_NETWORK_KEYS = ("in_channels", "out_channels", "time_conditioned")


class ImageLabelDataset(Dataset):
    """Items ``(2, X, Y, Z)`` float32: channel 0 the image in [-1, 1], channel 1 the label values.

    Image and label travel in one tensor so the trainer's random flips move both together.
    """

    def __init__(self, data: PreparedData, cases: Sequence[str]):
        self.items = []
        for case_id in cases:
            case = data.load_case(case_id)
            image = np.clip(case.image, -1.0, 1.0)
            self.items.append(torch.from_numpy(np.stack([image, case.label.astype(np.float32)])))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.items[index].clone()


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ce_weight: float, dice_weight: float) -> torch.Tensor:
    """``ce_weight * CE + dice_weight * (1 - soft Dice)`` of ``logits`` ``(B, K + 1, *spatial)`` against
    integer ``labels`` ``(B, *spatial)``.

    Soft Dice per foreground class ``k``: ``2 sum(p_k y_k) / (sum(p_k) + sum(y_k))`` over the batch and
    space (p the softmax, y one-hot), averaged over classes, with 1 added to numerator and denominator
    so that a class absent from prediction and reference scores 1.
    """
    num_classes = logits.shape[1]
    ce = F.cross_entropy(logits, labels)
    probs = logits.softmax(dim=1)[:, 1:]
    onehot = F.one_hot(labels, num_classes).movedim(-1, 1)[:, 1:].to(probs.dtype)
    dims = (0, *range(2, probs.ndim))
    overlap = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    soft_dice = ((2 * overlap + 1) / (total + 1)).mean()
    return ce_weight * ce + dice_weight * (1 - soft_dice)


def segmentation_objective(ce_weight: float = 1.0, dice_weight: float = 1.0) -> Objective:
    """The trainer objective for ``ImageLabelDataset`` batches ``(B, 2, *spatial)`` (no random draws)."""

    def objective(model: nn.Module, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        logits = model(batch[:, :1])
        return segmentation_loss(logits.float(), batch[:, 1].round().long(), ce_weight, dice_weight)

    return objective


class ICF:
    """3D U-Net segmenter trained with Dice + cross-entropy.

    Args:
        out_dir: run folder for the trainer's checkpoints and TensorBoard logs; a run there resumes.
        network: ``UNet`` keyword arguments except ``in_channels``, ``out_channels`` and
            ``time_conditioned`` (ICF sets 1, K + 1 and False).
        augment: an ``augment`` config (``configs/augment/``; ``None`` or ``enabled: false`` = none), applied to
            every training batch: the same augmentation DiffAtlas gets in a comparison.
        training: ``TrainSettings`` keyword arguments (steps, batch_size, lr, flip_axes, seed, ...).
        ce_weight, dice_weight: loss weights, non-negative and not both zero.
        device: where to train and segment: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    """

    name = "ICF"

    def __init__(
        self,
        *,
        out_dir: str | Path,
        network: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
        augment: dict[str, Any] | None = None,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        device: str = "auto",
    ):
        self.network = dict(network or {})
        reserved = [key for key in _RESERVED_NETWORK_KEYS if key in self.network]
        if reserved:
            raise ValueError(f"network must not set {reserved}: ICF sets them from the dataset")
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ValueError(f"ce_weight and dice_weight must be >= 0 and not both 0, got {ce_weight}, {dice_weight}")
        self.settings = TrainSettings(**(training or {}))
        self.augment = make_augment(augment, label_channels=(1,))
        self.out_dir = Path(out_dir)
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.device = resolve_device(device)
        self.model: nn.Module | None = None

    def build_network(self, num_structures: int) -> UNet:
        """A freshly initialised network (weights drawn from ``training.seed``)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.settings.seed)
            return UNet(**self.network, in_channels=1, out_channels=num_structures + 1, time_conditioned=False)

    def fit(self, data: PreparedData, train_cases: Sequence[str]) -> None:
        """Train on ``train_cases`` for ``training.steps`` steps and keep the EMA network."""
        cases = check_train_cases(data, train_cases)
        trainer = Trainer(self.build_network(data.num_structures),
                          segmentation_objective(self.ce_weight, self.dice_weight),
                          ImageLabelDataset(data, cases), self.out_dir, self.settings,
                          config={"method": "ICF", "dataset": data.name, "train_cases": list(cases),
                                  "augment": self.augment is not None, "network": plain(self.network),
                                  **segmenter_record(data)},
                          device=self.device, augment=self.augment)
        scalars = trainer.fit()
        logger.info("ICF trained on %d cases of %s: %s", len(cases), data.name, scalars)
        self.model = trainer.ema.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> "ICF":
        """The fitted ICF of a checkpoint written by ``fit`` (its EMA weights), ready to segment."""
        ckpt = load_checkpoint(path)
        stored = ckpt["config"]
        check_segmenter_record(stored, path, cls.name, extra=("network",))
        icf = cls(out_dir=Path(path).parent, network=stored["network"], device=device)
        model = icf.build_network(len(stored["structures"]))
        model.load_state_dict(ckpt["ema"])
        icf.model = model.to(icf.device).eval()
        return icf

    def segment(self, case: CaseData) -> np.ndarray:
        """Label map ``(X, Y, Z)`` uint8: the argmax of the EMA network's logits."""
        return self.segment_grid(case.image, case.case)

    @torch.no_grad()
    def segment_grid(self, image: np.ndarray, case_id: str = "") -> np.ndarray:
        """Label map ``(X, Y, Z)`` uint8 of an image ``(X, Y, Z)`` in [-1, 1] on the training grid (``case_id``
        is unused: the network draws nothing)."""
        if self.model is None:
            raise RuntimeError("ICF has no trained network: call fit(data, train_cases) first")
        if image.ndim != 3:
            raise ValueError(f"expected a 3D (X, Y, Z) image, got shape {image.shape}")
        image = torch.from_numpy(np.clip(image, -1.0, 1.0).astype(np.float32))[None, None].to(self.device)
        logits = self.model(image)
        return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
