"""Shared fixtures: small real and generated images written in every supported format."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import settings
from PIL import Image

# Hypothesis's per-example deadline (200 ms by default) is a timed assert: on a loaded or slower machine an example
# that is correct but slow would fail. The properties are about values, so no deadline.
settings.register_profile("memoscope", deadline=None)
settings.load_profile("memoscope")

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _session_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Module- and session-scoped fixtures (built before the per-test ones below) never touch the user's own cache
    or home either: a read-only $HOME, or embeddings an older checkout left there, change nothing."""
    root = tmp_path_factory.mktemp("session")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEMOSCOPE_CACHE_DIR", str(root / "cache"))
        patch.setenv("MEMOSCOPE_HOME", str(root / "home"))
        yield


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMOSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MEMOSCOPE_HOME", str(tmp_path / "home"))  # working copies of demo studies stay in the test


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


@pytest.fixture(scope="session", autouse=True)
def _committed_demo_untouched() -> Iterator[None]:
    """No test may write into the committed demo studies, checkpoints or data (tests work on copies)."""
    import hashlib

    root = Path(__file__).resolve().parents[1]

    def snapshot() -> dict[str, str]:
        folders = [root / "studies", root / "checkpoints", root / "data"]
        return {
            str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for f in folders
            if f.is_dir()
            for p in sorted(f.rglob("*"))
            if p.is_file()
        }

    before = snapshot()
    yield
    after = snapshot()
    changed = sorted(set(before) ^ set(after) | {k for k in before if k in after and before[k] != after[k]})
    assert not changed, f"tests changed committed demo files: {changed[:5]}"


@pytest.fixture(scope="session")
def checkpoint_2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained 2D LDM checkpoint (16x16), saved as safetensors like any other."""
    from core.generative.ldm import build_autoencoder, build_unet, default_config, save_ldm

    config = default_config(2, (16, 16))
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ck") / "ldm2d"
    save_ldm(folder, config, build_autoencoder(config), build_unet(config))
    return folder
