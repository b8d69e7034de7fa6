"""Real brain scans that ship inside pip packages (nibabel, dipy, nilearn): no download needed."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from core.io.preprocessing import PreprocessSpec, is_constant, one_torch_thread, preprocess


@dataclass(frozen=True)
class RealVolume:
    """One real scan: subject ID, file, origin and licence."""

    subject: str
    package: str
    relative_path: str
    licence: str
    volume_index: int | None = None

    @property
    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"package {self.package} is not installed")
        return Path(spec.origin).parent / self.relative_path

    def load(self) -> npt.NDArray[np.float32]:
        """The 3D volume as float32 (first volume of a 4D series when ``volume_index`` is set)."""
        data = np.asanyarray(nib.load(self.path).dataobj).astype(np.float32)  # type: ignore[attr-defined]
        data = np.squeeze(data)
        if self.volume_index is not None:
            data = data[..., self.volume_index]
        return data


# One entry per subject: derived files of the same subject (denoised, resampled) are left out.
REAL_VOLUMES: tuple[RealVolume, ...] = (
    RealVolume(
        "mni152",
        "nilearn",
        "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "ICBM 2009 template: free use with attribution (nilearn, BSD-3)",
    ),
    RealVolume("nibabel-example4d", "nibabel", "tests/data/example4d.nii.gz", "MIT (nibabel)", volume_index=0),
    RealVolume("nibabel-anatomical", "nibabel", "tests/data/anatomical.nii", "MIT (nibabel)"),
    RealVolume("dipy-s0-10slices", "dipy", "data/files/S0_10slices.nii.gz", "BSD-3 (dipy)"),
    RealVolume("dipy-aniso-vox", "dipy", "data/files/aniso_vox.nii.gz", "BSD-3 (dipy)"),
    RealVolume("dipy-piesno", "dipy", "data/files/test_piesno.nii.gz", "BSD-3 (dipy)"),
)


def axial_slices(
    volume: RealVolume, size: int = 64, step: int = 1, min_fraction: float = 0.15
) -> npt.NDArray[np.float32]:
    """Non-empty axial slices of a volume, min-max scaled and resized: ``(N, 1, size, size)``.

    A slice is kept when at least ``min_fraction`` of its voxels are above 10 % of the
    volume's 99th percentile (drops the near-empty slices at the ends of the brain).
    """
    data = volume.load()
    cutoff = 0.1 * float(np.percentile(data, 99))
    spec = PreprocessSpec((size, size))
    out = []
    with one_torch_thread():  # the same slices on any machine
        for k in range(0, data.shape[2], step):
            plane = data[:, :, k]
            if is_constant(plane) or float((plane > cutoff).mean()) < min_fraction:
                continue
            out.append(preprocess(plane[None], spec))
    return np.stack(out) if out else np.zeros((0, 1, size, size), np.float32)


def volume_cube(volume: RealVolume, size: int = 32) -> npt.NDArray[np.float32]:
    """The whole volume min-max scaled and resized to ``(1, size, size, size)``, the same on any machine."""
    with one_torch_thread():
        return preprocess(volume.load()[None], PreprocessSpec((size, size, size)))
