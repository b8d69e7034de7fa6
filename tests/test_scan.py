"""The scan on scans larger than the embedding's grid: retrieval on the thumbnail, the verified call, the pixel checks,
Review's images and the self-test at the scans' own resolution (up to ``--verify-size``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.detect.planted import plant_copies
from core.generative.sample import to_uint16
from core.io.preprocessing import PreprocessSpec
from core.io.sample_data import REAL_VOLUMES, axial_slices
from core.study.results import read_summary
from core.study.scan import ScanConfig, run_scan

REPO = Path(__file__).resolve().parents[1]
DETECTOR = REPO / "checkpoints" / "demo-2d-detector"  # trained on 64 px: no training here
NATIVE = 128


def _save(folder: Path, name: str, image: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint16(image[0])).save(folder / name)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """128 px slices of 3 training and 3 validation subjects; copies (exact, shifted) planted among unseen slices."""
    root = tmp_path_factory.mktemp("native")
    volumes = {v.subject: v for v in REAL_VOLUMES}
    train = {s: axial_slices(volumes[s], NATIVE, step=4) for s in ("mni152", "nibabel-example4d", "dipy-s0-10slices")}
    held = {
        s: axial_slices(volumes[s], NATIVE, step=2) for s in ("nibabel-anatomical", "dipy-aniso-vox", "dipy-piesno")
    }
    for role, subjects in (("train", train), ("val", {s: x[0::2] for s, x in held.items()})):
        for subject, images in subjects.items():
            for i, image in enumerate(images):
                _save(root / role / subject, f"{i:03d}.png", image)
    unseen = np.concatenate([x[1::2] for x in held.values()])
    planted = plant_copies(np.concatenate(list(train.values())), unseen, 3, seed=0, kinds=["exact", "shift"])
    for j, image in enumerate(planted.images):
        _save(root / "synthetic", f"{planted.kind[j]}_{j:03d}.png", image)
    return root


def _scan(root: Path, out: str, max_size: int = 0) -> Path:
    run_scan(
        ScanConfig(
            train=str(root / "train"),
            val=str(root / "val"),
            synthetic=str(root / "synthetic"),
            out=str(root / out),
            spec=PreprocessSpec((64, 64)),
            detector=str(DETECTOR),
            cache_dir=str(root / "cache"),
            device="cpu",
            k=3,
            verify={"max_size": max_size},
        )
    )
    return root / out


def _nearest(study: Path) -> dict[str, dict[str, str]]:
    with open(study / "pairs.csv", newline="") as handle:
        return {r["synthetic_id"]: r for r in csv.DictReader(handle) if r["rank"] == "1"}


@pytest.mark.slow
def test_the_verified_call_compares_the_scans_at_their_own_resolution(data: Path, tmp_path: Path) -> None:
    from core.study.report import write_report
    from core.study.results import ScanResults
    from core.study.review import aligned_training, load_study_set
    from core.study.selftest import SelfTestConfig, run_selftest

    study = _scan(data, "own")
    summary = read_summary(study)
    assert summary.preprocessing.spatial_size == (64, 64)  # retrieval: the detector's thumbnail
    assert summary.verification is not None and summary.verification.spatial_size == (NATIVE, NATIVE)
    nearest = _nearest(study)
    copies = {sid: row for sid, row in nearest.items() if not sid.startswith("unseen")}
    assert copies and all(row["is_copy"] == "1" for row in copies.values())
    assert not any(row["is_copy"] == "1" for sid, row in nearest.items() if sid.startswith("unseen"))
    # a level-1 shift is 2 px of a 64 px image: 4 px of these 128 px scans, and found in their pixels
    shifts = [[abs(int(v)) for v in row["align_shift"].split()] for sid, row in copies.items() if "shift" in sid]
    assert shifts and all(s == [4, 4] for s in shifts), shifts
    # Review and the report show the images as compared, moved by the alignment that was scored
    train = load_study_set(summary, "train")
    assert train.images.shape[2:] == (NATIVE, NATIVE)
    pair = next(p for p in ScanResults.open(study).pairs() if p.rank == 1 and "shift" in p.synthetic_id)
    moved = aligned_training(summary, pair, train.images[train.ids.index(pair.train_id), 0])
    synthetic = load_study_set(summary, "synthetic")
    query = synthetic.images[synthetic.ids.index(pair.synthetic_id), 0]
    crop = (slice(16, -16), slice(16, -16))
    assert np.corrcoef(moved[crop].ravel(), query[crop].ravel())[0, 1] > 0.98
    assert "data:image/png;base64," in write_report(study, tmp_path / "r.html", "html").read_text()
    # the self-test plants its copies on the same grid and finds them
    result = run_selftest(SelfTestConfig(study=str(study), per_kind=3, levels=(1,), device="cpu"))
    assert result.recall["exact@1"].value == 1.0 and result.recall["shift@1"].value == 1.0

    thumb = read_summary(_scan(data, "thumbnail", max_size=64))
    assert thumb.verification is None  # --verify-size 64: everything on the embedding's grid, as before
    assert load_study_set(thumb, "train").images.shape[2:] == (64, 64)


def test_the_grid_is_never_finer_than_the_synthetic_samples_nor_resampled_for_crop_pad(
    data: Path, tmp_path: Path
) -> None:
    """An LDM's 64 px samples against 128 px training scans are verified at 64 px: upsampled, they would lack the
    detail their own source has and a true copy would score low. crop_pad keeps the scans' pixels already."""
    from core.study.scan import verification_spec

    def config(synthetic: Path, **spec: object) -> tuple[ScanConfig, PreprocessSpec]:
        chosen = PreprocessSpec((64, 64), **spec)  # type: ignore[arg-type]
        return ScanConfig(str(data / "train"), str(data / "val"), str(synthetic), str(tmp_path / "s"), chosen), chosen

    assert verification_spec(*config(data / "synthetic")) == PreprocessSpec((NATIVE, NATIVE))
    for j in range(3):
        _save(tmp_path / "generated", f"{j}.png", np.random.default_rng(j).random((1, 64, 64)).astype(np.float32))
    assert verification_spec(*config(tmp_path / "generated")) is None
    assert verification_spec(*config(data / "synthetic", resize="crop_pad")) is None
