"""Scale: the whole default scan (``python -m core scan``) at growing training-set sizes, end to end.

Sets of N training images (N/4 validation, N/4 synthetic) are built from the project's real scans
(``core/io/sample_data.py``) and written as a user would give them to ``scan``: one folder per patient (16-bit PNG
slices in 2D, NIfTI crops in 3D; ``--patients auto`` reads the folders), the synthetic samples in one flat folder
under shuffled names. A *patient* is one smooth elastic deformation, a small rigid move and zoom, and a mild
intensity change (gamma, a smooth bias field) applied to one real subject: in 2D to a run of 8 neighbouring slices
(at a random height, up to 4 of the subject's slices apart), in 3D to the whole volume, of which 4 crops of 32^3
are taken at distinct positions. Every image also gets its own faint noise, so no two are the same image. Training
patients are made from two subjects, validation and unseen patients (all different patients) from the four others
(``SUBJECTS``). The synthetic set is unseen patients' images with planted copies of training images (level 1 of
every change in ``core/detect/planted.py``, 10 % of the set). A copy counts as found when flagged *and* its nearest
training image is its source; the unseen FPR is the share of unseen-patient images flagged; intervals are Wilson's.
Two patients made from the same slices of one subject differ more than a planted copy differs from its source
(:func:`separation` measures it on every run, on the scan's own verified score).

Each size's set is built, then scanned, in its own fresh process, so that the scan's peak memory (its process's
peak RSS; the loader's workers are separate processes, reported on their own) does not carry over. The scan is
called exactly as the CLI calls it (``config_from_options(ScanConfig, ...)`` then ``run_scan``) with only what a
user gives: the three folders, the output folder and the patients rule. ``--detector-overrides`` (JSON of
``DetectorConfig`` keys) is for short development runs; the default is the scan's own.

``--search-only N``: embedding, search, verification and calibration alone (the scan's own stage functions) over
N training images held in a memory-mapped array, with a detector given by ``--detector`` or trained on a
1,000-image subset first (not timed). Usage:

    PYTHONPATH=. .venv/bin/python benchmarks/scale_scan.py [--sizes 1000 4000 16000] [--dims 2] [--write]
    PYTHONPATH=. .venv/bin/python benchmarks/scale_scan.py --dims 3 --sizes 1000 4000 --write
    PYTHONPATH=. .venv/bin/python benchmarks/scale_scan.py --search-only 100000 --write
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import multiprocessing
import os
import platform
import resource
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
import numpy.typing as npt

from core.detect.planted import CHANGES, plant_copies
from core.io.sample_data import REAL_VOLUMES, axial_slices, volume_cube

# the real subjects each role's patients are made from. Training subjects are never held out, so an unseen image
# flagged is a false positive, not a near-duplicate of a training scan. Validation and unseen patients are
# different patients of the same four held-out subjects: the threshold is calibrated on patients of the population
# the unseen ones come from (with disjoint held-out subjects, two per role, the unseen FPR measured how unlike the
# two validation subjects the two unseen ones are: 6 % at 200 training images, 30 % at 400).
HELD_OUT = ("nibabel-anatomical", "dipy-s0-10slices", "dipy-aniso-vox", "dipy-piesno")
SUBJECTS = {"train": ("mni152", "nibabel-example4d"), "val": HELD_OUT, "synthetic": HELD_OUT}
PREFIX = {"train": "tr", "val": "va", "synthetic": "un"}
SIDE = {2: 64, 3: 32}  # the scan's default grid
CUBE = 48  # 3D: each subject's volume at 48^3, of which 32^3 crops are taken
CROP_OFFSETS = (0, 8, 16)  # 3D crop positions per axis: two crops of one patient are >= 8 voxels apart
PER_PATIENT = {2: 8, 3: 4}  # slices (2D) or crops (3D) per patient
MAX_STEP = 4.0  # 2D: a patient's slices are 0.6 to 1 times this many stack slices apart (fewer in a short stack)
COPY_FRACTION = 0.1
SCAN_SIZES = {2: (1000, 4000, 16000), 3: (1000, 4000)}
Image = npt.NDArray[np.float32]
T = TypeVar("T")


@dataclass(frozen=True)
class Variation:
    """How one patient differs from another made from the same subject (all drawn per patient).

    warp_px: largest elastic displacement (voxels of the rendered grid), drawn in [0.75, 1] of it; smooth_px: the
    field's Gaussian smoothing. rotate_deg, zoom, shift_px: the rigid move (uniform in +-). gamma: intensity
    exponent in [1 / (1 + gamma), 1 + gamma]; bias: a smooth multiplicative field up to +-bias. noise: sigma of each
    image's own Gaussian noise (of the [-1, 1] range).
    """

    warp_px: float
    smooth_px: float
    rotate_deg: float = 5.0
    zoom: float = 0.05
    shift_px: float = 2.0
    gamma: float = 0.2
    bias: float = 0.08
    noise: float = 0.01


VARIATION = {2: Variation(warp_px=5.0, smooth_px=8.0), 3: Variation(warp_px=7.0, smooth_px=4.0)}


# ---------------------------------------------------------------------------------------------------- patients


def _bases(dims: int, role: str) -> list[tuple[str, Image]]:
    """Each subject of ``role``: 2D its non-empty axial slices ``(Z, 64, 64)``, 3D its volume at ``48^3``."""
    return _subject_bases(dims, SUBJECTS[role])


@functools.cache
def _subject_bases(dims: int, subjects: tuple[str, ...]) -> list[tuple[str, Image]]:
    found = []
    for volume in REAL_VOLUMES:
        if volume.subject in subjects:
            base = axial_slices(volume, SIDE[2])[:, 0] if dims == 2 else volume_cube(volume, CUBE)[0]
            found.append((volume.subject, np.ascontiguousarray(base, dtype=np.float32)))
    return found


def _smooth_fields(rng: np.random.Generator, count: int, channels: int, shape: tuple[int, ...], sigma: float) -> Image:
    """``count`` smooth random fields of ``channels`` components, each scaled to a largest magnitude of 1: white noise
    smoothed by a Gaussian of ``sigma`` voxels, in Fourier space (periodic; its cost does not grow with ``sigma``)."""
    axes = tuple(range(2, 2 + len(shape)))
    spectrum = np.fft.rfftn(rng.standard_normal((count, channels, *shape)), axes=axes)
    frequencies = [np.fft.fftfreq(s) for s in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    squared = sum(np.meshgrid(*[f**2 for f in frequencies], indexing="ij", sparse=True))
    spectrum *= np.exp(-2.0 * (np.pi * sigma) ** 2 * squared)
    fields = np.fft.irfftn(spectrum, s=shape, axes=axes).astype(np.float32)
    peak = np.abs(fields).reshape(count, -1).max(axis=1)
    return fields / peak.reshape(-1, *([1] * (fields.ndim - 1)))


def _rotation(rng: np.random.Generator, dims: int, degrees: float) -> npt.NDArray[np.float64]:
    """A random rotation: 2D about the centre, 3D three small turns about the axes in turn."""
    angles = np.deg2rad(rng.uniform(-degrees, degrees, size=1 if dims == 2 else 3))
    matrix = np.eye(dims)
    pairs = [(0, 1)] if dims == 2 else [(0, 1), (0, 2), (1, 2)]
    for angle, (i, j) in zip(angles, pairs, strict=True):
        turn = np.eye(dims)
        turn[i, i] = turn[j, j] = math.cos(angle)
        turn[i, j], turn[j, i] = -math.sin(angle), math.sin(angle)
        matrix = turn @ matrix
    return matrix


@dataclass(frozen=True)
class Patients:
    """A batch of patients of one subject: each one's move, elastic field and intensity change, and (2D) the
    heights of its slices in the subject's stack."""

    matrix: npt.NDArray[np.float64]  # (B, d, d): output voxel p reads the base at c + matrix (p - c) + shift + field
    shift: npt.NDArray[np.float64]  # (B, d)
    field: Image  # (B, d, *S)
    gamma: npt.NDArray[np.float64]  # (B,)
    bias: Image  # (B, *S): multiplicative, 1 +- variation.bias
    heights: npt.NDArray[np.float64]  # 2D: (B, L) slice positions in the stack; 3D: (B, 0)


def draw_patients(
    rng: np.random.Generator, dims: int, count: int, variation: Variation, depth: int = 0, heights: Any = None
) -> Patients:
    """``count`` patients' variations; 2D: runs of ``PER_PATIENT`` slices of a ``depth``-slice stack at a random height,
    0.6 to 1 times ``MAX_STEP`` slices apart (less in a short stack; ``heights``: given heights instead, to make
    patients of the same slices)."""
    side = SIDE[2] if dims == 2 else CUBE
    shape = (side,) * dims
    zooms = rng.uniform(1 - variation.zoom, 1 + variation.zoom, size=count)
    matrix = np.stack([_rotation(rng, dims, variation.rotate_deg) / z for z in zooms])
    shift = rng.uniform(-variation.shift_px, variation.shift_px, size=(count, dims))
    amplitude = variation.warp_px * rng.uniform(0.75, 1.0, size=count).astype(np.float32)
    warp = _smooth_fields(rng, count, dims, shape, variation.smooth_px) * amplitude.reshape(-1, *[1] * (dims + 1))
    gamma = np.exp(rng.uniform(-1.0, 1.0, size=count) * math.log1p(variation.gamma))
    bias = 1.0 + variation.bias * _smooth_fields(rng, count, 1, shape, side / 4)[:, 0]
    if heights is None and dims == 2:
        run = PER_PATIENT[2]
        step = rng.uniform(0.6, 1.0, size=count) * min(MAX_STEP, (depth - 1) / (run - 1))
        start = rng.uniform(0.0, 1.0, size=count) * np.maximum(0.0, depth - 1 - (run - 1) * step)
        heights = start[:, None] + step[:, None] * np.arange(run)
    found = np.zeros((count, 0)) if heights is None else np.asarray(heights, dtype=np.float64)
    return Patients(matrix, shift, warp.astype(np.float32), gamma, bias.astype(np.float32), found)


def _coordinates(patients: Patients, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """Where each output voxel of each patient reads its subject: ``(B, d, *S)``."""
    dims = len(shape)
    centre = (np.array(shape) - 1) / 2.0
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")) - centre.reshape(
        -1, *([1] * dims)
    )
    moved = np.einsum("bij,j...->bi...", patients.matrix, grid)
    offset = (centre + patients.shift).reshape(len(patients.shift), dims, *([1] * dims))
    return moved + offset + patients.field


def _intensity(images: Image, gamma: npt.NDArray[np.float64], bias: Image) -> Image:
    """Gamma and bias field on ``(B, ..., *S)`` images in [-1, 1] (each patient's own along axis 0)."""
    extra = images.ndim - bias.ndim
    g = gamma.reshape(-1, *([1] * (images.ndim - 1))).astype(np.float32)
    b = bias.reshape(bias.shape[0], *([1] * extra), *bias.shape[1:])
    level = np.clip((images + 1.0) / 2.0, 0.0, 1.0) ** g * b
    return (2.0 * level - 1.0).astype(np.float32)


def render(base: Image, patients: Patients, rng: np.random.Generator, noise: float) -> Image:
    """The patients' images of one subject. 2D: ``(B, L, 64, 64)``, slice ``l`` at height ``heights[b, l]`` of the
    ``(Z, 64, 64)`` stack; 3D: ``(B, 48, 48, 48)`` deformed volumes (crops are taken by :func:`crops`; their noise
    is added there)."""
    from scipy import ndimage

    dims = patients.matrix.shape[1]
    shape = base.shape[1:] if dims == 2 else base.shape
    coords = _coordinates(patients, shape)  # (B, d, *S)
    if dims == 2:
        b, run = patients.heights.shape
        planes = np.broadcast_to(coords[:, None], (b, run, *coords.shape[1:]))  # (B, L, 2, H, W)
        height = np.broadcast_to(patients.heights[:, :, None, None, None], (b, run, 1, *shape))
        points = np.concatenate([height, planes], axis=2)  # (B, L, 3, H, W)
        points = np.moveaxis(points, 2, 0).reshape(3, -1)
        out = ndimage.map_coordinates(base, points, order=1, mode="nearest").reshape(b, run, *shape)
        out = _intensity(out.astype(np.float32), patients.gamma, patients.bias)
        out += rng.normal(0.0, noise, out.shape).astype(np.float32)
        return np.clip(out, -1.0, 1.0)
    volumes = [ndimage.map_coordinates(base, c, order=1, mode="nearest") for c in coords]
    return _intensity(np.stack(volumes).astype(np.float32), patients.gamma, patients.bias)


CROP_GRID = [(i, j, k) for i in CROP_OFFSETS for j in CROP_OFFSETS for k in CROP_OFFSETS]


def crops(volume: Image, positions: npt.ArrayLike, rng: np.random.Generator, noise: float) -> Image:
    """32^3 crops of a 48^3 volume at ``positions`` (indices of ``CROP_GRID``), each with its own noise."""
    side = SIDE[3]
    out = np.stack(
        [
            volume[i : i + side, j : j + side, k : k + side]
            for i, j, k in (CROP_GRID[int(p)] for p in np.ravel(positions))
        ]
    )
    return np.clip(out + rng.normal(0.0, noise, out.shape).astype(np.float32), -1.0, 1.0)


def role_images(
    rng: np.random.Generator, dims: int, role: str, total: int, variation: Variation
) -> Iterator[tuple[str, str, Image]]:
    """``total`` images of ``role``'s patients, one patient's at a time: ``(patient, subject, (L, *S))``; patients are
    drawn from the role's subjects (2D: in proportion to their slices) and batched per subject."""
    bases = _bases(dims, role)
    per = PER_PATIENT[dims]
    n_patients = math.ceil(total / per)
    weights = np.array([len(b) if dims == 2 else 1 for _, b in bases], dtype=np.float64)
    subject_of = rng.choice(len(bases), size=n_patients, p=weights / weights.sum())
    made, number = 0, 0
    batch = 32 if dims == 2 else 4  # patients rendered together (3D: their coordinates are 10 MiB each)
    for start in range(0, n_patients, batch):
        chunk = subject_of[start : start + batch]
        for s in np.unique(chunk):
            name, base = bases[int(s)]
            count = int((chunk == s).sum())
            patients = draw_patients(rng, dims, count, variation, depth=len(base))
            images = render(base, patients, rng, variation.noise)
            for one in images:
                if dims == 3:
                    one = crops(one, rng.choice(len(CROP_GRID), size=per, replace=False), rng, variation.noise)
                keep = one[: total - made]
                number += 1
                made += len(keep)
                yield f"{PREFIX[role]}{number:05d}", name, keep
                if made >= total:
                    return


# ---------------------------------------------------------------------------------------------------- writing


def _suffix(dims: int) -> str:
    return ".png" if dims == 2 else ".nii"


def write_image(path: Path, image: Image) -> None:
    """2D: a 16-bit greyscale PNG of [-1, 1] (the scan rescales each image's own range); 3D: a float32 NIfTI."""
    if image.ndim == 2:
        from PIL import Image as PILImage

        PILImage.fromarray(np.round((image + 1.0) * 32767.5).astype(np.uint16)).save(path)
        return
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(image, dtype=np.float32), np.eye(4)), str(path))


WRITERS = 4  # threads writing image files (opening and compressing a file let go of the GIL)
PENDING = 512  # images waiting to be written at most (bounds memory whatever the set's size)


class _Sink:
    """One role's images as they are made: files in patient folders (``files``; the synthetic set flat), written by
    a few threads, or rows of one ``.npy`` array (``--search-only``: the scan's stages read it memory-mapped, as they
    would the loader's spill file; written with plain file writes, so no mapped page stays resident here). Use as a
    context manager: leaving it waits for every file."""

    def __init__(self, root: Path, role: str, total: int, dims: int, files: bool) -> None:
        self.ids = [""] * total
        self.patients = [""] * total
        self.subjects = [""] * total
        self.pending: list[Future[None]] = []
        self.folders: set[str] = set()
        self.array: BinaryIO | None = None
        if files:
            self.path = root / role
            self.path.mkdir(parents=True)
            self.writers: ThreadPoolExecutor | None = ThreadPoolExecutor(WRITERS)
        else:
            self.path = root / f"{role}.npy"
            shape = (total, 1, *(SIDE[dims],) * dims)
            header = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=shape)
            self.offset, self.row_bytes = header.offset, math.prod(shape[1:]) * 4
            del header  # the header is written; the rows follow at their offsets
            self.array = open(self.path, "r+b")  # closed on leaving the context
            self.writers = None

    def __enter__(self) -> _Sink:
        return self

    def put(self, row: int, sample_id: str, patient: str, subject: str, image: Image) -> None:
        self.ids[row], self.patients[row], self.subjects[row] = sample_id, patient, subject
        if self.array is not None:
            self.array.seek(self.offset + row * self.row_bytes)
            self.array.write(np.ascontiguousarray(image, dtype=np.float32).tobytes())
            return
        assert self.writers is not None
        folder = sample_id.rpartition("/")[0]
        if folder and folder not in self.folders:
            (self.path / folder).mkdir()
            self.folders.add(folder)
        self.pending.append(self.writers.submit(write_image, self.path / sample_id, image))
        if len(self.pending) >= PENDING:
            self._drain()

    def _drain(self) -> None:
        for done in self.pending:
            done.result()  # a failed write raises here
        self.pending = []

    def __exit__(self, *exc: object) -> None:
        if self.writers is not None:
            self._drain()
            self.writers.shutdown()
        if self.array is not None:
            self.array.close()
            self.array = None


@dataclass(frozen=True)
class BuiltSets:
    """What :func:`build_sets` wrote: each role's folder (or ``.npy``), its sample IDs in the order the scan reads them,
    each image's patient and real subject, and the truth about the synthetic set.

    ``source``: per synthetic sample, the training row it copies (-1: an unseen patient's image); ``kind``: the
    change planted (``unseen`` for the rest). Unseen images carry their patient, copies ``copy-of-<patient>``.
    """

    root: Path
    dims: int
    paths: dict[str, Path]
    ids: dict[str, list[str]]
    patients: dict[str, list[str]]
    subjects: dict[str, list[str]]
    source: list[int]
    kind: list[str]
    seconds: float = 0.0

    @property
    def n(self) -> dict[str, int]:
        return {role: len(ids) for role, ids in self.ids.items()}

    @property
    def is_copy(self) -> npt.NDArray[np.bool_]:
        return np.asarray(self.source) >= 0

    def source_id(self, row: int) -> str:
        """The training sample a synthetic sample copies ("" for an unseen image)."""
        return self.ids["train"][self.source[row]] if self.source[row] >= 0 else ""


def set_sizes(n_train: int, copy_fraction: float = COPY_FRACTION, queries: int = 0) -> tuple[int, int, int]:
    """Validation and synthetic images (a quarter of ``n_train`` each, or ``queries``), and planted copies per
    change, for ``n_train`` training images."""
    n_val = n_syn = queries or max(2, n_train // 4)
    per_kind = max(1, math.ceil(copy_fraction * n_syn / len(CHANGES)))
    return n_val, n_syn, min(per_kind, max(1, (n_syn - 1) // len(CHANGES)))


def build_sets(
    root: str | Path,
    n_train: int,
    dims: int = 2,
    seed: int = 0,
    copy_fraction: float = COPY_FRACTION,
    files: bool = True,
    variation: Variation | None = None,
    queries: int = 0,
) -> BuiltSets:
    """Write the training, validation and synthetic sets of ``n_train`` training images under ``root`` (see the
    module docstring), one patient at a time: memory holds one batch of patients and the few training images
    that are copied, never a whole set."""
    start = time.perf_counter()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    variation = variation or VARIATION[dims]
    rng = np.random.default_rng(seed)
    n_val, n_syn, per_kind = set_sizes(n_train, copy_fraction, queries)
    n_copies = per_kind * len(CHANGES)
    pool = np.sort(rng.choice(n_train, size=min(n_train, n_copies), replace=False))  # rows copies may be made of
    in_pool = set(pool.tolist())
    kept: dict[int, Image] = {}
    sinks: dict[str, _Sink] = {}
    suffix = _suffix(dims)
    for role, total in (("train", n_train), ("val", n_val)):
        with _Sink(root, role, total, dims, files) as sink:
            sinks[role] = sink
            row = 0
            for patient, subject, images in role_images(rng, dims, role, total, variation):
                for k, image in enumerate(images):
                    sink.put(row, f"{patient}/{patient}_{k:02d}{suffix}", patient, subject, image)
                    if role == "train" and row in in_pool:
                        kept[row] = image.copy()
                    row += 1
    # the synthetic set: planted copies and unseen patients' images at shuffled positions (names say nothing)
    position = rng.permutation(n_syn)
    width = max(6, len(str(n_syn)))
    name = lambda p: f"s{p:0{width}d}{suffix}"  # noqa: E731
    sources, kinds = [-1] * n_syn, ["unseen"] * n_syn
    train = sinks["train"]
    with _Sink(root, "synthetic", n_syn, dims, files) as sink:
        sinks["synthetic"] = sink
        pool_images = np.stack([kept.pop(int(r)) for r in pool])[:, None]
        planted = plant_copies(pool_images, pool_images[:0], per_kind, seed=seed + 1, level=1)
        del pool_images
        for i, (image, source, kind) in enumerate(zip(planted.images, planted.source_index, planted.kind, strict=True)):
            p, row = int(position[i]), int(pool[source])
            sink.put(p, name(p), f"copy-of-{train.patients[row]}", train.subjects[row], image[0])
            sources[p], kinds[p] = row, kind
        del planted
        i = n_copies
        for patient, subject, images in role_images(rng, dims, "synthetic", n_syn - n_copies, variation):
            for image in images:
                p = int(position[i])
                sink.put(p, name(p), patient, subject, image)
                i += 1
    return BuiltSets(
        root,
        dims,
        {role: k.path for role, k in sinks.items()},
        {role: k.ids for role, k in sinks.items()},
        {role: k.patients for role, k in sinks.items()},
        {role: k.subjects for role, k in sinks.items()},
        sources,
        kinds,
        time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------------- separation


@dataclass(frozen=True)
class Separation:
    """The verified score (aligned band-passed correlation, the scan's copy statistic) between two patients made
    from the same base slice (2D: the same heights; 3D: the same crop position), within one patient between
    neighbouring slices or crops, and between a level-1 planted copy and its source, by change."""

    siblings: npt.NDArray[np.float32]
    neighbours: npt.NDArray[np.float32]
    copies: dict[str, npt.NDArray[np.float32]]

    def lines(self) -> list[str]:
        def q(values: npt.NDArray[np.float32], p: float) -> str:
            return f"{float(np.percentile(values, p)):.3f}"

        every = np.concatenate(list(self.copies.values()))
        weakest = min(self.copies, key=lambda k: float(self.copies[k].min()))
        return [
            f"two patients made from the same base slice/position ({len(self.siblings)} pairs): verified score median "
            f"{q(self.siblings, 50)}, 99th percentile {q(self.siblings, 99)}, max {q(self.siblings, 100)}",
            f"neighbouring slices/crops of one patient ({len(self.neighbours)} pairs): median "
            f"{q(self.neighbours, 50)}, max {q(self.neighbours, 100)}",
            f"a level-1 planted copy and its source ({len(every)} copies): min {q(every, 0)}, 5th percentile "
            f"{q(every, 5)}, median {q(every, 50)}; weakest change {weakest} (min {q(self.copies[weakest], 0)}, "
            f"median {q(self.copies[weakest], 50)})",
        ]


def separation(dims: int, seed: int = 0, pairs: int = 200, variation: Variation | None = None) -> Separation:
    """Measure :class:`Separation` on ``pairs`` pairs of training-subject patients (the scan's default verifier)."""
    from core.detect.verify import Verifier

    variation = variation or VARIATION[dims]
    rng = np.random.default_rng(seed + 7)
    bases = _bases(dims, "train")
    first, second, neighbour = [], [], []
    per_base = math.ceil(pairs / len(bases))
    for _, base in bases:
        a = draw_patients(rng, dims, per_base, variation, depth=len(base))
        heights = a.heights if dims == 2 else None
        b = draw_patients(rng, dims, per_base, variation, depth=len(base), heights=heights)
        x, y = render(base, a, rng, variation.noise), render(base, b, rng, variation.noise)
        if dims == 2:  # slice 0 of each patient of a pair (the same height), and slice 1 of the first
            first.append(x[:, 0])
            second.append(y[:, 0])
            neighbour.append(x[:, 1])
            continue
        for u, v in zip(x, y, strict=True):  # one crop position in both patients, and another of the first
            at = rng.choice(len(CROP_GRID), size=2, replace=False)
            one = crops(u, at, rng, variation.noise)
            first.append(one[:1])
            second.append(crops(v, at[:1], rng, variation.noise))
            neighbour.append(one[1:])
    x0 = np.concatenate(first)[:pairs, None]
    y0 = np.concatenate(second)[:pairs, None]
    n0 = np.concatenate(neighbour)[:pairs, None]
    verifier = Verifier(x0.shape[2:])
    rows = np.arange(len(x0))[:, None]

    def score(queries: Image, database: Image) -> npt.NDArray[np.float32]:
        return verifier.score(queries, database, rows[: len(queries)])[0][:, 0]

    per_kind = max(1, pairs // len(CHANGES))
    planted = plant_copies(x0, np.zeros((0, *x0.shape[1:]), np.float32), per_kind, seed=seed + 1, level=1)
    source = planted.source_index
    copies_score = verifier.score(planted.images, x0, source[:, None])[0][:, 0]
    kinds = np.asarray(planted.kind)
    return Separation(
        score(y0, x0),
        score(n0, x0),
        {k: copies_score[kinds == k] for k in CHANGES},
    )


# ---------------------------------------------------------------------------------------------------- measuring


def peak_rss() -> tuple[float, float]:
    """This process's peak resident memory and the largest of its finished children's, in MiB (Linux: KiB units)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def resident(pid: int | str = "self") -> dict[str, float]:
    """A process's resident memory now, MiB: ``RssAnon`` (its own), ``RssFile`` (pages of mapped files, such as a
    memory-mapped set, which the kernel can drop) and ``VmRSS`` (both); empty once it has ended."""
    found = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "VmRSS"):
                    found[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return found


@dataclass(frozen=True)
class Built:
    """The build stage's result: the sets, how long, and its peak memory (MiB)."""

    sets: BuiltSets
    seconds: float
    peak_mib: float


def build_stage(
    root: str, n_train: int, dims: int, seed: int, copy_fraction: float, files: bool, queries: int = 0
) -> Built:
    sets = build_sets(root, n_train, dims, seed, copy_fraction, files, queries=queries)
    return Built(sets, sets.seconds, peak_rss()[0])


@dataclass(frozen=True)
class Accuracy:
    """Recall (found / planted) and unseen FPR (flagged / unseen images), and found per change."""

    found: int
    planted: int
    flagged_unseen: int
    unseen: int
    by_kind: dict[str, tuple[int, int]]

    def rate(self, which: str) -> str:
        from core.detect.metrics import wilson_interval

        count, total = (self.found, self.planted) if which == "recall" else (self.flagged_unseen, self.unseen)
        low, high = wilson_interval(count, total)
        return f"{count / total:.3f} [{low:.3f}, {high:.3f}] ({count}/{total})"


def accuracy(sets: BuiltSets, similarity: Sequence[float], nearest: Sequence[str], tau: float) -> Accuracy:
    """Score the scan's nearest training sample of each synthetic sample (in ``sets.ids['synthetic']`` order)."""
    from core.detect.metrics import is_copy

    flagged = is_copy(np.asarray(similarity, dtype=np.float64), tau)
    copy = sets.is_copy
    right = np.array([nearest[i] == sets.source_id(i) for i in range(len(copy))])
    found = flagged & copy & right
    kinds = np.asarray(sets.kind)
    return Accuracy(
        int(found.sum()),
        int(copy.sum()),
        int((flagged & ~copy).sum()),
        int((~copy).sum()),
        {k: (int(found[kinds == k].sum()), int((kinds == k).sum())) for k in CHANGES},
    )


@dataclass(frozen=True)
class Scanned:
    """One scan's measurements: seconds per stage (the summary's ``*_s`` timings, plus ``wall_s`` around
    ``run_scan``), peak RSS of the scan's process and of its largest loader worker, RSS before the scan (imports
    done), tau, accuracy, the detector's steps and the device."""

    timings: dict[str, float]
    peak_mib: float
    worker_peak_mib: float
    baseline_mib: float
    tau: float
    accuracy: Accuracy
    steps: int | None
    steps_planned: int
    per_epoch: int
    fpr_unseen_scan: str
    device: str
    load_average: tuple[float, float]  # the machine's 1-minute load average as the scan began and ended
    choice: str = ""  # the summary's word on why no detector was trained ("" when one was)


def _stage_printer() -> Callable[[Any], None]:
    """A progress callback that prints each stage as it starts, with the seconds since the scan began."""
    start, seen = time.perf_counter(), [""]

    def show(event: Any) -> None:
        if event.stage != seen[0]:
            seen[0] = event.stage
            print(f"  [{time.perf_counter() - start:7.1f} s] {event.stage}: {event.message}", flush=True)

    return show


def scan_stage(sets: BuiltSets, overrides: dict[str, Any], train_budget: float | None = None) -> Scanned:
    """``python -m core scan --train T --val V --synthetic S --out O --dims D`` as the CLI builds it, timed."""
    import torch  # noqa: F401  (imported before the baseline is read: the scan's own memory is what follows)

    from core.detect.detector import load_detector, training_schedule
    from core.io.preprocessing import config_from_options
    from core.study.results import ScanResults
    from core.study.scan import ScanConfig, run_scan

    os.environ["MEMOSCOPE_CACHE_DIR"] = str(sets.root / "cache")  # a fresh embedding cache: nothing reused
    out = sets.root / "study"
    options: dict[str, Any] = {
        "train": str(sets.paths["train"]),
        "val": str(sets.paths["val"]),
        "synthetic": str(sets.paths["synthetic"]),
        "out": str(out),
        "dims": sets.dims,
        "patients": "auto",
        "detector_overrides": overrides,
        "verify": {},
    }
    if train_budget is not None:
        options["train_budget"] = train_budget
    config = config_from_options(ScanConfig, options)
    baseline = resident()["VmRSS"]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    summary = run_scan(config, progress=_stage_printer())
    wall = time.perf_counter() - start
    own, workers = peak_rss()
    found = ScanResults.open(out)
    nearest = {p.synthetic_id: p for p in found.nearest()}
    order = sets.ids["synthetic"]
    tau = summary.threshold.value
    result = accuracy(sets, [nearest[i].similarity for i in order], [nearest[i].train_id for i in order], tau)
    detector = load_detector(out / "detector")
    schedule = training_schedule(sets.n["train"], detector.config)
    fpr = summary.fpr_unseen
    return Scanned(
        {**summary.timings, "wall_s": wall},
        own,
        workers,
        baseline,
        tau,
        result,
        detector.steps_trained,
        schedule.steps,
        schedule.per_epoch,
        "-" if fpr is None else f"{fpr.value:.3f} [{fpr.low:.3f}, {fpr.high:.3f}]",
        summary.device,
        (load, os.getloadavg()[0]),
        summary.detector.choice,
    )


def detector_stage(sets: BuiltSets, folder: str, overrides: dict[str, Any], subset: int = 1000) -> tuple[float, int]:
    """Train the scan's default detector (plus ``overrides``) on the first ``subset`` training and a quarter as many
    validation images of the arrays, into ``folder``: seconds and steps."""
    from core.detect.detector import train_and_save
    from core.io.load import ImageSet
    from core.io.preprocessing import PreprocessSpec

    spec = PreprocessSpec.for_dims(sets.dims)
    images = {role: np.load(sets.paths[role], mmap_mode="r") for role in ("train", "val")}
    n = {"train": subset, "val": max(2, subset // 4)}
    parts = {
        role: ImageSet(
            sets.ids[role][: n[role]], sets.patients[role][: n[role]], np.array(images[role][: n[role]]), spec, role
        )
        for role in n
    }
    start = time.perf_counter()
    detector = train_and_save(parts["train"], parts["val"], folder, overwrite=True, overrides=overrides)
    return time.perf_counter() - start, detector.steps_trained or 0


@dataclass(frozen=True)
class Searched:
    """``--search-only``: seconds per stage, peak RSS (``ru_maxrss``) and RSS before, tau, accuracy, how the training
    set was searched, the device."""

    timings: dict[str, float]
    peak_mib: float
    baseline_mib: float
    tau: float
    accuracy: Accuracy
    search: str
    device: str


def search_stage(sets: BuiltSets, detector_folder: str) -> Searched:
    """The scan's embed, match (search + verification) and calibrate stages on the memory-mapped sets."""
    from core.common.devices import Precision, device_description, resolve_device
    from core.detect.detector import load_detector
    from core.io.load import ImageSet
    from core.io.preprocessing import PreprocessSpec
    from core.study.scan import ScanConfig, _Laps, calibrate_stage, embed_stage, match_stage

    os.environ["MEMOSCOPE_CACHE_DIR"] = str(sets.root / "cache")
    spec = PreprocessSpec.for_dims(sets.dims)
    stage = sets.root / "stage"
    stage.mkdir(exist_ok=True)
    config = ScanConfig(
        train=str(sets.paths["train"]),
        val=str(sets.paths["val"]),
        synthetic=str(sets.paths["synthetic"]),
        out=str(sets.root / "study"),
        spec=spec,
        detector=detector_folder,
        cache_dir=str(sets.root / "cache"),
    )
    device = resolve_device(config.device)
    detector = load_detector(detector_folder)
    images = {
        role: ImageSet(
            sets.ids[role], sets.patients[role], np.load(sets.paths[role], mmap_mode="r"), spec, str(sets.paths[role])
        )
        for role in ("train", "val", "synthetic")
    }
    quiet: Callable[[Any], None] = lambda event: None  # noqa: E731
    baseline = resident()["VmRSS"]
    laps = _Laps()
    embedded = embed_stage(config, detector, images, stage, device, Precision.FP32, quiet)
    laps.lap("embed")
    matched = match_stage(config, embedded, images, device, quiet, laps)
    calibrated = calibrate_stage(config, matched, embedded, images, quiet)
    laps.lap("calibrate")
    own, _ = peak_rss()
    s2t = matched.tables.synthetic_to_train
    train_ids = sets.ids["train"]
    tau = calibrated.threshold.value
    result = accuracy(sets, s2t.best.tolist(), [train_ids[int(i)] for i in s2t.index[:, 0]], tau)
    report = matched.search
    search = "-" if report is None else f"{report.index}, recall@1 {report.recall_at_1:.3f}"
    return Searched(laps.total(), own, baseline, tau, result, search, device_description(device))


def _answer(function: Callable[..., Any], args: tuple[Any, ...], pipe: Connection) -> None:
    try:
        pipe.send((True, function(*args)))
    except BaseException:
        pipe.send((False, traceback.format_exc()))
        raise


def in_fresh_process(function: Callable[..., T], *args: Any) -> tuple[T, dict[str, float]]:
    """Run ``function(*args)`` in a new Python process (spawned: nothing inherited, its own peak memory; not a pool's
    daemon, so the scan's loader may start its workers): its result, and the process's peak resident memory as
    sampled from here every 0.1 s (``RssAnon``, ``RssFile``, ``VmRSS``, MiB: a sampling thread inside would make the
    scan's loader read in its own process instead of forking workers)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_answer, args=(function, args, send))
    process.start()
    send.close()
    peak: dict[str, float] = {}
    value: Any = None
    try:
        while not receive.poll(0.1):
            for key, mib in resident(process.pid or 0).items():
                peak[key] = max(peak.get(key, 0.0), mib)
        ok, value = receive.recv()
    except EOFError:  # killed (out of memory?) before it could answer
        ok, value = False, "the process ended without an answer"
    process.join()
    if not ok:
        raise RuntimeError(f"{function.__name__} failed in its own process (exit code {process.exitcode}):\n{value}")
    return value, peak


# ---------------------------------------------------------------------------------------------------- report

STAGE_KEYS = ("load", "detector", "embed", "search", "verify")


def exponent(size_a: int, size_b: int, a: float, b: float) -> str:
    """The slope of log(value) against log(size) between two sizes: 1 is linear growth."""
    return "-" if a <= 0 or b <= 0 or size_a == size_b else f"{math.log(b / a) / math.log(size_b / size_a):.2f}"


@dataclass(frozen=True)
class SizeRun:
    """One size of one dimensionality: the build, the scan, and the scan process's sampled peaks."""

    n: int
    built: Built
    scanned: Scanned
    sampled: dict[str, float]

    @property
    def seconds(self) -> float:
        return self.scanned.timings["wall_s"]

    @property
    def above_imports(self) -> float:
        return self.scanned.peak_mib - self.scanned.baseline_mib

    def stage(self, key: str) -> float:
        t = self.scanned.timings
        if key == "rest":  # calibrate and write: what the laps do not name
            return t["total_s"] - sum(t.get(f"{k}_s", 0.0) for k in STAGE_KEYS)
        return t.get(f"{key}_s", 0.0)


SCAN_HEADER = [
    "dims",
    "train + val + synthetic",
    "build s",
    "load s",
    "detector s",
    "embed s",
    "search s",
    "verify s",
    "calibrate + write s",
    "scan s",
    "time exponent",
    "peak RSS MiB",
    "above imports MiB",
    "memory exponent",
    "detector steps",
    "recall",
    "unseen FPR",
    "tau",
]


def scan_row(dims: int, runs: Sequence[SizeRun], i: int) -> list[str]:
    """Row ``i``: its stages, and its growth exponents against the size before it."""
    run, s = runs[i], runs[i].scanned
    before = runs[i - 1] if i else None
    steps = "-" if s.steps is None else f"{s.steps} of {s.steps_planned} ({s.steps / s.per_epoch:.1f} epochs)"
    if s.choice:
        steps = "none (pixels)"
    return [
        f"{dims}D",
        f"{run.n} + {run.built.sets.n['val']} + {run.built.sets.n['synthetic']}",
        f"{run.built.seconds:.0f}",
        *(f"{run.stage(k):.0f}" for k in (*STAGE_KEYS, "rest")),
        f"{run.seconds:.0f} ({run.seconds / 60:.1f} min)",
        "-" if before is None else exponent(before.n, run.n, before.seconds, run.seconds),
        f"{s.peak_mib:.0f}",
        f"{run.above_imports:.0f}",
        "-" if before is None else exponent(before.n, run.n, before.above_imports, run.above_imports),
        steps,
        s.accuracy.rate("recall"),
        s.accuracy.rate("fpr"),
        f"{s.tau:.3f}",
    ]


def growth_rows(dims: int, runs: Sequence[SizeRun]) -> list[list[str]]:
    """Per pair of consecutive sizes: each stage's growth exponent, the whole scan's, and peak memory's."""
    rows = []
    for a, b in itertools.pairwise(runs):
        rows.append(
            [
                f"{dims}D",
                f"{a.n} -> {b.n}",
                *(exponent(a.n, b.n, a.stage(k), b.stage(k)) for k in (*STAGE_KEYS, "rest")),
                exponent(a.n, b.n, a.seconds, b.seconds),
                exponent(a.n, b.n, a.scanned.peak_mib, b.scanned.peak_mib),
                exponent(a.n, b.n, a.above_imports, b.above_imports),
            ]
        )
    return rows


GROWTH_HEADER = [
    "dims",
    "sizes",
    *(f"{k} exponent" for k in (*STAGE_KEYS, "calibrate + write")),
    "scan exponent",
    "peak RSS exponent",
    "above-imports exponent",
]


def detail(dims: int, run: SizeRun) -> str:
    """A size's other measurements, for the notes."""
    s, b = run.scanned, run.built
    kinds = ", ".join(f"{k} {s.accuracy.by_kind[k][0]}/{s.accuracy.by_kind[k][1]}" for k in CHANGES)
    anon, file = run.sampled.get("RssAnon", 0.0), run.sampled.get("RssFile", 0.0)
    return (
        f"{dims}D N={run.n}: {len(set(b.sets.patients['train']))} training and {len(set(b.sets.patients['val']))} "
        f"validation patients; built in {b.seconds:.0f} s (peak RSS {b.peak_mib:.0f} MiB); scan peak RSS "
        f"{s.peak_mib:.0f} MiB (sampled: anonymous {anon:.0f}, file-backed {file:.0f}), {s.baseline_mib:.0f} before "
        f"run_scan, largest loader worker {s.worker_peak_mib:.0f}; the scan's own cross-fit unseen FPR "
        f"{s.fpr_unseen_scan}; found by change: {kinds}; load average {s.load_average[0]:.1f} -> "
        f"{s.load_average[1]:.1f}" + (f'; the summary: "{s.choice}"' if s.choice else "")
    )


def machine() -> str:
    import torch

    threads = torch.get_num_threads()
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {threads} threads"


def run_scans(args: argparse.Namespace, work: Path) -> tuple[str, list[str]]:
    """Build and scan each size of each dimensionality, each in its own process: the tables and the notes."""
    from tools.readme_tables import markdown_table

    rows, growths, notes = [], [], []
    for dims in args.dims:
        gap = separation(dims, args.seed, 200 if dims == 2 else 100)
        for line in gap.lines():
            print(f"{dims}D {line}", flush=True)
        notes += [f"{dims}D patients: {line}" for line in gap.lines()]
        runs: list[SizeRun] = []
        for n in args.sizes or SCAN_SIZES[dims]:
            root = work / f"{dims}d-{n}"
            built, _ = in_fresh_process(build_stage, str(root), n, dims, args.seed, args.copy_fraction, True)
            print(f"{dims}D N={n}: built {built.sets.n} in {built.seconds:.1f} s", flush=True)
            scanned, sampled = in_fresh_process(scan_stage, built.sets, args.detector_overrides, args.train_budget)
            runs.append(SizeRun(n, built, scanned, sampled))
            print(" | ".join(scan_row(dims, runs, len(runs) - 1)), flush=True)
            print(detail(dims, runs[-1]), flush=True)
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
        rows += [scan_row(dims, runs, i) for i in range(len(runs))]
        growths += growth_rows(dims, runs)
        notes += [detail(dims, run) for run in runs]
        notes.append(
            f"{dims}D: device {runs[0].scanned.device}; {PER_PATIENT[dims]} {'slices' if dims == 2 else 'crops'} per "
            f"patient; planted copies: level 1 of the {len(CHANGES)} changes, about {args.copy_fraction:.0%} of the "
            "synthetic set"
        )
    table = markdown_table(SCAN_HEADER, rows)
    if growths:
        table += "\n" + markdown_table(GROWTH_HEADER, growths)
    return table, notes


SEARCH_HEADER = [
    "dims",
    "train + val + synthetic",
    "build s",
    "embed s",
    "search s",
    "verify s",
    "calibrate s",
    "total s",
    "peak RSS MiB",
    "above imports MiB",
    "anonymous / file-backed MiB",
    "search",
    "recall",
    "unseen FPR",
    "tau",
]


def run_search_only(args: argparse.Namespace, work: Path) -> tuple[str, list[str]]:
    """Build the arrays, train a detector unless one is given, then time the embed, match and calibrate stages."""
    from tools.readme_tables import markdown_table

    n, dims = args.search_only, args.dims[0]
    root = work / f"search-{dims}d-{n}"
    built, _ = in_fresh_process(
        build_stage, str(root), n, dims, args.seed, args.copy_fraction, False, args.queries or 0
    )
    print(f"{dims}D N={n}: built arrays {built.sets.n} in {built.seconds:.1f} s", flush=True)
    folder, trained = args.detector, f"given ({args.detector})"
    if not folder:
        folder = str(root / "detector")
        (seconds, steps), _ = in_fresh_process(detector_stage, built.sets, folder, args.detector_overrides)
        trained = f"trained here on 1000 of the training images, {steps} steps in {seconds:.0f} s (not in the times)"
        print(f"detector {trained}", flush=True)
    s, sampled = in_fresh_process(search_stage, built.sets, folder)
    queries = built.sets.n["val"] + built.sets.n["synthetic"]
    t = s.timings
    row = [
        f"{dims}D",
        f"{n} + {built.sets.n['val']} + {built.sets.n['synthetic']}",
        f"{built.seconds:.0f}",
        *(f"{t.get(f'{k}_s', 0.0):.0f}" for k in ("embed", "search", "verify", "calibrate")),
        f"{t['total_s']:.0f} ({t['total_s'] / 60:.1f} min)",
        f"{s.peak_mib:.0f}",
        f"{s.peak_mib - s.baseline_mib:.0f}",
        f"{sampled.get('RssAnon', 0.0):.0f} / {sampled.get('RssFile', 0.0):.0f}",
        s.search,
        s.accuracy.rate("recall"),
        s.accuracy.rate("fpr"),
        f"{s.tau:.3f}",
    ]
    print(" | ".join(row), flush=True)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    notes = [
        f"device {s.device}; detector {trained}; the sets are memory-mapped arrays (nothing is loaded from image "
        f"files); build peak RSS {built.peak_mib:.0f} MiB",
        f"verification {1000 * t.get('verify_s', 0.0) / queries:.0f} ms per query ({queries} validation and "
        "synthetic queries, each against its retrieved candidates: the same cost at any training-set size)",
    ]
    return markdown_table(SEARCH_HEADER, [row]), notes


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="training sizes (default 1000 4000 16000; 3D 1000 4000)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2], choices=[2, 3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--copy-fraction", type=float, default=COPY_FRACTION, help="planted copies' share of the synthetic set"
    )
    parser.add_argument(
        "--detector-overrides",
        type=json.loads,
        default={},
        help="JSON of DetectorConfig keys for short development runs, e.g. '{\"epochs\": 2}' (default: none, the "
        "scan's own detector)",
    )
    parser.add_argument(
        "--train-budget",
        type=float,
        metavar="MINUTES",
        help="the scan's --train-budget (default: the scan's own; 0 trains the contrastive detector whatever it costs)",
    )
    parser.add_argument("--search-only", type=int, metavar="N", help="embed, search and verify alone at N training")
    parser.add_argument("--detector", help="--search-only: a trained detector folder (default: train one on 1,000)")
    parser.add_argument(
        "--queries",
        type=int,
        metavar="N",
        help="--search-only: N validation and N synthetic images (default: a quarter of the training set each); "
        "verification costs the same per query whatever the training set, so fewer queries time the search at N "
        "training images in less time",
    )
    parser.add_argument("--workdir", help="where the sets are written (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the sets and studies")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/scale_scan*.md")
    args = parser.parse_args()
    command = "PYTHONPATH=. .venv/bin/python benchmarks/scale_scan.py " + shlex.join(sys.argv[1:])
    work = Path(tempfile.mkdtemp(prefix="scale-scan-", dir=args.workdir))
    try:
        table, notes = run_search_only(args, work) if args.search_only else run_scans(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = table + "\n" + "\n".join(f"- {n}" for n in notes) + f"\n- machine: {machine()}\n"
    print(text)
    print(f"`{command}`, {time.strftime('%Y-%m-%d')}, {machine()}")
    if args.write:
        from tools.readme_tables import write_result

        name = "scale_scan_search" if args.search_only else "scale_scan" + ("_3d" if args.dims == [3] else "")
        name += "_trained" if args.train_budget == 0 and not args.search_only else ""
        print(f"wrote {write_result(name, text, command)}")


if __name__ == "__main__":
    main()
