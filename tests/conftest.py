"""Shared fixtures: small real and generated images written in every supported format."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMOSCOPE_CACHE_DIR", str(tmp_path / "cache"))


def smooth_image(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A random smooth image (distinct per draw), float32."""
    from scipy import ndimage

    return ndimage.gaussian_filter(rng.normal(size=shape), 3).astype(np.float32)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two patients' 2D images as 16-bit PNG, NPY and a 2D NIfTI."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    (root / "p1").mkdir(parents=True)
    (root / "p2").mkdir()
    u16 = (np.clip(smooth_image(rng, (40, 40)) * 3 + 0.5, 0, 1) * 65535).astype(np.uint16)
    Image.fromarray(u16).save(root / "p1" / "a.png")
    np.save(root / "p1" / "b.npy", smooth_image(rng, (40, 40)))
    nib.save(nib.Nifti1Image(smooth_image(rng, (40, 40)), np.eye(4)), str(root / "p2" / "c.nii.gz"))
    return root
