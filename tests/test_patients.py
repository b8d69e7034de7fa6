"""Patient identity from real layouts: DICOM series (flat and nested), flat PNG exports with IDs in file names, a
BIDS-like NIfTI tree and manifests; the rule in force is recorded, and a flat folder is never silently taken as
one patient per file."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from core.common.errors import MemoScopeError
from core.io.discover import discover, discover_patients
from core.io.load import load_set
from core.io.patients import PatientRule, PatientSource, pseudonymous_id
from core.io.preprocessing import PreprocessSpec
from tests.conftest import smooth_image
from tests.dicom_files import write_dicom as dicom_file

PATIENT_IDS = ("MRN-0042", "MRN-0077", "MRN-0103")  # what a hospital export carries; never to be written anywhere


def write_dicom(path: Path, pixels: np.ndarray, patient_id: str, series_uid: str, instance: int = 1) -> None:
    """One MR slice of a series as a DICOM file, with the patient's ID in its header."""
    dicom_file(
        path,
        pixels.astype(np.uint16),
        PatientID=patient_id,
        PatientName=f"DOE^{patient_id}",
        SeriesInstanceUID=series_uid,
        InstanceNumber=instance,
        ImagePositionPatient=[0, 0, instance],
        ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
        PixelSpacing=[1, 1],
        SliceThickness=1,
    )


def _u16(image: np.ndarray) -> np.ndarray:
    return ((image - image.min()) / (image.max() - image.min()) * 60000).astype(np.uint16)


def dicom_series_export(root: Path, nested: bool, slices: int = 3) -> dict[str, str]:
    """Each patient one 3D series in its own folder, named by the scanner, not by the patient (``S0001/``, or
    ``EXPORT/<study>/<series>/`` when nested). Returns each series folder's sample ID -> patient ID."""
    rng = np.random.default_rng(1)
    truth = {}
    for p, patient in enumerate(PATIENT_IDS):
        for s in range(2):  # two series per patient: a patient is not a series
            rel = f"EXPORT/ST{p:03d}/SE{s:03d}" if nested else f"S{2 * p + s:04d}"
            uid = generate_uid()
            for k in range(slices):
                write_dicom(root / rel / f"IM{k:04d}.dcm", _u16(smooth_image(rng, (16, 16))), patient, uid, k + 1)
            truth[rel] = patient
    return truth


def flat_png_export(root: Path, per_patient: int = 3) -> dict[str, str]:
    """A flat 2D export whose file names alone say the patient: ``sub-01_slice003.png``."""
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for p in range(1, 4):
        for k in range(per_patient):
            name = f"sub-{p:02d}_slice{k:03d}.png"
            Image.fromarray(_u16(smooth_image(rng, (16, 16)))).save(root / name)
            truth[name] = f"sub-{p:02d}"
    return truth


def bids_tree(root: Path) -> dict[str, str]:
    """``sub-01/anat/sub-01_T1w.nii.gz`` and a second session's scan, as BIDS lays them out."""
    rng = np.random.default_rng(3)
    truth = {}
    for p in range(1, 4):
        for session in ("ses-1", "ses-2"):
            rel = f"sub-{p:02d}/{session}/anat/sub-{p:02d}_{session}_T1w.nii.gz"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(smooth_image(rng, (12, 12, 12)), np.eye(4)), str(root / rel))
            truth[rel] = f"sub-{p:02d}"
    return truth


def _groups(records: list, truth: dict[str, str]) -> set[frozenset[str]]:
    """The partition of files into patients, independent of how the patients are named."""
    by_patient: dict[str, set[str]] = {}
    for record in records:
        by_patient.setdefault(record.patient_id, set()).add(record.sample_id)
    assert {r.sample_id for r in records} == set(truth)
    return {frozenset(ids) for ids in by_patient.values()}


def _truth_groups(truth: dict[str, str]) -> set[frozenset[str]]:
    return {frozenset(i for i, p in truth.items() if p == patient) for patient in set(truth.values())}


@pytest.mark.parametrize("text", ["auto", "folder", "dicom", "manifest", r"pattern:(?P<patient>sub-\d+)_"])
def test_a_rule_round_trips_through_its_text(text: str) -> None:
    assert str(PatientRule.parse(text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("subfolder", "must be one of auto, folder, dicom, manifest or pattern:REGEX"),
        ("pattern", "must be one of"),
        ("pattern:sub-(", "not a regular expression"),
        (r"pattern:sub-\d+", "needs a group that captures the patient"),
    ],
)
def test_a_bad_rule_is_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(MemoScopeError, match=message):
        PatientRule.parse(text)


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_dicom_series_are_grouped_by_patient_id_from_their_headers(tmp_path: Path, nested: bool) -> None:
    truth = dicom_series_export(tmp_path / "export", nested)
    records, grouping = discover_patients(tmp_path / "export")
    assert grouping.rule == PatientSource.DICOM and (grouping.files, grouping.patients) == (6, 3)
    assert _groups(records, truth) == _truth_groups(truth)
    assert not grouping.doubtful and grouping.scans_per_patient == 2
    for record in records:  # a keyed hash, never the ID; the same ID gives the same pseudonym
        assert record.patient_id.startswith("pt-") and record.patient_id == pseudonymous_id(truth[record.sample_id])
        assert not any(patient in record.patient_id for patient in PATIENT_IDS)
    assert load_set(tmp_path / "export", PreprocessSpec((8, 8, 8)), patients="auto").grouping == grouping


def test_the_dicom_pseudonym_is_keyed_per_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the key nobody can hash candidate IDs to find a patient; case and Unicode form do not matter."""
    mine = pseudonymous_id("MRN-0042")
    assert pseudonymous_id("mrn-0042 ") == mine and pseudonymous_id("ＭＲＮ-0042") == mine  # full-width: NFKC
    assert (tmp_path / "home" / "identity.key").stat().st_mode & 0o077 == 0
    monkeypatch.setenv("MEMOSCOPE_HOME", str(tmp_path / "another-user"))
    assert pseudonymous_id("MRN-0042") != mine


def test_a_dicom_without_patient_or_study_id_names_the_file(tmp_path: Path) -> None:
    write_dicom(tmp_path / "set" / "a.dcm", np.zeros((8, 8), np.uint16) + 5, "", generate_uid())
    ds = pydicom.dcmread(tmp_path / "set" / "a.dcm")
    del ds.StudyInstanceUID
    ds.save_as(tmp_path / "set" / "a.dcm")
    with pytest.raises(MemoScopeError, match=r"a\.dcm: no PatientID or StudyInstanceUID"):
        discover_patients(tmp_path / "set", patients="dicom")


def test_a_flat_png_export_is_grouped_by_a_one_line_pattern(tmp_path: Path) -> None:
    truth = flat_png_export(tmp_path / "flat")
    records, grouping = discover_patients(tmp_path / "flat", patients=r"pattern:(?P<patient>sub-\d+)_")
    assert [r.patient_id for r in records] == [truth[r.sample_id] for r in records]
    assert (grouping.files, grouping.patients, grouping.doubtful) == (9, 3, False)
    # without it, every file is its own patient, and the grouping says that it only guessed
    _, guessed = discover_patients(tmp_path / "flat")
    assert guessed.rule == "folder" and guessed.doubtful and guessed.patients == 9
    assert "each file its own patient: no patient subfolders" in guessed.describe()


def test_a_pattern_that_misses_a_file_names_it(tmp_path: Path) -> None:
    flat_png_export(tmp_path / "flat")
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(tmp_path / "flat" / "scout.png")
    with pytest.raises(MemoScopeError, match=r"does not match 'scout\.png'"):
        discover_patients(tmp_path / "flat", patients=r"pattern:(?P<patient>sub-\d+)_")


def test_a_bids_tree_is_grouped_by_auto(tmp_path: Path) -> None:
    truth = bids_tree(tmp_path / "bids")
    records, grouping = discover_patients(tmp_path / "bids")
    assert grouping.rule == "folder" and not grouping.doubtful
    assert [r.patient_id for r in records] == [truth[r.sample_id] for r in records]
    # the same scans exported flat are grouped by the BIDS entity in their names
    flat = tmp_path / "flat"
    flat.mkdir()
    for rel in truth:
        (flat / Path(rel).name).write_bytes((tmp_path / "bids" / rel).read_bytes())
    records, grouping = discover_patients(flat, patients=r"pattern:^(?P<patient>sub-\d+)_")
    assert (grouping.patients, grouping.scans_per_patient) == (3, 2)


def test_a_manifest_is_its_own_rule_and_a_folder_cannot_claim_one(tmp_path: Path) -> None:
    truth = flat_png_export(tmp_path / "flat")
    with open(tmp_path / "flat" / "m.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "patient_id"), *truth.items()])
    records, grouping = discover_patients(tmp_path / "flat" / "m.csv")
    assert grouping.rule == "manifest" and [r.patient_id for r in records] == list(truth.values())
    with pytest.raises(MemoScopeError, match="--patients manifest needs a CSV manifest"):
        discover_patients(tmp_path / "flat", patients="manifest")
    # listing a set without a rule reads no header and keeps the layout's own patients
    assert [r.patient_id for r in discover(tmp_path / "flat" / "m.csv")] == list(truth.values())


# --- one planted-copy study laid out four ways: the calls must not depend on the layout once patients are known ---

REPO = Path(__file__).resolve().parents[1]
DETECTOR = REPO / "checkpoints" / "demo-2d-detector"  # the committed demo detector: no training in this test
PATTERN = r"pattern:^(?P<patient>[^_]+)_"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real brain MR slices (3 training, 3 validation subjects; copies planted among unseen slices) written as a
    manifest, as flat PNG folders with the subject in each file name, and as flat DICOM folders whose headers
    carry the subject as PatientID."""
    from core.detect.planted import plant_copies
    from core.generative.sample import to_uint16
    from core.io.sample_data import REAL_VOLUMES, axial_slices

    root = tmp_path_factory.mktemp("layouts")
    volumes = {v.subject: v for v in REAL_VOLUMES}
    train = {s: axial_slices(volumes[s], 64, step=4) for s in ("mni152", "nibabel-example4d", "dipy-s0-10slices")}
    held = {s: axial_slices(volumes[s], 64, step=2) for s in ("nibabel-anatomical", "dipy-aniso-vox", "dipy-piesno")}
    val = {s: images[0::2] for s, images in held.items()}
    unseen = np.concatenate([images[1::2] for images in held.values()])
    rows = []
    for role, subjects in (("train", train), ("val", val)):
        for subject, images in subjects.items():
            for i, image in enumerate(images):
                pixels = to_uint16(image[0])
                name = f"{subject}_s{i:03d}"
                Image.fromarray(pixels).save(_mkdir(root / "png" / role) / f"{name}.png")
                write_dicom(root / "dicom" / role / f"IM{len(rows):05d}.dcm", pixels, f"ID {subject}", generate_uid())
                rows.append((f"{role}/{name}.png", subject, role))
    with open(root / "png" / "manifest.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "patient_id", "split"), *rows])
    every = np.concatenate(list(train.values()))
    planted = plant_copies(every, unseen, per_kind=2, seed=0, kinds=["exact", "noise", "shift", "rotate"])
    for j, image in enumerate(planted.images):
        Image.fromarray(to_uint16(image[0])).save(_mkdir(root / "synthetic") / f"sample_{j:03d}.png")
    copies = np.flatnonzero(planted.source_index >= 0)
    (root / "copies.txt").write_text("\n".join(f"sample_{j:03d}.png" for j in copies))
    return root


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _scan(root: Path, out: str, train: str, val: str, patients: str) -> Path:
    from core.io.preprocessing import PreprocessSpec
    from core.study.scan import ScanConfig, run_scan

    config = ScanConfig(
        train=str(root / train),
        val=str(root / val),
        synthetic=str(root / "synthetic"),
        out=str(root / out),
        spec=PreprocessSpec((64, 64)),
        detector=str(DETECTOR),
        cache_dir=str(root / "cache"),
        device="cpu",
        k=3,
        patients=patients,
    )
    run_scan(config)
    return root / out


def _calls(study: Path) -> tuple[float, list[str]]:
    from core.study.results import read_summary

    with open(study / "pairs.csv", newline="") as handle:
        flagged = sorted(r["synthetic_id"] for r in csv.DictReader(handle) if r["rank"] == "1" and r["is_copy"] == "1")
    return read_summary(study).tau, flagged


@pytest.mark.slow
def test_a_planted_copy_scan_calls_the_same_copies_whatever_the_layout(layouts: Path) -> None:
    from core.study.results import read_summary

    root = layouts
    manifest = _scan(root, "by-manifest", "png/manifest.csv", "png/manifest.csv", "auto")
    pattern = _scan(root, "by-pattern", "png/train", "png/val", PATTERN)
    dicom = _scan(root, "by-dicom", "dicom/train", "dicom/val", "auto")
    tau, flagged = _calls(manifest)
    assert flagged == sorted((root / "copies.txt").read_text().split()), "the manifest scan misses or adds a copy"
    for study, rule in ((pattern, PATTERN.removeprefix("pattern:")), (dicom, "dicom")):
        other_tau, other_flagged = _calls(study)
        assert other_flagged == flagged and other_tau == pytest.approx(tau, abs=1e-9)
        summary = read_summary(study)
        assert [summary.inputs[r].n_patients for r in ("train", "val")] == [3, 3]
        assert summary.inputs["val"].patients is not None and not summary.inputs["val"].patients.doubtful
        assert rule in summary.inputs["train"].patients.rule
        assert summary.fpr_unseen is not None and "patients by " in summary.fpr_unseen.method
    with open(dicom / "pairs.csv", newline="") as handle:  # the header's IDs appear only as keyed hashes
        patients = {r["patient_id"] for r in csv.DictReader(handle)}
    assert patients and all(p.startswith("pt-") for p in patients)
    assert "ID mni152" not in "".join(p.read_text(errors="ignore") for p in dicom.glob("*.*") if p.is_file())


@pytest.mark.slow
def test_a_flat_folder_by_default_warns_before_work_and_the_caveat_reaches_overview_and_report(
    layouts: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.testing.v1 import AppTest

    from core.cli import main
    from core.study.report import write_report
    from core.study.results import read_summary

    root = layouts
    args = ["--synthetic", str(root / "synthetic"), "--detector", str(DETECTOR), "--k", "3", "--device", "cpu"]
    # a pattern that cannot be followed is refused before the study exists
    bad = ["--patients", "pattern:^(?P<patient>sub-\\d+)_", "--out", str(root / "never")]
    assert main(["scan", "--train", str(root / "png/train"), "--val", str(root / "png/val"), *args, *bad]) == 2
    assert "does not match" in capsys.readouterr().err and not (root / "never").exists()
    study = root / "by-default"
    code = main(
        ["scan", "--train", str(root / "png/train"), "--val", str(root / "png/val"), *args, "--out", str(study)]
    )
    captured = capsys.readouterr()
    err = captured.err
    assert code == 0
    # the headline that counts patients says they are files (it once stated the count as if they were people)
    assert "These patients are files" in captured.out
    warning = err.index("warning: train set")
    assert warning < err.index("load"), "the warning must come before any work"
    assert "each file its own patient: no patient subfolders" in err and "--patients pattern:REGEX" in err
    summary = read_summary(study)
    assert summary.inputs["val"].patients is not None and summary.inputs["val"].patients.doubtful
    assert summary.fpr_unseen is not None and "each file its own patient by default" in summary.fpr_unseen.method
    html = write_report(study, root / "report.html", "html").read_text()
    assert "was taken as its own patient" in html and "each file its own (no patient folders)" in html
    assert "These patients are files" in html and "counts files as if they were people" in html
    monkeypatch.chdir(REPO)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.session_state["study"] = str(study)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("was taken as its own patient" in w.value for w in at.warning), [w.value for w in at.warning]


def test_folder_chosen_on_a_flat_folder_is_the_users_word_not_a_guess(tmp_path: Path) -> None:
    flat_png_export(tmp_path / "flat")
    _, chosen = discover_patients(tmp_path / "flat", patients="folder")
    assert chosen.one_per_file and not chosen.doubtful
