"""Where tau sits in the synthetic scores, and the gap rule's second opinion: they speak when the validation patients
cannot speak for new ones, and stay quiet where the threshold is right (the committed demo)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.cli import main
from core.detect.diagnostics import calibration_diagnostics
from core.generative.sample import to_uint16
from core.study.caveats import calibration_caveats

REPO = Path(__file__).resolve().parents[1]


def _scores(rng: np.random.Generator, bulk: tuple[float, float], n_bulk: int, copies: int) -> np.ndarray:
    return np.concatenate([rng.normal(*bulk, n_bulk), rng.uniform(0.95, 0.99, copies)])


def test_a_threshold_in_a_clear_gap_is_quiet() -> None:
    """New anatomy like the validation patients, copies near 1: tau above both, nothing to say."""
    rng = np.random.default_rng(0)
    val = rng.normal(0.4, 0.05, 60)
    d = calibration_diagnostics(_scores(rng, (0.4, 0.05), 80, 20), val, tau=0.52)
    assert d.gap_tau is not None and 0.55 < d.gap_tau < 0.95 and d.above_gap == 20
    assert not calibration_caveats(d)


def test_a_threshold_inside_new_anatomy_is_named_with_its_numbers() -> None:
    """Validation patients unlike the training scans (their bound 0.52) while new patients resemble them (0.65 +-
    0.06): tau sits inside the bulk, the gap rule puts it above the bulk, and the bulk outscores the validation."""
    rng = np.random.default_rng(1)
    val = rng.normal(0.4, 0.05, 60)
    d = calibration_diagnostics(_scores(rng, (0.65, 0.06), 80, 20), val, tau=0.52)
    found = {c.key: c.text for c in calibration_caveats(d)}
    assert {"second_opinion", "val_unlike_synthetic"} <= set(found), found
    assert d.gap_tau is not None and d.gap_tau > 0.8 and d.disagree >= 70
    assert (
        f"{d.gap_tau:.3f}" in found["second_opinion"]
        and "validation patients from the same source" in found["second_opinion"]
    )
    assert "val_unlike_synthetic" in found and f"{d.val_p95:.3f}" in found["val_unlike_synthetic"]
    crowded = calibration_diagnostics(_scores(rng, (0.55, 0.04), 80, 20), val, tau=0.55)
    assert crowded.tau_in_bulk and "within 0.05 of it" in calibration_caveats(crowded)[0].text


def test_too_few_samples_give_numbers_but_no_caveat() -> None:
    rng = np.random.default_rng(2)
    d = calibration_diagnostics(_scores(rng, (0.65, 0.06), 12, 4), rng.normal(0.4, 0.05, 60), tau=0.52)
    assert d.gap_tau is not None and not d.readable and not calibration_caveats(d)


@pytest.mark.parametrize("name", ["demo-2d", "demo-3d"])
def test_the_committed_demo_stays_quiet(name: str) -> None:
    from core.study.results import ScanResults
    from core.study.review import diagnostics_at

    scan = ScanResults.open(REPO / "studies" / name)
    assert calibration_caveats(diagnostics_at(scan, scan.summary.tau)) == []


def _save(folder: Path, images: np.ndarray, patients: list[str] | None = None, prefix: str = "") -> None:
    for i, image in enumerate(images):
        where = folder / patients[i] if patients else folder
        where.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_uint16(image[0])).save(where / f"{prefix}{i:03d}.png")


@pytest.fixture(scope="module")
def transfer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The benchmark's scenario on files: new patients in a training subject's template space among planted copies
    (``synthetic``: sigma 2 px, ``synthetic-3``: 3 px); validation patients from another source, or from the 3 px
    new patients' source (at 2 px such validation slices are refused as near-copies of training: pixel r 0.95)."""
    from benchmarks.calibration_transfer import other_source, template_space, training
    from core.detect.planted import plant_copies

    root = tmp_path_factory.mktemp("transfer")
    train, train_patients = training()
    _save(root / "train", train, train_patients)
    far, far_patients = other_source()
    _save(root / "val-far", far, far_patients)
    near, near_patients = template_space(train, 40, 3.0, seed=3)
    _save(root / "val-near", near, near_patients)
    for sigma, folder in ((2.0, "synthetic"), (3.0, "synthetic-3")):
        new, _ = template_space(train, 40, sigma, seed=1)
        planted = plant_copies(train, new, 2, seed=2, level=2)
        _save(root / folder, planted.images[planted.is_copy], prefix="copy-")
        _save(root / folder, planted.images[~planted.is_copy], prefix="new-")
    return root


def _scan(root: Path, val: str, capsys: pytest.CaptureFixture[str], synthetic: str = "synthetic") -> tuple[Path, str]:
    out = root / f"study-{val}-{synthetic}"
    argv = ["scan", "--train", str(root / "train"), "--val", str(root / val), "--synthetic", str(root / synthetic)]
    argv += ["--out", str(out), "--detector", str(REPO / "checkpoints" / "demo-2d-detector"), "--device", "cpu"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err[-800:]
    return out, err


def _flagged_new(study: Path) -> float:
    from core.study.results import ScanResults

    nearest = [p for p in ScanResults.open(study).pairs() if p.rank == 1 and p.synthetic_id.startswith("new-")]
    tau = json.loads((study / "summary.json").read_text())["threshold"]["value"]
    return sum(p.similarity > tau for p in nearest) / len(nearest)


@pytest.mark.slow
def test_validation_from_another_source_fires_the_caveat_everywhere(
    transfer: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The failure: most new patients' slices are flagged, the leave-one-patient-out check over the validation
    patients cannot show it, and the diagnostics do, in summary.json, the scan's output, the Overview, Calibrate and
    the report."""
    from streamlit.testing.v1 import AppTest

    study, err = _scan(transfer, "val-far", capsys)
    assert _flagged_new(study) > 0.05
    summary = json.loads((study / "summary.json").read_text())
    assert summary["diagnostics"]["near_tau"] > 0.1 * summary["diagnostics"]["n_synthetic"]
    assert "caveat: The threshold" in err and "sits inside the synthetic samples' scores" in err
    assert main(["report", "--study", str(study), "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "sits inside the synthetic samples&#x27; scores" in html and "Second opinion:" in html
    for page in ("views/overview.py", "views/calibrate.py"):
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
        at.session_state["study"] = str(study)
        at.switch_page(page).run()
        assert not at.exception, at.exception
        assert any("sits inside the synthetic samples' scores" in w.value for w in at.warning), page


@pytest.mark.slow
def test_validation_from_the_new_patients_source_flags_none_of_them(
    transfer: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.study.results import ScanResults, read_summary
    from core.study.review import diagnostics_at

    study, err = _scan(transfer, "val-near", capsys, "synthetic-3")
    assert _flagged_new(study) <= 0.05
    scan = ScanResults.open(study)
    assert calibration_caveats(diagnostics_at(scan, read_summary(study).tau)) == []
    assert "sits inside" not in err and "second opinion" not in err.lower()
