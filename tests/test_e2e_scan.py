"""End to end on real brain MR from pip packages: train a tiny LDM, generate, plant copies, scan via the CLI."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.detect.planted import plant_copies
from core.generative.sample import to_uint16
from core.io.sample_data import REAL_VOLUMES, axial_slices
from core.study.results import read_summary

ROOT = Path(__file__).resolve().parents[1]
SUBJECTS = {v.subject: v for v in REAL_VOLUMES}


def _write(folder: Path, subject: str, images: np.ndarray, prefix: str = "") -> None:
    (folder / subject).mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(to_uint16(image[0])).save(folder / subject / f"{prefix}{i:03d}.png")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_scan_flags_planted_copies_and_spares_held_out_scans(tmp_path: Path) -> None:
    train_dir, val_dir, syn_dir = tmp_path / "train", tmp_path / "val", tmp_path / "synthetic"
    train_slices = {
        s: axial_slices(SUBJECTS[s], 64, step=3 if s == "mni152" else 2) for s in ("mni152", "nibabel-example4d")
    }
    for subject, images in train_slices.items():
        _write(train_dir, subject, images)
    # Held-out subjects: even slices calibrate (validation), odd slices are the real held-out
    # images mixed into the synthetic set. (Held-out *subjects* unlike every validation subject
    # are flagged far more often; benchmarks/planted_copies.py measures that case.)
    held_out = {
        s: axial_slices(SUBJECTS[s], 64)
        for s in ("nibabel-anatomical", "dipy-aniso-vox", "dipy-s0-10slices", "dipy-piesno")
    }
    for subject, images in held_out.items():
        _write(val_dir, subject, images[0::2])
    train_all = np.concatenate(list(train_slices.values()))
    unseen = np.concatenate([images[1::2] for images in held_out.values()])
    n_val = sum(len(images[0::2]) for images in held_out.values())

    # 1. a tiny LDM trained by our trainer, and real samples from it
    result = _cli(
        "train-ldm",
        "--data",
        str(train_dir),
        "--out",
        str(tmp_path / "ldm"),
        "--ae-epochs",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "16",
    )
    assert result.returncode == 0, result.stderr
    result = _cli(
        "generate",
        "--checkpoint",
        str(tmp_path / "ldm" / "last"),
        "--out",
        str(syn_dir / "generated"),
        "--n",
        "4",
        "--steps",
        "5",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr

    # 2. planted copies of training slices among real unseen-subject slices
    planted = plant_copies(train_all, unseen, per_kind=4, seed=0, kinds=["exact", "noise", "shift", "rotate"])
    is_copy = planted.source_index >= 0
    _write(syn_dir, "planted", planted.images[is_copy], prefix="copy")
    _write(syn_dir, "unseen", planted.images[~is_copy], prefix="real")

    # 3. the scan, through the CLI
    result = _cli(
        "scan",
        "--train",
        str(train_dir),
        "--val",
        str(val_dir),
        "--synthetic",
        str(syn_dir),
        "--out",
        str(tmp_path / "study"),
        "--detector-epochs",
        "10",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--k",
        "3",
    )
    assert result.returncode == 0, result.stderr
    study = tmp_path / "study"
    summary = read_summary(study)
    assert [summary.inputs[r].n for r in ("train", "val", "synthetic")] == [
        len(train_all),
        n_val,
        4 + len(planted.images),
    ]
    pairs = [r for r in csv.DictReader(open(study / "pairs.csv")) if r["rank"] == "1"]
    by_id = {r["synthetic_id"]: r for r in pairs}
    train_ids = sorted(p.relative_to(train_dir).as_posix() for p in train_dir.rglob("*.png"))
    flat_ids = [f"{s}/{i:03d}.png" for s, images in train_slices.items() for i in range(len(images))]
    for j, source in enumerate(planted.source_index[is_copy]):
        row = by_id[f"planted/copy{j:03d}.png"]
        assert row["is_copy"] == "1", row
        assert row["train_id"] == flat_ids[source] and row["train_id"] in train_ids
    unseen_flagged = np.mean([by_id[f"unseen/real{j:03d}.png"]["is_copy"] == "1" for j in range(len(unseen))])
    # the verified default: held-out subjects unlike every validation subject are still rarely called copies
    assert unseen_flagged < 0.1, f"{unseen_flagged:.0%} of real held-out slices flagged"
    assert summary.method == "verified" and summary.threshold.rule == "heldout-patient"
    assert summary.fpr_unseen is not None  # 4 validation patients: each leave-one-out fold keeps 3
    # the default rule recounts from the study alone: neighbors.npz numbers the validation patients (no names)
    with np.load(study / "neighbors.npz") as stored:
        groups = stored["val_patient_group"]
    assert groups.dtype.kind == "i" and sorted(set(groups.tolist())) == [0, 1, 2, 3]
    from core.study.results import ScanResults

    assert ScanResults.open(study).calibration().threshold("heldout-patient").value == pytest.approx(summary.tau)
    shifted = by_id[f"planted/copy{2 * 4:03d}.png"]  # the first shifted copy: aligned back before scoring
    assert shifted["align_shift"] != "0 0" and float(shifted["similarity"]) > 0.95
    assert float(by_id["planted/copy000.png"]["pixel_corr"]) > 0.99
    assert summary.checkpoint_hash and summary.detector.hash
    assert [r["status"] for r in __import__("core.study.store", fromlist=["Study"]).Study(study).runs()] == ["done"]

    # 4. a second scan with the saved detector reuses the cached embeddings
    result = _cli(
        "scan",
        "--train",
        str(train_dir),
        "--val",
        str(val_dir),
        "--synthetic",
        str(syn_dir),
        "--out",
        str(study),
        "--detector",
        str(study / "detector"),
        "--method",
        "paper",
        "--k",
        "3",
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr
    again = read_summary(study)
    assert all(v.embeddings_cached for v in again.inputs.values())
    assert again.method == "paper" and again.threshold.rule == "paper" and again.verify is None
