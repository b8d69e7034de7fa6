"""The embedded demo: the data rebuild, the CI-sized recipe, and the committed demo's consistency."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from core.common.errors import MemoScopeError
from core.common.provenance import sha256_file
from core.detect.metrics import Fraction
from core.generative.ldm import checkpoint_hash, load_ldm
from core.io.preprocessing import PreprocessSpec
from core.study.compare import compare
from core.study.results import ScanResults, read_summary
from core.study.review import ANATOMY_FLOOR
from core.study.scan import ScanConfig
from core.study.store import DEMO_MARKER
from tools import demo, findings, rebuild_check

REPO = Path(__file__).resolve().parents[1]
COMMITTED = (REPO / "docs" / "FINDINGS.md").is_file()


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_build_data_is_reproducible_and_split_by_subject(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    counts = demo.build_data(a)
    demo.build_data(b)
    assert _tree_hashes(a) == _tree_hashes(b)
    assert set(counts) == set(demo.TRAIN_SUBJECTS) | set(demo.VAL_SUBJECTS)
    for dims in (2, 3):
        with open(a / f"{dims}d" / "manifest.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        splits: dict[str, set[str]] = {}
        for row in rows:
            splits.setdefault(row["patient_id"], set()).add(row["split"])
            assert (a / f"{dims}d" / row["path"]).is_file()
        assert all(len(s) == 1 for s in splits.values()), "a subject is in both splits"
        train = demo.TRAIN_SUBJECTS if dims == 2 else demo.TRAIN_SUBJECTS_3D
        assert {p for p, s in splits.items() if s == {"train"}} == set(train)
        assert {demo.split_of(p, dims) for p in splits} == {"train", "val"}
    sources = (a / "SOURCES.md").read_text()
    for volume in demo._volumes(demo.TRAIN_SUBJECTS + demo.VAL_SUBJECTS):
        assert volume.subject in sources and volume.licence in sources and volume.relative_path in sources


def test_the_rebuild_check_allows_rounding_and_nothing_more(tmp_path: Path) -> None:
    """One grey level (PNG) or 1e-6 (NIfTI) is rounding; two levels, 1e-5, another shape or an edited manifest is a
    changed recipe and is reported by file."""
    committed, built = tmp_path / "committed", tmp_path / "built"
    for root in (committed, built):
        root.mkdir()
        Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(root / "a.png")
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(root / "c.nii.gz"))
        (root / "manifest.csv").write_text("path,patient_id\n")

    def change(png: int, cube: float, manifest: str = "path,patient_id\n") -> list[str]:
        pixels = np.full((4, 4), 1000, np.uint16)
        pixels[1, 2] += png
        Image.fromarray(pixels).save(built / "a.png")
        nib.save(nib.Nifti1Image(np.full((2, 2, 2), cube, np.float32), np.eye(4)), str(built / "c.nii.gz"))
        (built / "manifest.csv").write_text(manifest)
        return rebuild_check.differences(built, committed)

    assert change(1, 1e-6) == []
    assert [d.split(":")[0] for d in change(2, 0.0)] == ["a.png"]
    assert [d.split(":")[0] for d in change(0, 1e-5)] == ["c.nii.gz"]
    assert [d.split(":")[0] for d in change(0, 0.0, "path,patient\n")] == ["manifest.csv"]
    (built / "extra.png").write_bytes((built / "a.png").read_bytes())
    assert "extra.png: only in the rebuild" in change(0, 0.0)


def test_compare_respects_intervals() -> None:
    def f(value: float, low: float, high: float) -> Fraction:
        return Fraction(0, 1, value, low, high, "test")

    low, high, near = f(0.1, 0.05, 0.15), f(0.5, 0.4, 0.6), f(0.12, 0.07, 0.2)
    assert compare(low, high).startswith("clearly higher")
    assert compare(high, low).startswith("clearly lower")
    assert compare(low, near).startswith("higher, within overlapping")
    assert compare(near, low).startswith("lower, within overlapping")
    assert compare(low, f(0.1, 0.05, 0.15)) == "the same as"


def test_verdict_names_each_fraction_it_counts() -> None:
    """The findings' summary sentence counts augmentation's effect separately for each fraction (issue 14: it had
    claimed 3 of 3 for both while the copy fraction was lower at 2 of 3)."""
    from types import SimpleNamespace

    def f(value: float) -> Fraction:
        return Fraction(0, 1, value, value - 0.1, value + 0.1, "test")

    memorized = {"early": (0.02, 0.0), "converged": (0.61, 0.57), "over-trained": (0.90, 0.89)}
    copies = {"early": (0.01, 0.0), "converged": (0.49, 0.50), "over-trained": (0.96, 0.91)}
    by_key = {
        (2, variant, stage): SimpleNamespace(
            summary=SimpleNamespace(memorized=f(memorized[stage][i]), copies=f(copies[stage][i]))
        )
        for i, variant in enumerate(("noaug", "aug"))
        for stage in demo.STAGES
    }
    text = findings.verdict(by_key)  # type: ignore[arg-type]
    assert "a lower memorized fraction at 3 of 3 training lengths" in text
    assert "a lower copy fraction at 2 of 3 training lengths" in text
    assert "cannot be told from chance" in text


@pytest.mark.slow
def test_quick_profile_builds_everything(tmp_path: Path) -> None:
    """The CI-sized recipe: same commands as `make demo`, a few epochs and samples."""
    profile = demo.PROFILES["quick"]
    record = demo.build_all(tmp_path, profile)
    paths = demo.DemoPaths(tmp_path)
    assert set(record["seconds"]) == {"data", "ldm_training", "detector_training", "generate_and_scan"}
    for model in demo.demo_models(profile):
        folder = paths.checkpoints / model.checkpoint
        config = json.loads((folder / "ldm.json").read_text())
        provenance = config["provenance"]
        assert provenance["training"]["unet_epochs_done"] == model.epoch
        assert provenance["training"]["augment"] == (model.variant == "aug")
        train = demo.TRAIN_SUBJECTS if model.dims == 2 else demo.TRAIN_SUBJECTS_3D
        assert provenance["split"]["role"] == "train" and provenance["data"]["n_patients"] == len(train)
        assert provenance["versions"]["torch"]
        summary = read_summary(paths.studies / model.study)
        assert (paths.studies / model.study / DEMO_MARKER).is_file(), "the app would write into the committed demo"
        assert summary.checkpoint_hash == checkpoint_hash(folder)
        assert summary.inputs["synthetic"].n == (profile.n_samples_2d if model.dims == 2 else profile.n_samples_3d)
    assert "expected to memorize" in " ".join(
        json.loads((paths.checkpoints / "demo-3d-e0002" / "ldm.json").read_text())["provenance"]["notes"]
    )
    # the two early snapshots differ only by augmentation: their weights must differ
    assert checkpoint_hash(paths.checkpoints / "demo-2d-noaug-e0001") != checkpoint_hash(
        paths.checkpoints / "demo-2d-aug-e0001"
    )
    assert paths.findings.read_text() == findings.findings_markdown(tmp_path, profile)
    assert (paths.studies / "demo-2d" / "synthetic" / "generation.json").is_file()

    # a 3D-only rebuild leaves every 2D file as it was and is listed in the record beside the full build
    before_2d = {p: h for p, h in _tree_hashes(tmp_path).items() if "2d" in p and not p.startswith("docs")}
    own = paths.studies / "demo-3d-mine"  # a user's study named like the demo is not the demo's to remove
    own.mkdir()
    (own / "notes.txt").write_text("mine")
    demo.build_all(tmp_path, profile, dims=(3,))
    assert (own / "notes.txt").read_text() == "mine"
    after = _tree_hashes(tmp_path)
    assert {p: after.get(p) for p in before_2d} == before_2d
    rebuilt = json.loads(paths.record.read_text())
    assert rebuilt["command"] == record["command"] and [r["dims"] for r in rebuilt["rebuilds"]] == [[3]]
    assert "--dims 3" in paths.findings.read_text()
    # a rescan keeps the checkpoints and detectors, and samples and scans again
    weights = {p: h for p, h in _tree_hashes(paths.checkpoints).items() if "3d" in p}
    demo.build_all(tmp_path, profile, dims=(3,), retrain=False)
    assert {p: h for p, h in _tree_hashes(paths.checkpoints).items() if "3d" in p} == weights
    again = json.loads(paths.record.read_text())["rebuilds"]
    assert [(r["dims"], r.get("retrained", True)) for r in again] == [([3], True), ([3], False)]
    assert "sampled and scanned again" in paths.findings.read_text()
    # a rescore keeps the samples too (byte for byte) and scans them into a fresh study
    samples = {p: h for p, h in _tree_hashes(paths.studies).items() if "3d" in p and "/synthetic/" in p}
    old_scan = read_summary(paths.studies / "demo-3d").scan_id
    demo.build_all(tmp_path, profile, dims=(3,), retrain=False, regenerate=False)
    assert {p: h for p, h in _tree_hashes(paths.studies).items() if "3d" in p and "/synthetic/" in p} == samples
    assert read_summary(paths.studies / "demo-3d").scan_id != old_scan
    assert (paths.studies / "demo-3d" / DEMO_MARKER).is_file()
    assert "scanned again (same samples)" in paths.findings.read_text()


def test_partial_rebuild_needs_a_full_build_first(tmp_path: Path) -> None:
    with pytest.raises(MemoScopeError, match="no full build"):
        demo.build_all(tmp_path, demo.PROFILES["quick"], dims=(3,))


@pytest.mark.skipif(not COMMITTED, reason="the committed demo is not built yet (make demo)")
class TestCommittedDemo:
    """The committed demo must be what the recipe and the studies say it is."""

    profile = demo.PROFILES["full"]
    paths = demo.DemoPaths(REPO)

    def test_findings_match_the_committed_studies(self) -> None:
        assert self.paths.findings.read_text() == findings.findings_markdown(REPO, self.profile), (
            "docs/FINDINGS.md is stale: run `python -m tools.demo findings`"
        )

    @pytest.mark.slow
    def test_data_rebuilds_within_the_stated_tolerance(self, tmp_path: Path) -> None:
        """The recipe rebuilds the committed data on any CPU: rebuilt here with torch's kernels pinned to plain
        (unvectorised) code, as on a CPU unlike the build machine, it matches within :mod:`tools.rebuild_check`'s
        tolerances; manifests and SOURCES.md are byte-identical."""
        env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "PYTHONPATH": str(REPO)}
        root = tmp_path / "root"
        subprocess.run(
            [sys.executable, "-m", "tools.demo", "build-data", "--root", str(root)], env=env, check=True, cwd=REPO
        )
        assert rebuild_check.differences(root / "data" / "demo", self.paths.data) == []
        record = json.loads(self.paths.record.read_text())
        assert record["data_manifests"]["2d"] == sha256_file(self.paths.manifest(2))

    def test_checkpoints_are_small_load_and_match_their_studies(self) -> None:
        folders = [self.paths.checkpoints / m.checkpoint for m in demo.demo_models(self.profile)]
        folders += [self.paths.checkpoints / f"demo-{d}d-detector" for d in (2, 3)]
        size = sum(p.stat().st_size for f in folders for p in f.rglob("*") if p.is_file())
        assert size < demo.DEMO_BUDGET_MIB * 2**20, f"demo checkpoints take {size / 2**20:.1f} MiB"
        for model in demo.demo_models(self.profile):
            folder = self.paths.checkpoints / model.checkpoint
            load_ldm(folder)
            summary = read_summary(self.paths.studies / model.study)
            assert summary.checkpoint_hash == checkpoint_hash(folder)
            assert not Path(summary.source("train")).is_absolute(), "committed studies must not hold machine paths"

    def test_the_3d_demo_shows_real_memorization(self) -> None:
        """Issue 14: the over-trained 3D stage's copy calls are copies a pixel check confirms, not noise blobs."""
        over = findings.read_result(self.paths, demo.demo_models(self.profile, (3,))[-1])
        assert over.model.stage == "over-trained" and over.quality is not None and over.quality >= ANATOMY_FLOOR
        assert over.summary.copies.count > 0 and over.copy_pixel_corr is not None and over.copy_pixel_corr >= 0.95

    def test_every_demo_study_shows_the_scans_default_call(self) -> None:
        """The demo shows what a user's scan does: the verified call and its default rule, recountable from the
        study (validation patients numbered in neighbors.npz)."""
        default = ScanConfig(train="t", val="v", synthetic="s", out="o", spec=PreprocessSpec((8, 8)))
        for model in demo.demo_models(self.profile):
            study = self.paths.studies / model.study
            summary = read_summary(study)
            assert (summary.method, summary.threshold.rule) == (default.method, default.rule), model.study
            cal = ScanResults.open(study).calibration()
            assert cal.threshold(summary.threshold.rule, summary.threshold.percentile).value == pytest.approx(
                summary.tau
            )
