"""Report and release on a small scanned study whose training scans are DICOM files with planted PHI."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pypdf import PdfReader

from core.common.errors import MemoScopeError
from core.io.preprocessing import PreprocessSpec
from core.study import verdicts
from core.study.pseudonyms import PSEUDONYMS
from core.study.release import read_release_record, release
from core.study.report import CHROMIUM, write_report
from core.study.results import ScanResults, read_summary
from core.study.review import HISTOGRAM_COLOURS
from core.study.scan import ScanConfig, run_scan
from tests.conftest import smooth_image
from tests.dicom_files import write_dicom as dicom_file

PHI = {
    "PatientName": "DOE^JANE",
    "PatientID": "MRN-55555",  # in the headers only (the folders carry other planted identifiers)
    "PatientBirthDate": "19700101",
    "InstitutionName": "SECRET GENERAL HOSPITAL",
    "ReferringPhysicianName": "WHO^DOCTOR",
    "AccessionNumber": "ACC987654",
    "StudyDate": "20240229",
}
# the planted values as they could leak: header values, and the folder/file names built from them
FORBIDDEN = [
    "MRN-55555",
    "DOE^JANE",
    "DOE_JANE",
    "PHI-12345",
    "PHI-67890",
    "19700101",
    "SECRET GENERAL HOSPITAL",
    "WHO^DOCTOR",
    "ACC987654",
    "20240229",
    "1.2.826.0.1.3680043.8.498.4242",
]


def _write_dicom(path: Path, pixels: np.ndarray) -> None:
    dicom_file(path, pixels.astype(np.uint16), **PHI, StudyInstanceUID="1.2.826.0.1.3680043.8.498.4242")


def _u16(image: np.ndarray) -> np.ndarray:
    return ((image - image.min()) / (image.max() - image.min()) * 60000).astype(np.uint16)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phi")
    rng = np.random.default_rng(0)
    train = [_u16(smooth_image(rng, (32, 32))) for _ in range(12)]
    for i, pixels in enumerate(train):
        folder = root / "train" / ("PHI-12345" if i < 6 else "PHI-67890")
        folder.mkdir(parents=True, exist_ok=True)
        _write_dicom(folder / f"DOE_JANE_{i:02d}.dcm", pixels)
        pydicom.dcmread(folder / f"DOE_JANE_{i:02d}.dcm")  # valid DICOM
    for i in range(8):
        (root / "val" / f"v{i // 4}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_u16(smooth_image(rng, (32, 32)))).save(root / "val" / f"v{i // 4}" / f"{i}.png")
    (root / "synthetic").mkdir()
    for i in range(6):  # three exact copies of training scans, three new images
        image = train[i] if i < 3 else _u16(smooth_image(rng, (32, 32)))
        Image.fromarray(image).save(root / "synthetic" / f"sample_{i:06d}.png")
    config = ScanConfig(
        train=str(root / "train"),
        val=str(root / "val"),
        synthetic=str(root / "synthetic"),
        out=str(root / "study"),
        spec=PreprocessSpec((32, 32)),
        threshold_rule="paper",
        percentile=50.0,
        k=3,
        detector_overrides={"epochs": 2, "arch": "convres", "batch_size": 8},
        device="cpu",  # the assertions below name the device and the index: the same on a machine with a GPU
        cache_dir=str(root / "cache"),
    )
    run_scan(config)
    scan = ScanResults.open(root / "study")
    verdicts.record(
        root / "study",
        "rater one",
        scan.pair_ref("sample_000003.png", _nearest(root / "study", "sample_000003.png")),
        "copy",
    )
    return root / "study"


def _nearest(study: Path, synthetic_id: str) -> str:
    import csv

    with open(study / "pairs.csv", newline="") as handle:
        return next(
            r["train_id"] for r in csv.DictReader(handle) if r["synthetic_id"] == synthetic_id and r["rank"] == "1"
        )


def _assert_no_phi(text: str, where: str) -> None:
    found = [s for s in FORBIDDEN if s in text]
    assert not found, f"{where} contains PHI: {found}"


def test_html_report_numbers_and_no_phi(study: Path, tmp_path: Path) -> None:
    out = write_report(study, tmp_path / "report.html", "html")
    text = out.read_text()
    summary = read_summary(study)
    assert f"tau = <b>{summary.tau:.3f}</b>" in text
    assert "best score to the validation scans (Dar et al.))" in text  # what the rule means, in words
    copies = summary.copies
    assert f"{copies.value:.1%} ({copies.count}/{copies.total}" in text
    assert "data:image/png;base64," in text and "<svg" in text  # images and plot embedded
    assert "train-00001" in text and "patient-0001" in text
    _assert_no_phi(text, "HTML report")
    body, _, appendix = text.partition("<h2>Appendix: settings</h2>")
    assert (
        "<h2>Glossary</h2>" in body and "ct_window" not in body and '"intensity": "minmax"' in html.unescape(appendix)
    )
    assert "every image resized to 32 x 32 pixels" in body
    agreement = body.partition("<h2>Reviewer agreement</h2>")[2]
    assert ": not a copy</th>" in agreement and "[[" not in agreement, agreement[:800]  # a labelled 2 x 2 table
    assert all(c.lower() in body.lower() for c in HISTOGRAM_COLOURS)  # the histogram's series have their own colours
    assert summary.device == "cpu" and summary.search is not None  # where and how the scan searched, recorded
    assert summary.search.index == "exact (faiss flat)" and summary.search.recall_at_1 == 1.0
    resemblance = summary.patient_resemblance
    assert resemblance is not None and resemblance.null_size == 8
    assert "Resemble a training patient (a separate finding, not counted as copies): " in text
    rows = ScanResults.open(study).patient_rows()
    assert sorted(rows) == [f"sample_{i:06d}.png" for i in range(6)]
    assert sum(r.resembles for r in rows.values()) == resemblance.fraction.count
    key = (study / PSEUDONYMS).read_text()
    assert "PHI-12345" in key  # the re-identification key stays in the study folder only


def test_dicom_patients_are_grouped_from_headers_and_kept_only_as_keyed_hashes(study: Path) -> None:
    """The training DICOM files carry PatientID in their headers: ``--patients auto`` groups them by it and every
    patient column the scan writes holds a keyed hash, never the ID (the report and release are checked above)."""
    import csv

    grouping = read_summary(study).inputs["train"].patients
    assert grouping is not None and grouping.rule == "dicom" and grouping.patients == 1  # one PatientID in all
    for name, column in (
        ("pairs.csv", "patient_id"),
        ("train_nn.csv", "patient_id"),
        ("patients.csv", "nearest_patient"),
    ):
        with open(study / name, newline="") as handle:
            values = {row[column] for row in csv.DictReader(handle)}
        assert values and all(v.startswith("pt-") for v in values), (name, values)
        _assert_no_phi(" ".join(values), name)
    header_only = [v for v in FORBIDDEN if "^" in v or v.isdigit() or " " in v or v[:3] in ("ACC", "MRN") or "." in v]
    assert "MRN-55555" in header_only
    for path in (p for p in study.rglob("*") if p.is_file()):  # file names are the user's; header values never
        data = path.read_bytes()
        assert not [v for v in header_only if v.encode() in data], path


@pytest.mark.skipif(not CHROMIUM.exists(), reason="PDF needs Chromium (make test installs it)")
def test_pdf_report_text_matches_summary_and_has_no_phi(study: Path, tmp_path: Path) -> None:
    out = write_report(study, tmp_path / "report.pdf", "pdf")
    text = "\n".join(page.extract_text() for page in PdfReader(out).pages)
    summary = read_summary(study)
    assert f"{summary.tau:.3f}" in text
    mem = summary.memorized
    assert f"{mem.count}/{mem.total}" in text
    _assert_no_phi(text, "PDF report")
    # the rendered report, not its source printed as text: a few pages, the conclusion, no markup or script
    assert len(PdfReader(out).pages) <= 8
    assert "Memorization check" in text and "Recommendation." in text
    assert "<html" not in text and "function(" not in text and "plotly" not in text.lower()


def test_building_one_format_never_deletes_the_other(study: Path, tmp_path: Path) -> None:
    html = write_report(study, tmp_path / "report.html", "html")
    write_report(study, tmp_path / "report.pdf", "pdf")
    assert html.is_file() and (tmp_path / "report.pdf").is_file()


def test_release_removes_copies_and_confirmed_pairs(study: Path, tmp_path: Path) -> None:
    summary = read_summary(study)
    plain = release(study, tmp_path / "plain")
    assert plain.kept + plain.removed_by_threshold == summary.inputs["synthetic"].n
    assert plain.removed_by_threshold == summary.copies.count
    strict = release(study, tmp_path / "strict", exclude_confirmed=True)
    assert strict.kept == plain.kept - strict.removed_as_confirmed
    record = read_release_record(tmp_path / "strict")
    assert "sample_000003.png" in record.removed
    kept_files = sorted(p.name for p in (tmp_path / "strict" / "samples").iterdir())
    assert "sample_000003.png" not in kept_files and len(kept_files) == strict.kept
    for path in (tmp_path / "strict").rglob("*"):
        if path.is_file() and path.suffix in (".csv", ".json", ".html"):
            _assert_no_phi(path.read_text(), str(path))
    with pytest.raises(MemoScopeError, match="not empty"):
        release(study, tmp_path / "strict")
    none = release(study, tmp_path / "none", threshold=1.0)
    assert none.kept == summary.inputs["synthetic"].n
    assert "released at threshold 1.000 (given for the release)" in (tmp_path / "none" / "report.html").read_text()


def test_release_refuses_a_file_changed_after_the_scan(study: Path, tmp_path: Path) -> None:
    """A training image copied over a scanned sample after the scan is never shipped."""
    sample = Path(read_summary(study).source("synthetic")) / "sample_000005.png"
    original = sample.read_bytes()
    try:
        shutil.copy(next((study.parent / "val").rglob("*.png")), sample)  # another real image under its name
        with pytest.raises(MemoScopeError, match="differ from what the scan checked"):
            release(study, tmp_path / "out", threshold=1.0)
        assert not (tmp_path / "out").exists()
    finally:
        sample.write_bytes(original)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 5.0, -3.0])
def test_release_refuses_a_threshold_outside_minus_one_to_one(study: Path, tmp_path: Path, value: float) -> None:
    with pytest.raises(MemoScopeError, match=r"give a similarity in \[-1, 1\]"):
        release(study, tmp_path / "out", threshold=value)
    assert not (tmp_path / "out").exists()


def test_a_looser_release_threshold_is_warned_and_recorded(study: Path, tmp_path: Path) -> None:
    result = release(study, tmp_path / "out", threshold=1.0)
    record = read_release_record(tmp_path / "out")
    assert result.warnings and "looser than the scan's" in record.warnings[0]
    assert record.scan_id == read_summary(study).scan_id


def test_the_report_and_release_use_the_saved_study_threshold(study: Path, tmp_path: Path) -> None:
    from core.detect.metrics import Threshold, ThresholdRule

    work = tmp_path / "work"
    shutil.copytree(study.parent, work, ignore=shutil.ignore_patterns("pseudonyms.csv", "report.*"))
    copied = work / "study"
    scan = ScanResults.open(copied)
    verdicts.save_threshold(copied, "rater one", scan, Threshold(ThresholdRule.FIXED, None, 1.0, 0), "release all")
    text = write_report(copied, tmp_path / "r.html").read_text()
    assert "tau = <b>1.000</b>, saved by rater one" in text and "None of the 6 synthetic samples" in text
    result = release(copied, tmp_path / "rel")
    record = read_release_record(tmp_path / "rel")
    assert result.removed_by_threshold == 0 and record.threshold_source == "saved by rater one"
    assert result.warnings  # looser than the scan's calibration: said and recorded


def test_the_conclusion_calls_flags_copies_only_when_nothing_contradicts_them() -> None:
    """Issue 14: noise samples were reported as 'likely copies of patient data'."""
    from core.detect.metrics import Fraction, MemorizationMetrics, Threshold, ThresholdRule
    from core.study.report import conclusion

    flagged = Fraction(15, 16, 15 / 16, 0.8, 1.0, "test")
    metrics = MemorizationMetrics(
        Threshold(ThresholdRule.PAPER, 50.0, 0.467, 3), Fraction(3, 3, 1.0, 0.4, 1.0, "test"), flagged, 0.667, 0.5
    )
    plain, _ = conclusion(metrics, 0)
    assert "likely copies of patient data" in plain
    noise, advice = conclusion(metrics, 0, frozenset({"not_anatomy", "pixel_disagrees"}))
    assert "do not look like scans" in noise and "likely copies" not in noise
    assert "do not draw a conclusion" in advice.lower()
    unconfirmed, _ = conclusion(metrics, 0, frozenset({"pixel_disagrees"}))
    assert "unconfirmed flags" in unconfirmed and "likely copies" not in unconfirmed
    confirmed, _ = conclusion(metrics, 2, frozenset({"pixel_disagrees"}))  # reviewers confirmed copies
    assert "likely copies of patient data" in confirmed


DEMO_3D = Path(__file__).resolve().parents[1] / "studies" / "demo-3d"


@pytest.mark.skipif(not DEMO_3D.is_dir(), reason="demo not built")
def test_the_report_says_when_the_transfer_to_unseen_patients_could_not_be_measured(tmp_path: Path) -> None:
    # the 3D demo: three validation volumes, one per patient; holding one out leaves two, too few for the bound
    import shutil

    study = tmp_path / "demo-3d"
    shutil.copytree(DEMO_3D, study)  # the report keeps its pseudonyms in the study
    assert read_summary(study).fpr_unseen is None
    text = write_report(study, tmp_path / "report.html", "html").read_text()
    assert "could not be measured: the heldout-patient rule needs validation scans of at least 3 patients" in text


def test_the_agreement_table_reads_detector_rows_and_reviewer_columns(tmp_path: Path) -> None:
    """Two "not a copy" verdicts on pairs the detector called copies once read "detector: not a copy / reviewer 1:
    copy = 2" in the report: the opposite of what happened."""
    import re

    from core.study.results import ScanResults, copies

    study = tmp_path / "demo"
    shutil.copytree(Path(__file__).resolve().parents[1] / "studies" / "demo-2d", study)
    scan = ScanResults.open(study)
    flagged = copies(scan.pairs(), scan.summary.tau)[:2]
    for pair in flagged:
        verdicts.record(study, "ana", scan.pair_ref(pair.synthetic_id, pair.train_id), "not_copy")
    html = write_report(study, tmp_path / "r.html").read_text()
    table = re.search(r"<table><tr><th></th><th>reviewer 1: not a copy</th>.*?</table>", html, re.S)
    assert table is not None, "the detector's rows and the reviewer's columns"
    rows = re.findall(r"<tr><th>(detector: [^<]+)</th><td>(\d+)</td><td>(\d+)</td></tr>", table.group(0))
    assert rows == [("detector: not a copy", "0", "0"), ("detector: copy", "2", "0")], rows


def test_the_report_says_what_was_done_in_words_a_board_can_check(tmp_path: Path) -> None:
    """The header once named the paper's embedding correlation for a verified scan, the conclusion gave the
    memorized fraction without the interval that rests on a few patients, the recommendation said "if the copy
    fraction is high" at 99 %, the synthetic set had "patients", and kappa and the rules were not explained."""
    import re

    study = tmp_path / "demo"
    shutil.copytree(Path(__file__).resolve().parents[1] / "studies" / "demo-2d", study)
    html = write_report(study, tmp_path / "r.html").read_text()
    header = re.search(r"Method: (.*?)</p>", html, re.S)
    assert header and "aligned" in header.group(1) and "Pearson correlation of embeddings" not in header.group(1)
    conclusion = re.search(r'<p class="key">(.*?)</p>', html, re.S)
    assert conclusion and re.search(r"training scans \([\d.]+%, 95 % CI [\d.]+% to [\d.]+%", conclusion.group(1))
    assert "if the copy fraction is high" not in html and "the generator reproduces its training data" in html
    assert re.search(r"<tr><td>synthetic</td><td>\d+</td><td>-</td>", html)
    for term in ("Cohen&#x27;s kappa", "Wilson interval", "Precision, recall, F1, AUROC", "heldout-patient rule"):
        assert term in html or term.replace("&#x27;", "'") in html, term


def test_the_report_is_small_and_lists_only_the_settings_in_force(study: Path, tmp_path: Path) -> None:
    """The HTML report embedded plotly.js (5 MB) for one static histogram, and an MR study's appendix listed the
    CT window it never applied. The histogram is an inline SVG now, its series and threshold drawn."""
    text = write_report(study, tmp_path / "r.html").read_text()
    size = len(text.encode())
    assert size < 1_000_000, f"the report is {size / 1e6:.1f} MB"
    assert "plotly" not in text.lower()
    figure = re.search(r"<h2>Correlation distributions</h2>(<svg.*?</svg>)", text, re.S)
    assert figure, "no inline histogram"
    assert all(name in figure.group(1) for name in ("training -&gt; validation", "synthetic -&gt; training", "tau"))
    appendix = text.split("Appendix: settings", 1)[1]
    assert "minmax" in appendix and "ct_window" not in appendix and "percentiles" not in appendix
    spec = PreprocessSpec((32, 32), intensity="ct", ct_window=(-160.0, 240.0))
    assert tuple(spec.settings()["ct_window"]) == (-160.0, 240.0) and "percentiles" not in spec.settings()
