"""Image loading: folders and CSV manifests of NIfTI, DICOM, PNG and NPY; sample IDs; patient split."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import math
import os
import tempfile
import threading
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.common.errors import MemoScopeError
from core.common.provenance import sha256_array
from core.common.tables import unescape_cell
from core.io.patients import PatientGrouping, PatientRule, assign_patients, folder_patient
from core.io.preprocessing import PreprocessSpec, is_constant, one_torch_thread, preprocess
from core.io.records import SUFFIXES, ImageRecord, canonical_patient

__all__ = ["SUFFIXES", "ImageRecord"]  # discovery's records, re-exported where every caller already looks

logger = logging.getLogger(__name__)


class SliceAxis(StrEnum):
    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"


Role = Literal["train", "val", "synthetic"]

# Voxel axis of each plane for arrays in NIfTI (RAS-like) order: i = sagittal, k = axial.
SLICE_AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
_ROLE_NAMES: dict[str, set[str]] = {
    "train": {"train", "training"},
    "val": {"val", "validation", "valid"},
    "synthetic": {"synthetic", "generated", "syn"},
}
KNOWN_SPLITS = set().union(*_ROLE_NAMES.values()) | {"test", "exclude", "excluded"}


@dataclass(frozen=True)
class SkippedFile:
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


def _has_image_suffix(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def _series_uid(path: Path) -> str:
    try:
        import pydicom

        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception as exc:  # pydicom raises many types for a damaged header
        raise MemoScopeError(f"{path}: not a readable DICOM file ({type(exc).__name__}).") from exc
    return str(getattr(header, "SeriesInstanceUID", ""))


def _series_uid_or_none(path: Path) -> str | None:
    try:
        return _series_uid(path)
    except MemoScopeError:
        return None


def _dicom_units(root: Path, directory: Path, files: list[Path]) -> list[tuple[Path, str]]:
    """Decide whether the .dcm files of one folder are one series or separate images."""
    rel_dir = directory.relative_to(root).as_posix()
    if len(files) == 1:
        return [(files[0], files[0].relative_to(root).as_posix())]
    found = {f: _series_uid_or_none(f) for f in files}
    readable = [f for f in files if found[f] is not None]
    uids = [found[f] for f in readable]
    if len(set(uids)) == 1 and uids[0] and len(readable) > 1:  # one series (an unreadable slice fails it when read)
        return [(directory, rel_dir if rel_dir != "." else directory.name)]
    if len(set(uids)) == len(uids):  # separate images; an unreadable file is its own unit, refused or skipped
        return [(f, f.relative_to(root).as_posix()) for f in files]  # when read (--skip-bad), as any other file
    raise MemoScopeError(
        f"{directory}: holds {len(set(uids))} DICOM series mixed together; put each series "
        "in its own folder or list them in a CSV manifest."
    )


def _walk_files(root: Path) -> list[Path]:
    """Image files under ``root``, following symlinked patient folders (Path.rglob does not before Python 3.13)
    but never entering the same real folder twice (a link cycle)."""
    seen: set[str] = set()
    found = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        found += [Path(folder) / n for n in names if _has_image_suffix(Path(n)) and not n.startswith(".")]
    return [f for f in found if f.is_file()]


def discover_folder(root: Path) -> list[ImageRecord]:
    """Find every image under ``root`` (recursively), with IDs from relative paths."""
    files = sorted(_walk_files(root))
    dicom_by_dir: dict[Path, list[Path]] = defaultdict(list)
    units: list[tuple[Path, str]] = []
    for path in files:
        if path.name.lower().endswith(".dcm"):
            dicom_by_dir[path.parent].append(path)
        else:
            units.append((path, path.relative_to(root).as_posix()))
    for directory, dcm_files in sorted(dicom_by_dir.items()):
        units.extend(_dicom_units(root, directory, dcm_files))
    units.sort(key=lambda unit: unit[1])
    return [ImageRecord(path=path, sample_id=sid, patient_id=folder_patient(sid)) for path, sid in units]


def discover_manifest(manifest: Path) -> list[ImageRecord]:
    """Read a CSV manifest with columns ``path,patient_id[,split]`` (paths relative to it)."""
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:  # -sig: a BOM from Excel is not a header
            rows = list(csv.DictReader(handle))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MemoScopeError(f"{manifest}: cannot read the CSV manifest ({exc}).") from exc
    missing = {"path", "patient_id"} - set(header)
    if not rows or missing:
        raise MemoScopeError(
            f"{manifest}: a manifest needs a header with columns path,patient_id[,split] and at "
            f"least one row; missing {sorted(missing) or 'rows'}."
        )
    records: list[ImageRecord] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        rel = unescape_cell((row.get("path") or "").strip())  # as MemoScope's own manifests escape formulas
        patient = canonical_patient(unescape_cell(row.get("patient_id") or ""))
        if not rel or not patient:
            raise MemoScopeError(f"{manifest}, line {line}: empty 'path' or 'patient_id'.")
        if rel in seen:
            raise MemoScopeError(
                f"{manifest}, line {line}: duplicate path {rel!r} (first on line {seen[rel]}); "
                "each image may appear once."
            )
        seen[rel] = line
        split = (row.get("split") or "").strip() or None
        if split is not None and split.lower() not in KNOWN_SPLITS:
            raise MemoScopeError(
                f"{manifest}, line {line}: split {split!r} is not one of {sorted(KNOWN_SPLITS)}; fix the 'split' "
                "column (a typo would silently drop the row)."
            )
        if (manifest.parent / rel).is_dir() and not _is_dicom_series_dir(manifest.parent / rel):
            raise MemoScopeError(
                f"{manifest}, line {line}: {rel!r} is a folder; list image files (or a folder of one DICOM series)."
            )
        records.append(ImageRecord(manifest.parent / rel, Path(rel).as_posix(), patient, split))
    return records


def _is_dicom_series_dir(path: Path) -> bool:
    return any(f.name.lower().endswith(".dcm") for f in path.iterdir())


def discover_patients(
    source: str | Path, role: Role | None = None, patients: PatientRule | str = "auto"
) -> tuple[list[ImageRecord], PatientGrouping]:
    """List the images of a folder or manifest with each one's patient by the ``patients`` rule
    (:mod:`core.io.patients`), and what the rule found; a manifest with a ``split`` column is filtered by role."""
    source = Path(source)
    if not source.exists():
        raise MemoScopeError(f"{source}: no such file or folder; check the path.")
    if source.is_dir():
        records = discover_folder(source)
        if not records:
            raise MemoScopeError(f"{source}: no images found (looked for {', '.join(SUFFIXES)} recursively).")
        return assign_patients(records, patients, source)
    if source.suffix.lower() != ".csv":
        raise MemoScopeError(f"{source}: expected a folder or a .csv manifest.")
    records = discover_manifest(source)
    if role is not None and any(r.split for r in records):
        names = _ROLE_NAMES[role]
        records = [r for r in records if (r.split or "").lower() in names]
        if not records:
            raise MemoScopeError(f"{source}: no rows with split in {sorted(names)}; fix the 'split' column.")
    return assign_patients(records, patients, source, is_manifest=True)


def discover(
    source: str | Path, role: Role | None = None, patients: PatientRule | str | None = None
) -> list[ImageRecord]:
    """The images of a folder or manifest (see :func:`discover_patients`). Without a rule, patients come from the
    folders or the manifest's column and no header is read (all that listing a synthetic set needs)."""
    if patients is None:
        patients = "manifest" if Path(source).suffix.lower() == ".csv" else "folder"
    return discover_patients(source, role, patients)[0]


def _read_with(reader: object, path: Path) -> tuple[np.ndarray, Any]:
    """The image's array and the reader's own object for it (a DICOM file's dataset, a series' list of them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image_obj = reader.read(str(path))  # type: ignore[attr-defined]
        array, _ = reader.get_data(image_obj)  # type: ignore[attr-defined]
    failed = [w for w in caught if "Failed to read" in str(w.message)]
    if failed:
        raise MemoScopeError(f"{path}: {len(failed)} DICOM slice(s) could not be read.")
    return np.asarray(array), image_obj


def _reader_for(path: Path) -> object:
    from monai.data import NibabelReader, NumpyReader, PILReader, PydicomReader  # with the first image, not the module

    name = path.name.lower()
    if path.is_dir() or name.endswith(".dcm"):
        return PydicomReader(swap_ij=False)
    if name.endswith((".nii", ".nii.gz")):
        return NibabelReader()
    if name.endswith(".png"):
        return PILReader(converter=_as_displayed, reverse_indexing=False)
    if name.endswith(".npy"):
        return NumpyReader(allow_pickle=False)
    raise MemoScopeError(f"{path}: unsupported file type; use NIfTI, DICOM, PNG or NPY.")


def _as_displayed(image: Any) -> Any:
    """A PIL image as a viewer shows it: a palette image's colours, not its palette indices (``quantize()`` and many
    image tools save greyscale slices that way, with indices in any order); a 1-bit image as 0/255 grey."""
    if image.mode in ("P", "PA"):
        return image.convert("RGBA")
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    return image


def _dicom_as_displayed(path: Path, array: np.ndarray, header: Any) -> np.ndarray:
    """What a DICOM viewer shows, in the modality's values: MONAI's reader has applied the rescale slope and
    intercept; here a Modality LUT Sequence (when there is no rescale), a VOI LUT Sequence (a display curve that only
    the header knows), and MONOCHROME1 (low values shown bright: most X-ray) turned around so that bright is high,
    as in every other file. Window centre/width is not applied: it is a linear map with clipping, which the scan's
    intensity rule (``--intensity``) decides for every set alike. ``header``: the dataset MONAI's reader read the
    pixels from (a series: its first slice's), so no file is read twice."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    if isinstance(header, list):
        header = header[0]
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if int(header.get("SamplesPerPixel", 1) or 1) > 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise MemoScopeError(f"{path}: a colour DICOM image ({photometric}); MemoScope compares greyscale scans only.")
    values = np.asarray(array)
    if "ModalityLUTSequence" in header and "RescaleSlope" not in header:
        values = apply_modality_lut(values, header)
    if "VOILUTSequence" in header:
        values = apply_voi(values, header)
    if photometric == "MONOCHROME1":
        wide = values.astype(np.float64)
        values = wide.max() + wide.min() - wide  # the same range, bright where the viewer shows bright
    return np.asarray(values)


def read_raw(path: str | Path) -> np.ndarray:
    """Read one image or DICOM series with MONAI's readers, as a viewer displays it.

    A palette PNG gives its colours' grey values (not palette indices); a DICOM file its modality values with the
    Modality and VOI LUT sequences applied and MONOCHROME1 turned so that bright is high (:func:`_dicom_as_displayed`).
    A copy saved in any of these ways reads as the image it shows.

    Returns:
        ``(H, W)`` or ``(X, Y, Z)`` array: singleton axes dropped, DICOM rescale applied.
    """
    from monai.data import PydicomReader

    path = Path(path)
    reader = _reader_for(path)
    try:
        array, image_obj = _read_with(reader, path)
        if isinstance(reader, PydicomReader):
            array = _dicom_as_displayed(path, array, image_obj)
    except MemoScopeError:
        raise
    except Exception as exc:  # readers raise OSError, EOFError, zlib, pydicom and PIL errors
        raise MemoScopeError(
            f"{path}: cannot read the image ({type(exc).__name__}: {exc}); the file may be "
            "truncated or of another format. Replace it, or pass --skip-bad to leave it out."
        ) from exc
    if array.ndim == 3 and path.name.lower().endswith(".png") and array.shape[-1] in (2, 3, 4):
        colour = array[..., : 1 if array.shape[-1] == 2 else 3]  # grey+alpha keeps its grey channel
        if not all(np.array_equal(colour[..., 0], colour[..., c]) for c in range(colour.shape[-1])):
            raise MemoScopeError(f"{path}: a colour PNG; save it as single-channel greyscale.")
        array = colour[..., 0]
    return np.squeeze(array)


def _check_values(path: Path, array: np.ndarray) -> None:
    if array.size == 0 or array.ndim < 2 or min(array.shape) < 2:
        raise MemoScopeError(
            f"{path}: shape {array.shape} is not an image (MemoScope reads 2D images and 3D volumes of at least 2 "
            "voxels per axis); remove the file or export it again."
        )
    if array.dtype != np.bool_ and not np.issubdtype(array.dtype, np.number):  # a 1-bit image is numeric enough
        raise MemoScopeError(f"{path}: voxel type {array.dtype} is not numeric.")
    if np.iscomplexobj(array):
        raise MemoScopeError(
            f"{path}: complex voxels ({array.dtype}); save the magnitude (np.abs) so no part is dropped silently."
        )
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise MemoScopeError(f"{path}: {bad} NaN/Inf voxels; fix or remove the image.")


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
            _check_values(record.path, array)
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


def patient_key(patient_id: str) -> str:
    """How patient IDs are compared: case, Unicode form, invisible characters and surrounding space do not make
    another patient (:func:`core.io.records.canonical_patient`)."""
    return canonical_patient(patient_id).casefold()


def image_hashes(images: ImageSet) -> list[str]:
    """SHA-256 of each preprocessed image (what the detector sees), for exact-duplicate checks."""
    return [hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images.images]


def check_record_leaks(train: list[ImageRecord], val: list[ImageRecord], train_source: str, val_source: str) -> None:
    """The same leak checks on files, before anything is loaded: shared patients, byte-identical files."""
    train_keys = {patient_key(r.patient_id) for r in train}
    shared = sorted({r.patient_id for r in val if patient_key(r.patient_id) in train_keys})
    if shared:
        raise MemoScopeError(
            f"{len(shared)} patient(s) appear in both training ({train_source}) and validation ({val_source}), "
            f"e.g. {shared[:3]} (IDs compared without case); split by patient (python -m core split)."
        )
    digests = {_file_digest(r.path): r for r in train if Path(r.path).is_file()}
    for record in val:
        twin = digests.get(_file_digest(record.path)) if Path(record.path).is_file() else None
        if twin is not None:
            raise MemoScopeError(
                f"validation file {record.path} is byte-identical to training file {twin.path}: a leaked copy would "
                "raise the threshold and hide real copies. Remove it from one of the sets."
            )


def _file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_patient_overlap(train: ImageSet, val: ImageSet) -> None:
    """Refuse a validation set that leaks training data: calibration needs real images of unseen patients.

    Checks, before any work: 1. no patient in both sets (IDs compared case-insensitively);
    2. no validation image identical to a training image after preprocessing, whatever its name.
    """
    train_keys = {patient_key(p) for p in train.patient_ids}
    shared = sorted({p for p in val.patient_ids if patient_key(p) in train_keys})
    if shared:
        raise MemoScopeError(
            f"{len(shared)} patient(s) appear in both training ({train.source}) and validation "
            f"({val.source}), e.g. {shared[:3]} (IDs compared without case); split by patient (python -m core split)."
        )
    seen = {h: i for i, h in enumerate(image_hashes(train))}
    same = [(j, seen[h]) for j, h in enumerate(image_hashes(val)) if h in seen]
    if same:
        j, i = same[0]
        raise MemoScopeError(
            f"{len(same)} validation image(s) are identical to training images, e.g. {val.ids[j]} ({val.source}) = "
            f"{train.ids[i]} ({train.source}): a leaked copy would raise the threshold and hide real copies. "
            "Remove it from one of the sets."
        )


def split_by_patient(patient_ids: Sequence[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split samples into training and validation so that no patient is in both.

    Returns:
        (train_indices, val_indices), int64 arrays in ascending order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise MemoScopeError(f"val_fraction {val_fraction} must be between 0 and 1.")
    keys = [patient_key(p) for p in patient_ids]
    patients = sorted(set(keys))
    if len(patients) < 2:
        raise MemoScopeError("a patient-level split needs at least 2 patients.")
    n_val = min(len(patients) - 1, max(1, round(val_fraction * len(patients))))
    order = np.random.default_rng(seed).permutation(len(patients))
    val_patients = {patients[i] for i in order[:n_val]}
    is_val = np.array([k in val_patients for k in keys])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
