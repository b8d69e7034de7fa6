"""Every reader reads what the file displays: a copy of a training scan saved the way common tools save it (palette
and grey PNG at 8/16 bit, DICOM MONOCHROME1/2 with and without LUTs, NIfTI with a scaling slope, float NPY near the
float64 limits) reads as that scan, and a scan flags it.

Each way of saving once shipped a copy: a palette PNG read as palette indices scored r = -0.995 against what it shows,
a MONOCHROME1 DICOM r = -1, and a float64 copy at +-1.7e308 became NaN (score 0, p = 1) in min-max scaling."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from core.common.errors import MemoScopeError
from core.io.preprocessing import PreprocessSpec, preprocess
from core.io.readers import read_raw
from core.io.sample_data import REAL_VOLUMES, axial_slices
from tests.dicom_files import write_dicom

REPO = Path(__file__).resolve().parents[1]
DETECTOR = REPO / "checkpoints" / "demo-2d-detector"
SPEC = PreprocessSpec((64, 64))


def _unit(image: np.ndarray) -> np.ndarray:
    """A scan in [0, 1] (its own min..max)."""
    image = image.astype(np.float64)
    return (image - image.min()) / (image.max() - image.min())


def _dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", **tags: object) -> None:
    """One secondary-capture (X-ray-like) DICOM image with the given stored values."""
    write_dicom(path, stored, photometric, SecondaryCaptureImageStorage, Modality="DX", **tags)


def _lut_item(table: np.ndarray, first: int = 0) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(table), first, 16]
    item.LUTData = np.asarray(table, dtype=np.uint16).tobytes()  # OW: 16-bit words
    return item


def _png8(path: Path, t: np.ndarray) -> None:
    Image.fromarray(np.round(t * 255).astype(np.uint8)).save(path)


def _png16(path: Path, t: np.ndarray) -> None:
    Image.fromarray(np.round(t * 65535).astype(np.uint16)).save(path)


def _png_palette(path: Path, t: np.ndarray) -> None:
    """PIL's ``quantize()``: palette indices in any order (here brightest first), the palette holding the greys."""
    Image.fromarray(np.round(t * 255).astype(np.uint8)).quantize(256).save(path)


def _png_palette_rgb(path: Path, t: np.ndarray) -> None:
    grey = np.round(t * 255).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).convert("P", palette=Image.Palette.ADAPTIVE, colors=128).save(path)


def _png_grey_alpha(path: Path, t: np.ndarray) -> None:
    Image.fromarray(np.round(t * 255).astype(np.uint8)).convert("LA").save(path)


def _dicom_mono2(path: Path, t: np.ndarray) -> None:
    _dicom(path, np.round(t * 4095).astype(np.uint16))


def _dicom_mono1(path: Path, t: np.ndarray) -> None:
    """Most X-ray: low values shown bright. The displayed image is the scan; the stored values its negative."""
    _dicom(path, np.round((1 - t) * 4095).astype(np.uint16), "MONOCHROME1")


def _dicom_rescaled(path: Path, t: np.ndarray) -> None:
    _dicom(path, np.round(t * 3000 - 1024).astype(np.int16), RescaleSlope=0.5, RescaleIntercept=-1024)


def _dicom_voi_lut(path: Path, t: np.ndarray) -> None:
    """Stored values that a VOI LUT Sequence (a display curve, as X-ray detectors write) maps to the scan."""
    entries = np.arange(4096) / 4095
    stored = np.round(np.sqrt(t) * 4095).astype(np.uint16)  # what the detector stores ...
    _dicom(path, stored, VOILUTSequence=[_lut_item(np.round(entries**2 * 65535))])  # ... and what it shows


def _dicom_mono1_modality_lut(path: Path, t: np.ndarray) -> None:
    """MONOCHROME1 with a Modality LUT Sequence (no rescale): stored indices -> values -> shown inverted."""
    stored = np.round((1 - t) ** 2 * 4095).astype(np.uint16)
    table = np.round(np.sqrt(np.arange(4096) / 4095) * 4095)
    _dicom(path, stored, "MONOCHROME1", ModalityLUTSequence=[_lut_item(table)])


def _nifti_scaled(path: Path, t: np.ndarray) -> None:
    """int16 voxels with scl_slope/scl_inter, as nibabel saves floats into an integer type."""
    image = nib.Nifti1Image((t * 2000 - 1000).astype(np.float32), np.eye(4))
    image.header.set_data_dtype(np.int16)
    nib.save(image, str(path))


def _npy_float32(path: Path, t: np.ndarray) -> None:
    np.save(path, t.astype(np.float32))


def _npy_float64_extreme(path: Path, t: np.ndarray) -> None:
    """Finite, but max - min overflows float64 (the copy that once became NaN and shipped)."""
    np.save(path, (t * 2 - 1) * 1.7e308)


WAYS: dict[str, tuple[str, Callable[[Path, np.ndarray], None]]] = {
    "png8": (".png", _png8),
    "png16": (".png", _png16),
    "png-palette": (".png", _png_palette),
    "png-palette-rgb": (".png", _png_palette_rgb),
    "png-grey-alpha": (".png", _png_grey_alpha),
    "dicom-mono2": (".dcm", _dicom_mono2),
    "dicom-mono1": (".dcm", _dicom_mono1),
    "dicom-rescaled": (".dcm", _dicom_rescaled),
    "dicom-voi-lut": (".dcm", _dicom_voi_lut),
    "dicom-mono1-modality-lut": (".dcm", _dicom_mono1_modality_lut),
    "nifti-scaled": (".nii.gz", _nifti_scaled),
    "npy-float32": (".npy", _npy_float32),
    "npy-float64-extreme": (".npy", _npy_float64_extreme),
}


@pytest.fixture(scope="module")
def scan_slice() -> np.ndarray:
    """A real 64 px brain slice in [0, 1]."""
    volume = next(v for v in REAL_VOLUMES if v.subject == "mni152")
    return _unit(axial_slices(volume, 64, step=8)[3, 0])


@pytest.mark.parametrize("way", sorted(WAYS))
def test_a_copy_saved_any_way_reads_as_the_scan_it_shows(way: str, scan_slice: np.ndarray, tmp_path: Path) -> None:
    suffix, save = WAYS[way]
    path = tmp_path / f"copy{suffix}"
    save(path, scan_slice)
    read = preprocess(read_raw(path)[None].astype(np.float64), SPEC)[0]
    expected = preprocess(scan_slice[None], SPEC)[0]
    r = float(np.corrcoef(read.ravel(), expected.ravel())[0, 1])
    # quantisation (8-bit, a 128-colour palette, a 12-bit LUT) moves pixels by < 1 %: r stays above 0.999
    assert r > 0.999, f"{way}: r = {r:.4f} against the image it displays"


def test_finite_extremes_never_become_nan() -> None:
    """Two voxels at +-1.7e308 in an otherwise ordinary image: scaling stays finite (no NaN score, no p = 1)."""
    image = np.linspace(0, 1, 64 * 64).reshape(1, 64, 64)
    image[0, 0, 0], image[0, 1, 1] = 1.7e308, -1.7e308
    for rule in ("minmax", "percentile"):
        out = preprocess(image, PreprocessSpec((32, 32), intensity=rule))  # type: ignore[arg-type]
        assert np.isfinite(out).all(), rule


def test_an_image_without_voxels_is_named(tmp_path: Path) -> None:
    from core.io.load import load_records
    from core.io.records import ImageRecord

    for name, array in (("empty.npy", np.zeros((0, 64))), ("line.npy", np.zeros((1, 64))), ("dot.png", None)):
        if array is None:
            Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / name)
        else:
            np.save(tmp_path / name, array)
        with pytest.raises(MemoScopeError, match=rf"{name}: shape .* is not an image"):
            load_records([ImageRecord(tmp_path / name, name, "p")], SPEC, str(tmp_path))


def test_a_colour_palette_dicom_or_png_is_refused(tmp_path: Path) -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = np.arange(32)[:, None] * 8
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "colour.png")
    with pytest.raises(MemoScopeError, match="colour PNG"):
        read_raw(tmp_path / "colour.png")
    _dicom(tmp_path / "palette.dcm", np.zeros((32, 32), np.uint16), "PALETTE COLOR")
    with pytest.raises(MemoScopeError, match="colour DICOM"):
        read_raw(tmp_path / "palette.dcm")


@pytest.mark.slow
def test_a_scan_flags_a_copy_saved_every_way(tmp_path: Path) -> None:
    """Training slices as 16-bit PNG; one copy of a different training slice saved each way among real slices of
    unseen subjects: every copy is flagged, no unseen slice is."""
    from core.study.scan import ScanConfig, run_scan

    volumes = {v.subject: v for v in REAL_VOLUMES}
    train = {s: axial_slices(volumes[s], 64, step=4) for s in ("mni152", "nibabel-example4d")}
    val = {s: axial_slices(volumes[s], 64, step=4) for s in ("dipy-aniso-vox", "dipy-piesno")}
    unseen = axial_slices(volumes["nibabel-anatomical"], 64, step=6)
    for role, subjects in (("train", train), ("val", val)):
        for subject, images in subjects.items():
            (tmp_path / role / subject).mkdir(parents=True)
            for i, image in enumerate(images):
                _png16(tmp_path / role / subject / f"{i:03d}.png", _unit(image[0]))
    sources = np.concatenate(list(train.values()))
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()
    for j, way in enumerate(sorted(WAYS)):
        suffix, save = WAYS[way]
        save(synthetic / f"copy-{way}{suffix}", _unit(sources[(5 * j) % len(sources), 0]))
    for j, image in enumerate(unseen):
        _png16(synthetic / f"unseen-{j:03d}.png", _unit(image[0]))
    run_scan(
        ScanConfig(
            train=str(tmp_path / "train"),
            val=str(tmp_path / "val"),
            synthetic=str(synthetic),
            out=str(tmp_path / "study"),
            spec=SPEC,
            detector=str(DETECTOR),
            cache_dir=str(tmp_path / "cache"),
            device="cpu",
            k=1,
        )
    )
    with open(tmp_path / "study" / "pairs.csv", newline="") as handle:
        calls = {row["synthetic_id"]: row for row in csv.DictReader(handle) if row["rank"] == "1"}
    missed = {sid: row["similarity"] for sid, row in calls.items() if sid.startswith("copy") and row["is_copy"] != "1"}
    assert not missed, f"copies released: {missed}"
    assert len([s for s in calls if s.startswith("copy")]) == len(WAYS)
    assert not [sid for sid, row in calls.items() if sid.startswith("unseen") and row["is_copy"] == "1"]
