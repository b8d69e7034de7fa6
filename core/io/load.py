"""Image loading: sets of images (:class:`ImageSet`) read with one preprocessing spec, slices of volumes, sample
IDs, and parallel reading within a memory budget.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from core.common.config import Config
from core.common.errors import MemoScopeError
from core.common.provenance import sha256_array
from core.io.discover import Role, discover_patients
from core.io.patients import PatientGrouping, PatientRule
from core.io.preprocessing import PreprocessSpec, is_constant, one_torch_thread, preprocess
from core.io.readers import check_values, read_raw
from core.io.records import ImageRecord

logger = logging.getLogger(__name__)


class SliceAxis(StrEnum):
    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"


# Voxel axis of each plane for arrays in NIfTI (RAS-like) order: i = sagittal, k = axial.
SLICE_AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}


@dataclass(frozen=True)
class SkippedFile(Config):
    """A file left out by ``--skip-bad``, and why."""

    path: str
    reason: str


@dataclass
class ImageSet:
    """A preprocessed data set.

    Attributes:
        ids: stable sample IDs (relative paths, plus ``#axial042`` for slices).
        patient_ids: the patient (subject) of each sample.
        images: ``(N, 1, *spatial)`` float32 in [-1, 1].
        spec: the preprocessing that produced ``images``.
        source: the folder or manifest it came from.
        skipped: files left out by ``skip_bad``.
        grouping: how its patients were found (the ``--patients`` rule in force and what it found); ``None`` for
            synthetic sets, whose samples have no patients.
        verify_images: the same samples on the verification grid (the scans' own resolution, up to a maximum),
            when it is finer than ``spec``'s; ``None``: verification uses ``images``.
    """

    ids: list[str]
    patient_ids: list[str]
    images: np.ndarray
    spec: PreprocessSpec
    source: str
    skipped: list[SkippedFile] = field(default_factory=list)
    grouping: PatientGrouping | None = None
    verify_images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def content_hash(self) -> str:
        """Hash of the IDs and the preprocessed voxels: the input identity of every result."""
        ids_hash = sha256_array(np.frombuffer("\n".join(self.ids).encode(), dtype=np.uint8))
        return sha256_array(self.images) + ids_hash[:16]

    def subset(self, indices: Sequence[int]) -> ImageSet:
        idx = list(indices)
        return ImageSet(
            ids=[self.ids[i] for i in idx],
            patient_ids=[self.patient_ids[i] for i in idx],
            images=self.images[idx],
            spec=self.spec,
            source=self.source,
            skipped=list(self.skipped),
            grouping=self.grouping,
            verify_images=None if self.verify_images is None else self.verify_images[idx],
        )

    @property
    def compared(self) -> np.ndarray:
        """The images verification and the pixel checks compare: ``verify_images`` when loaded, else ``images``."""
        return self.images if self.verify_images is None else self.verify_images


SLICE_MARK = "#"  # a slice's ID is its file's ID, this mark, the plane and the slice number: ``vol#axial012``


def source_of(sample_id: str) -> str:
    """The file (volume) a sample came from: the ID itself, or a slice's volume (``vol#axial012`` -> ``vol``)."""
    return sample_id.partition(SLICE_MARK)[0]


def _samples_of(
    record: ImageRecord, array: np.ndarray, dims: int, slices: SliceAxis | None
) -> list[tuple[str, np.ndarray]]:
    """Turn one raw array into (sample_id, spatial array) samples for ``dims``."""
    path = record.path
    if array.ndim not in (2, 3):
        raise MemoScopeError(
            f"{path}: has {array.ndim} dimensions {array.shape}; MemoScope reads 2D images and "
            "3D volumes (split 4D series into single volumes first)."
        )
    if dims == 3:
        if array.ndim != 3:
            raise MemoScopeError(f"{path}: is 2D {array.shape} but --dims 3 expects volumes.")
        return [(record.sample_id, array)]
    if array.ndim == 2:
        return [(record.sample_id, array)]
    if slices is None:
        raise MemoScopeError(
            f"{path}: is a 3D volume {array.shape}; use --dims 3, or --slices "
            "axial|coronal|sagittal to take its 2D slices."
        )
    axis = SLICE_AXES[slices]
    moved = np.moveaxis(array, axis, 0)
    return [
        (f"{record.sample_id}{SLICE_MARK}{slices}{k:03d}", moved[k])
        for k in range(moved.shape[0])
        if not is_constant(moved[k])
    ]


PARALLEL_FROM = 32  # fewer files than this are read in this process: starting workers costs more than it saves


def load_workers() -> int:
    """Worker processes that read and preprocess files in parallel (``$MEMOSCOPE_LOAD_WORKERS``; default: one per
    CPU core, at most 8; 0 reads in this process)."""
    value = os.environ.get("MEMOSCOPE_LOAD_WORKERS")
    if value is None:
        return min(8, os.cpu_count() or 1)
    try:
        workers = int(value)
    except ValueError:
        workers = -1
    if workers < 0:
        raise MemoScopeError(f"MEMOSCOPE_LOAD_WORKERS={value!r}: give a whole number of worker processes (0: none).")
    return workers


def memory_budget() -> int:
    """Bytes of preprocessed voxels a set may hold in memory before it spills to a memory-mapped file
    (``$MEMOSCOPE_SET_MEMORY_MB``, default 1024)."""
    return int(float(os.environ.get("MEMOSCOPE_SET_MEMORY_MB", "1024")) * 2**20)


class _Spill:
    """Preprocessed images appended to an unlinked temporary file, then memory-mapped read-only: a set of any
    size costs its page cache, not its size in RAM, and leaves no file behind (the mapping keeps it alive)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape, self.count = shape, 0
        folder = Path(os.environ.get("MEMOSCOPE_CACHE_DIR") or tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        self.handle = tempfile.NamedTemporaryFile(prefix="memoscope-set-", suffix=".f32", dir=folder, delete=False)

    def add(self, images: list[np.ndarray]) -> None:
        for image in images:
            self.handle.write(np.ascontiguousarray(image, dtype=np.float32).tobytes())
        self.count += len(images)

    def array(self) -> np.ndarray:
        self.handle.close()
        path = Path(self.handle.name)
        try:
            return np.memmap(path, dtype=np.float32, mode="r", shape=(self.count, *self.shape))
        finally:
            path.unlink()  # the open mapping keeps the data; nothing is left on disk when the set is gone


Prepared = tuple[list[tuple[str, tuple[np.ndarray, ...]]], str | None]  # each sample at every spec, or why not


@dataclass(frozen=True)
class _PrepareFiles:
    """Reads, checks and preprocesses one record by index (once per spec: the comparison grid and, when asked, the
    verification grid): the unit of work a loader worker does."""

    records: Sequence[ImageRecord]
    specs: tuple[PreprocessSpec, ...]
    slices: SliceAxis | None
    read: Callable[[Path], np.ndarray]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Prepared:
        record = self.records[index]
        try:
            array = self.read(record.path)
            check_values(record.path, array)
            prepared = []
            for sample_id, sample in _samples_of(record, array, self.specs[0].spatial_dims, self.slices):
                if self.specs[0].intensity == "minmax" and is_constant(sample):
                    raise MemoScopeError(f"{record.path}: constant image (min == max); remove it.")
                try:
                    grids = tuple(preprocess(sample[None], spec) for spec in self.specs)
                except ValueError as exc:
                    raise MemoScopeError(f"{record.path}: {exc}; fix or remove the image.") from exc
                prepared.append((sample_id, grids))
        except MemoScopeError as exc:  # refused files travel back as messages, in file order
            return [], str(exc)
        return prepared, None


def _as_is(item: Prepared) -> Prepared:
    return item


def _prepared(files: _PrepareFiles, workers: int) -> Generator[Prepared, None, None]:
    """Each record's samples in file order; with ``workers``, read and preprocessed by a torch ``DataLoader``'s
    worker processes while this one collects (same results, same order, same first error). Small sets, and
    processes running other threads, read in this process."""
    # forking a process that runs other Python threads (the app's server) can copy a lock another thread holds
    threaded = threading.active_count() > 1
    if threaded and workers and len(files) >= PARALLEL_FROM:
        logger.info("reading %d files in this process: it runs other threads, so it does not fork workers", len(files))
    if workers == 0 or len(files) < PARALLEL_FROM or threaded:
        with one_torch_thread():
            yield from (files[i] for i in range(len(files)))
        return
    from torch.utils.data import DataLoader

    # batch_size=None: one file per item; _as_is keeps numpy arrays as they are (no tensor conversion). Workers run
    # one torch thread each (DataLoader's rule: more would hang on OpenMP after fork), as this process does above.
    yield from DataLoader(files, batch_size=None, num_workers=workers, collate_fn=_as_is)  # type: ignore[arg-type]


class _Collector:
    """One preprocessed grid's images: held in memory up to the budget, then spilled to a memory-mapped file."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0
        self.images: list[np.ndarray] = []
        self.spill: _Spill | None = None

    def add(self, image: np.ndarray) -> None:
        self.images.append(image)
        self.held += image.nbytes
        if self.held > self.limit:
            self.spill = self.spill or _Spill(image.shape)
            self.spill.add(self.images)
            self.images, self.held = [], 0

    def array(self) -> np.ndarray:
        if self.spill is None:
            return np.stack(self.images)
        self.spill.add(self.images)
        return self.spill.array()

    def discard(self) -> None:
        if self.spill is not None:
            self.spill.array()  # removes the file


def load_records(
    records: Sequence[ImageRecord],
    spec: PreprocessSpec,
    source: str,
    slices: SliceAxis | None = None,
    skip_bad: bool = False,
    read: Callable[[Path], np.ndarray] = read_raw,
    budget: int | None = None,
    workers: int | None = None,
    verify_spec: PreprocessSpec | None = None,
) -> ImageSet:
    """Read, check and preprocess records into an :class:`ImageSet`.

    Images are kept in memory up to ``budget`` bytes (default :func:`memory_budget`); past it the set spills to
    a read-only memory-mapped file, so scanning a set larger than RAM works (each stage reads it in chunks).
    ``workers`` processes (default :func:`load_workers`) read and preprocess the files in parallel; the set is
    the same whatever their number. With ``verify_spec`` each file is read once and preprocessed twice: the
    set's ``verify_images`` hold the second grid (the verification's, at the scans' own resolution).

    Raises:
        MemoScopeError: a file is unreadable or invalid (unless ``skip_bad``), IDs repeat,
            or nothing readable is left.
    """
    ids: list[str] = []
    patients: list[str] = []
    skipped: list[SkippedFile] = []
    specs = (spec,) if verify_spec is None else (spec, verify_spec)
    limit = memory_budget() if budget is None else budget
    voxels = [math.prod(s.spatial_size) for s in specs]  # the budget is shared by the grids in proportion to size
    grids = [_Collector(int(limit * v / sum(voxels))) for v in voxels]
    files = _PrepareFiles(records, specs, slices, read)
    loading = _prepared(files, load_workers() if workers is None else workers)
    with contextlib.closing(loading) as done:  # an early end stops the workers
        for record, (prepared, refused) in zip(records, done, strict=True):
            if refused is not None:
                if not skip_bad:
                    for grid in grids:
                        grid.discard()
                    raise MemoScopeError(refused)
                skipped.append(SkippedFile(str(record.path), refused))
                continue
            for sample_id, images in prepared:
                ids.append(sample_id)
                patients.append(record.patient_id)
                for grid, image in zip(grids, images, strict=True):
                    grid.add(image)
    if not ids:
        raise MemoScopeError(f"{source}: no readable images ({len(skipped)} skipped).")
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        for grid in grids:
            grid.discard()
        raise MemoScopeError(f"{source}: duplicate sample IDs {duplicates[:5]}; rename the files.")
    arrays = [grid.array() for grid in grids]
    return ImageSet(ids, patients, arrays[0], spec, source, skipped, verify_images=arrays[1] if verify_spec else None)


def load_set(
    source: str | Path,
    spec: PreprocessSpec,
    role: Role | None = None,
    slices: SliceAxis | None = None,
    skip_bad: bool = False,
    patients: PatientRule | str | None = None,
    verify_spec: PreprocessSpec | None = None,
) -> ImageSet:
    """Load a folder or manifest into a preprocessed :class:`ImageSet` (see :func:`load_records`); with a
    ``patients`` rule the set records what it found (``ImageSet.grouping``), and with ``verify_spec`` it also
    holds its images on the verification grid (``ImageSet.verify_images``)."""
    rule = patients or ("manifest" if Path(source).suffix.lower() == ".csv" else "folder")
    records, grouping = discover_patients(source, role, rule)
    images = load_records(records, spec, str(source), slices=slices, skip_bad=skip_bad, verify_spec=verify_spec)
    images.grouping = grouping if patients is not None else None
    return images
