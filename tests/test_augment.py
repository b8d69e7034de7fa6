"""Augmentation policies change the image, and `strong` is not `paper`."""

from __future__ import annotations

import numpy as np
import torch

from core.io.augment import AugmentPolicy, augment_batch, augmentation
from core.io.sample_data import REAL_VOLUMES, axial_slices


def _views(policy: AugmentPolicy, batch: torch.Tensor, seed: int = 0) -> torch.Tensor:
    transform = augmentation(policy, 2, [64, 64])
    transform.set_random_state(seed=seed)
    return augment_batch(transform, batch)


def test_every_policy_changes_real_slices_and_strong_differs_from_paper() -> None:
    slices = axial_slices(next(v for v in REAL_VOLUMES if v.subject == "mni152"), 64)[::10][:8]
    batch = torch.from_numpy(np.ascontiguousarray(slices[:, None] if slices.ndim == 3 else slices)).float()
    paper, strong = _views(AugmentPolicy.PAPER, batch), _views(AugmentPolicy.STRONG, batch)
    assert paper.shape == strong.shape == batch.shape
    changed = [(view - batch).abs().flatten(1).max(dim=1).values > 1e-3 for view in (paper, strong)]
    assert changed[0].float().mean() >= 0.5 and changed[1].float().mean() >= 0.75
    assert not torch.allclose(paper, strong)
    assert torch.equal(_views(AugmentPolicy.STRONG, batch), strong)  # seeded: the same views again
