"""Augmentation policies for contrastive views and LDM training batches (2D and 3D alike, MONAI transforms)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING

from core.common.config import parse_option

if TYPE_CHECKING:  # torch and MONAI load when a policy is built, not when its name is parsed
    import torch
    from monai.transforms import Compose


class AugmentPolicy(StrEnum):
    PAPER = "paper"
    STRONG = "strong"


def augmentation(policy: AugmentPolicy, spatial_dims: int, image_size: Sequence[int]) -> Compose:
    """The view-2 transform for one ``(1, *S)`` image in [-1, 1]."""
    from monai.transforms import (
        Compose,
        RandAdjustContrast,
        RandAffine,
        RandAxisFlip,
        RandGaussianNoise,
        RandGaussianSmooth,
        RandRotate,
        RandScaleIntensity,
        RandShiftIntensity,
    )

    angle = math.radians(5.0)
    third = 0.0 if spatial_dims == 2 else angle  # ranges beyond the image's dimensions are ignored in 2D
    paper = [
        RandRotate(range_x=angle, range_y=third, range_z=third, prob=0.5, keep_size=True, padding_mode="border"),
        RandAxisFlip(prob=0.5),
    ]
    if parse_option(AugmentPolicy, policy, "augmentation") == AugmentPolicy.PAPER:
        return Compose(paper)
    shift = [0.04 * s for s in image_size]
    return Compose(
        [
            *paper,
            RandAffine(prob=0.5, translate_range=shift, padding_mode="border"),
            RandScaleIntensity(factors=0.1, prob=0.5),
            RandShiftIntensity(offsets=0.1, prob=0.5),
            RandAdjustContrast(prob=0.5, gamma=(0.8, 1.25)),
            RandGaussianSmooth(sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), sigma_z=(0.25, 1.0), prob=0.3),
            RandGaussianNoise(prob=0.5, std=0.03),
        ]
    )


def augment_batch(transform: Compose, batch: torch.Tensor) -> torch.Tensor:
    """Apply a per-sample MONAI transform to ``(B, 1, *S)``; the transform's RNG advances."""
    import torch

    return torch.stack([torch.as_tensor(transform(image)).as_subclass(torch.Tensor) for image in batch]).float()
