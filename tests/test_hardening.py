"""The second hardening probe, one test per way around the copy call or the record (issue 28): what a patient ID, a
file name, an edited summary, a truncated audit or a second scan could once do, and what now happens."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.cli import main
from core.common.tables import csv_text, read_csv, write_csv
from core.io.discover import discover_manifest
from core.io.splits import patient_key
from tests.conftest import smooth_image

FORMULAS = ("=cmd|' /C calc'!A0", '+HYPERLINK("http://x")', "@SUM(1)", "-2+3", "'=already quoted", "\tTAB")


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = smooth_image(np.random.default_rng(seed), (32, 32))
    Image.fromarray(((image - image.min()) / np.ptp(image) * 65535).astype(np.uint16)).save(path)


def test_formula_cells_are_escaped_and_read_back_exactly(tmp_path: Path) -> None:
    rows = [[value, "-0.25", -0.25, 3] for value in FORMULAS]
    write_csv(tmp_path / "t.csv", ["id", "text_number", "number", "n"], rows)
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    # a spreadsheet runs a cell starting with = + - @ tab or CR as a formula: none does, except real numbers
    risky = [c for c in cells if c[:1] in "=+-@\t\r" and c not in ("-0.25",)]
    assert not risky, risky
    assert [r["id"] for r in read_csv(tmp_path / "t.csv")] == list(FORMULAS)
    assert all(r["text_number"] == "-0.25" and r["number"] == "-0.25" for r in read_csv(tmp_path / "t.csv"))
    assert csv_text(["a"], [["plain"], ["'quoted"]]).splitlines()[1:] == ["plain", "''quoted"]


def test_a_manifest_memoscope_wrote_reads_back_its_formula_like_ids(tmp_path: Path) -> None:
    _png(tmp_path / "=a.png", 0)
    write_csv(tmp_path / "m.csv", ["path", "patient_id"], [["=a.png", "=cmd|' /C calc'!A0"]])
    (record,) = discover_manifest(tmp_path / "m.csv")
    assert record.path == tmp_path / "=a.png" and record.patient_id == "=cmd|' /C calc'!A0"


@pytest.mark.parametrize(
    ("a", "b"),
    [("M\u00fcller", "Mu\u0308ller"), ("P0", "P\u200b0"), ("P0", "\ufeffP0"), ("ＰＩＤ-１", "PID-1"), ("p0", " P0 ")],
)
def test_one_patient_in_any_unicode_spelling_is_one_patient(a: str, b: str) -> None:
    assert patient_key(a) == patient_key(b)


def test_every_csv_of_a_scan_and_report_is_safe_to_open_in_a_spreadsheet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Patients named like formulas: pairs.csv, patients.csv, train_nn.csv and pseudonyms.csv escape them, and
    the study reads its own IDs back unchanged."""
    from core.study.results import ScanResults

    evil = ["=cmd|' calc'!A0", "+HYPERLINK(1)"]
    for i in range(8):
        _png(tmp_path / "train" / evil[i % 2] / f"{i}.png", i)
    for i in range(60):
        _png(tmp_path / "val" / f"@V{i % 3}" / f"{i}.png", 100 + i)
    for i in range(4):
        _png(tmp_path / "synthetic" / f"-s{i}.png", 200 + i)
    argv = ["scan", "--train", str(tmp_path / "train"), "--val", str(tmp_path / "val")]
    argv += ["--synthetic", str(tmp_path / "synthetic"), "--out", str(tmp_path / "study")]
    assert main([*argv, "--size", "32", "--detector-epochs", "1", "--device", "cpu"]) == 0, capsys.readouterr()
    assert main(["report", "--study", str(tmp_path / "study"), "--out", str(tmp_path / "r.html")]) == 0
    written = sorted((tmp_path / "study").rglob("*.csv"))
    assert {p.name for p in written} >= {"pairs.csv", "patients.csv", "train_nn.csv", "pseudonyms.csv"}
    for path in written:
        with open(path, newline="", encoding="utf-8") as handle:
            risky = [c for row in csv.reader(handle) for c in row if c[:1] in "=+@\t\r" or c.startswith("-s")]
        assert not risky, (path.name, risky[:3])
    pairs = ScanResults.open(tmp_path / "study").pairs()
    assert {p.patient_id for p in pairs} <= set(evil) and {p.synthetic_id[:2] for p in pairs} == {"-s"}


def test_review_shows_ids_as_code_that_nothing_can_leave() -> None:
    """A backtick in a patient ID once closed Review's code span and showed a live remote image and link."""
    from markdown_it import MarkdownIt

    from views._ui import code

    for value in ("x` ![a](https://evil.example/p.png) [b](https://evil.example)", "``two``", "`", "a\n\n# b"):
        tokens = MarkdownIt("commonmark").parseInline(f"patient {code(value)} end")[0].children or []
        assert [t.type for t in tokens] == ["text", "code_inline", "text"], (value, tokens)
        assert tokens[1].content == " ".join(value.split())


def test_shared_patients_in_two_unicode_forms_are_a_leak(tmp_path: Path) -> None:
    from core.common.errors import MemoScopeError
    from core.io.records import ImageRecord
    from core.io.splits import check_record_leaks

    _png(tmp_path / "a.png", 0)
    _png(tmp_path / "b.png", 1)
    train = [ImageRecord(tmp_path / "a.png", "a.png", "M\u00fcller")]
    val = [ImageRecord(tmp_path / "b.png", "b.png", "Mu\u0308ller\u200b")]
    with pytest.raises(MemoScopeError, match="appear in both training"):
        check_record_leaks(train, val, "train", "val")


def _scan(root: Path, synthetic: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> Path:
    """A small scan (32 px, a one-epoch detector) of distinct smooth images: enough for what a record promises."""
    for i in range(8):
        _png(root / "train" / f"P{i % 2}" / f"{i}.png", i)
    for i in range(60):
        _png(root / "val" / f"V{i % 3}" / f"{i}.png", 100 + i)
    argv = ["scan", "--train", str(root / "train"), "--val", str(root / "val"), "--synthetic", str(synthetic)]
    argv += ["--out", str(root / "study"), "--size", "32", "--detector-epochs", "1", "--device", "cpu", *extra]
    assert main(argv) == 0, capsys.readouterr()
    return root / "study"


@pytest.mark.slow
def test_a_release_writes_only_inside_its_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Manifest paths with ``..`` and absolute paths once sent released samples to ``--out/../../data/...``
    (overwriting what was there) or failed with SameFileError."""
    for i in range(3):
        _png(tmp_path / "elsewhere" / f"s{i}.png", 200 + i)
    _png(tmp_path / "lists" / "own.png", 210)
    rows = [["../elsewhere/s0.png", "g"], ["../elsewhere/../elsewhere/s1.png", "g"]]
    rows += [[str(tmp_path / "elsewhere" / "s2.png"), "g"], ["own.png", "g"]]
    write_csv(tmp_path / "lists" / "synthetic.csv", ["path", "patient_id"], rows)
    study = _scan(tmp_path, tmp_path / "lists" / "synthetic.csv", capsys)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    out = tmp_path / "deep" / "release"
    assert main(["release", "--study", str(study), "--out", str(out), "--threshold", "1.0"]) == 0, capsys.readouterr()
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - set(before) - {study / "pseudonyms.csv"}  # its key
    outside = sorted(str(p) for p in written if not p.is_relative_to(out))
    assert written and not outside, outside
    assert all(before[p] == p.stat().st_mtime_ns for p in before)  # nothing that was there was touched
    shipped = [r["path"] for r in read_csv(out / "manifest.csv")]
    assert len(shipped) == 4 and "samples/own.png" in shipped
    assert all(".." not in p and (out / p).is_file() for p in shipped), shipped


def _synthetic(root: Path) -> Path:
    for i in range(4):
        _png(root / "synthetic" / f"s{i}.png", 200 + i)
    return root / "synthetic"


@pytest.mark.slow
@pytest.mark.parametrize("value", ["0.99", "NaN", "-Infinity"])
def test_an_edited_summary_is_refused_by_every_reader(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """summary.json's threshold set to 0.99 once released every copy without a word; NaN made the report say no
    sample is close. Its hash is recorded in study.sqlite and every reader checks it."""
    import json
    import re

    study = _scan(tmp_path, _synthetic(tmp_path), capsys)
    path = study / "summary.json"
    path.write_text(re.sub(r'("threshold": \{[^}]*"value": )[-0-9.eE]+', rf"\g<1>{value}", path.read_text()))
    assert json.loads(path.read_text())["threshold"]["value"] != pytest.approx(0.0)
    capsys.readouterr()
    for argv in (
        ["release", "--study", str(study), "--out", str(tmp_path / "rel")],
        ["report", "--study", str(study), "--out", str(tmp_path / "r.html")],
        ["upgrade-study", "--study", str(study)],  # never blesses an edit
        ["selftest", "--study", str(study), "--per-kind", "1"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "summary.json" in err and ("edited" in err or "[-1, 1]" in err) and "Traceback" not in err, err
    assert not (tmp_path / "rel").exists() and not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_a_summary_from_elsewhere_is_recorded_only_at_the_users_word(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = _scan(tmp_path, _synthetic(tmp_path), capsys)
    (study / "study.sqlite").unlink()  # a summary copied in without its database, or scanned by an older MemoScope
    assert main(["report", "--study", str(study), "--out", str(tmp_path / "r.html")]) == 2
    assert "upgrade-study" in capsys.readouterr().err
    assert main(["upgrade-study", "--study", str(study)]) == 0
    assert main(["report", "--study", str(study), "--out", str(tmp_path / "r.html")]) == 0


@pytest.mark.slow
def test_report_top_zero_still_says_how_many_pairs_are_copies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``report --top 0`` once said "No pair is above the threshold." beside a count of 2/8 copies."""
    synthetic = _synthetic(tmp_path)
    _scan(tmp_path, synthetic, capsys)  # the training images exist once scanned; copy two into a second set
    for i in (0, 3):
        shutil.copy(tmp_path / "train" / f"P{i % 2}" / f"{i}.png", synthetic / f"copy{i}.png")
    shutil.rmtree(tmp_path / "study")
    study = _scan(tmp_path, synthetic, capsys)
    from core.study.results import read_summary

    assert read_summary(study).copies.count == 2
    assert main(["report", "--study", str(study), "--out", str(tmp_path / "r.html"), "--top", "0"]) == 0
    text = (tmp_path / "r.html").read_text()
    assert "No pair is above the threshold" not in text and "2 pair(s) are above the threshold" in text
    assert main(["report", "--study", str(study), "--out", str(tmp_path / "r2.html"), "--top", "-1"]) == 2
    assert "must be 0 or more" in capsys.readouterr().err and not (tmp_path / "r2.html").exists()


@pytest.mark.slow
def test_a_second_scan_into_a_study_being_scanned_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two scans into one --out once both exited 0 and the first was silently replaced. The second is refused before
    any work; a killed scan's leftovers are removed by the next scan."""
    from core.study.store import open_study

    synthetic = _synthetic(tmp_path)
    study = open_study(tmp_path / "study")
    (study.path / ".scan-killed.tmp").mkdir()  # what a killed scan leaves
    with study.exclusive("scan"):  # a scan in progress (the lock is the operating system's: any process sees it)
        with pytest.raises(AssertionError, match="another --out"):
            _scan(tmp_path, synthetic, capsys)
        assert not (study.path / "summary.json").exists()
    _scan(tmp_path, synthetic, capsys)
    assert not list(study.path.glob(".scan-*.tmp"))


def test_a_damaged_embedding_cache_is_recomputed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A truncated cache file once raised BadZipFile; it is now recomputed (and the result is the same)."""
    for i in range(4):
        _png(tmp_path / "in" / f"{i}.png", i)
    det = str(Path(__file__).resolve().parents[1] / "checkpoints" / "demo-2d-detector")
    argv = ["embed", "--detector", det, "--input", str(tmp_path / "in"), "--cache-dir", str(tmp_path / "cache")]
    assert main([*argv, "--out", str(tmp_path / "a.npz"), "--device", "cpu"]) == 0
    (cached,) = (tmp_path / "cache").glob("*.npz")
    cached.write_bytes(cached.read_bytes()[:100])
    assert main([*argv, "--out", str(tmp_path / "b.npz"), "--device", "cpu"]) == 0, capsys.readouterr()
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert np.array_equal(a["vectors"], b["vectors"])
    assert "(cached)" not in capsys.readouterr().out


@pytest.mark.slow
def test_a_selftest_on_a_read_only_study_is_refused_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only study once failed the self-test only at its final write, after all the work. (The suite runs as
    root, whom permissions do not stop, so the folder is made read-only where Python touches it.)"""
    import errno

    from core.study import review

    study = _scan(tmp_path, _synthetic(tmp_path), capsys)
    touch = Path.touch

    def read_only(self: Path, *args: object, **kwargs: object) -> None:
        if self.parent == study:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        touch(self, *args, **kwargs)  # type: ignore[arg-type]

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the self-test loaded scans before checking that it can write its result")

    monkeypatch.setattr(Path, "touch", read_only)
    monkeypatch.setattr(review, "load_study_set", no_work)
    monkeypatch.setattr("core.study.selftest.load_study_set", no_work)
    assert main(["selftest", "--study", str(study), "--per-kind", "1"]) == 2
    assert "cannot write selftest.json into the study (Read-only file system)" in capsys.readouterr().err


def test_skip_bad_skips_an_unreadable_dicom_among_others(tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    from core.common.errors import MemoScopeError
    from core.io.load import load_set
    from core.io.preprocessing import PreprocessSpec
    from tests.test_patients import write_dicom

    rng = np.random.default_rng(0)
    for i in range(3):
        image = smooth_image(rng, (32, 32))
        write_dicom(tmp_path / "x" / f"{i}.dcm", (image - image.min()) / np.ptp(image) * 4000, "P", generate_uid())
    (tmp_path / "x" / "broken.dcm").write_bytes(b"not a DICOM file" * 20)
    with pytest.raises(MemoScopeError, match="broken.dcm"):
        load_set(tmp_path / "x", PreprocessSpec((32, 32)))
    loaded = load_set(tmp_path / "x", PreprocessSpec((32, 32)), skip_bad=True)
    assert len(loaded) == 3 and [Path(s.path).name for s in loaded.skipped] == ["broken.dcm"]


def test_a_killed_writers_temporary_folder_goes_with_the_next_write(tmp_path: Path) -> None:
    """Killed releases once left ``.out.*.tmp`` folders forever; one whose writer still runs is left alone."""
    import os

    from core.common.provenance import atomic_dir

    orphan = tmp_path / ".out.99999999.k3j2.tmp"  # no process has this ID (above Linux's pid_max)
    orphan.mkdir()
    running = tmp_path / f".out.{os.getpid()}.a1b2.tmp"
    running.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f.txt").write_text("x")
    assert not orphan.exists() and running.exists() and (tmp_path / "out" / "f.txt").is_file()


def test_report_and_release_on_the_committed_demo_write_nothing_into_the_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's own example once wrote pseudonyms.csv and report.html into studies/demo-2d (the session fixture
    checks that no committed file changed; this checks that nothing new appeared either)."""
    demo = Path(__file__).resolve().parents[1] / "studies" / "demo-2d"
    before = sorted(p.name for p in demo.iterdir())
    assert main(["report", "--study", str(demo)]) == 0
    assert main(["release", "--study", str(demo), "--out", str(tmp_path / "rel")]) == 0
    assert sorted(p.name for p in demo.iterdir()) == before
    err = capsys.readouterr().err
    assert "committed demo study: working on its per-user copy" in err
    copy = tmp_path / "home" / "studies" / "demo-2d"
    assert (copy / "report.html").is_file() and (copy / "pseudonyms.csv").is_file()


@pytest.mark.slow
def test_a_full_disk_during_release_or_report_is_a_clear_error_that_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk once gave a traceback (exit 1). Now: exit 2, the file and the system's words, nothing half
    written. (The disk fills where the release copies its third sample and where the report is written.)"""
    import errno

    from core.study import release, report

    study = _scan(tmp_path, _synthetic(tmp_path), capsys)
    copies = []

    def copy_until_full(source: Path, target: Path) -> None:
        copies.append(target)
        if len(copies) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        shutil.copyfile(source, target)

    def write_nothing(path: object, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(release.shutil, "copy2", copy_until_full)
    assert main(["release", "--study", str(study), "--out", str(tmp_path / "rel"), "--threshold", "1"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device; free space" in err and "Traceback" not in err
    assert not (tmp_path / "rel").exists() and not list(tmp_path.glob(".rel.*"))
    monkeypatch.setattr(report, "atomic_write_text", write_nothing)
    assert main(["report", "--study", str(study), "--out", str(tmp_path / "r.html")]) == 2
    assert "r.html: No space left on device" in capsys.readouterr().err and not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_options_a_given_detector_ignores_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--size, --batch-size and --detector-epochs with --detector once changed nothing without a word."""
    det = str(Path(__file__).resolve().parents[1] / "checkpoints" / "demo-2d-detector")
    _scan(tmp_path, _synthetic(tmp_path), capsys, "--detector", det, "--batch-size", "8")
    err = capsys.readouterr().err
    assert "warning: --detector-epochs, --batch-size, --size ignored: --detector" in err, err


def test_a_scan_without_a_detector_trains_nothing_finds_an_exact_copy_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--detector none``: no training; blurred pixels retrieve, verification decides, and the summary and the
    report say that no detector was trained."""
    from core.detect.detector import load_detector
    from core.study.results import ScanResults

    for i in range(1, 4):
        _png(tmp_path / "synthetic" / f"s{i}.png", 300 + i)
    _png(tmp_path / "synthetic" / "s0.png", 3)  # the training image of seed 3 (train/P1/3.png), copied exactly
    study = _scan(tmp_path, tmp_path / "synthetic", capsys, "--detector", "none")
    results = ScanResults.open(study)
    assert results.summary.detector.config.arch == "pixels" and results.summary.detector.config.embed_dim == 256
    detector = load_detector(study / "detector")
    assert sum(p.numel() for p in detector.model.parameters()) == 0 and detector.history == []
    assert detector.provenance["schedule"]["steps_trained"] == 0
    flagged = {p.synthetic_id for p in results.pairs() if p.nearest and p.is_copy(results.summary.tau)}
    assert flagged == {"s0.png"}, flagged
    assert main(["report", "--study", str(study), "--out", str(tmp_path / "r.html")]) == 0
    report = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "no detector was trained for this scan" in report and "--detector none" in report  # method and caveat
    assert results.summary.detector.choice.startswith("No detector was trained for this scan (--detector none)")


def test_a_training_budget_too_small_for_the_detector_scans_with_none_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--train-budget: the training's second evaluation projects its time; over the budget, no detector is kept and
    the summary, the caveats and the report say why (0.00001 min = 0.6 ms: no machine trains a step and a
    validation pass that fast; 3 epochs of one step each, so that there is a run left to project)."""
    from core.study.caveats import CaveatKey, caveats
    from core.study.results import ScanResults

    for i in range(4):
        _png(tmp_path / "synthetic" / f"s{i}.png", 300 + i)
    study = _scan(tmp_path, tmp_path / "synthetic", capsys, "--train-budget", "0.00001", "--detector-epochs", "3")
    results = ScanResults.open(study)
    detector = results.summary.detector
    assert detector.config.arch == "pixels"
    assert "more than the 1e-05 min budget (--train-budget)" in detector.choice, detector.choice
    found = caveats(results.summary, results.summary.metrics, results.pairs())
    assert [c.text for c in found if c.key == CaveatKey.NO_DETECTOR] == [
        f"{detector.choice} A copy changed so much that its blurred pixels no longer resemble its source can be "
        "missed; the contrastive detector of Dar et al. is one option away (rescan without --detector none or with "
        "a larger --train-budget)."
    ]
    # a budget the training fits in trains the detector as usual
    again = _scan(tmp_path / "roomy", tmp_path / "synthetic", capsys, "--train-budget", "600")
    assert ScanResults.open(again).summary.detector.config.arch == "resnet18"
    assert ScanResults.open(again).summary.detector.choice == ""
    argv = ["scan", "--train", "t", "--val", "v", "--synthetic", "s", "--out", "o", "--detector", "none"]
    assert main([*argv, "--arch", "resnet18"]) == 2
    assert "--detector none and --arch resnet18 disagree" in capsys.readouterr().err


def test_the_privacy_tests_of_a_study_without_a_checkpoint_answer_two_questions_and_say_why_not_the_third(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``privacy --study``: C_T, authenticity and the nearest-record share from the scan's embeddings; membership
    needs the checkpoint, and the summary, the report and the CLI say so; the result belongs to its scan."""
    from core.study.privacy import NO_CHECKPOINT, PRIVACY_PATIENTS, read_privacy

    for i in range(12):
        _png(tmp_path / "synthetic" / f"s{i}.png", 300 + i)
    study = _scan(tmp_path, tmp_path / "synthetic", capsys)
    assert main(["privacy", "--study", str(study), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    report = read_privacy(study)
    assert report is not None and report.membership is None and report.membership_note == NO_CHECKPOINT
    assert NO_CHECKPOINT in out and "C_T = " in out and report.ct.cells_total == 1  # 12 samples: one cell
    assert report.authenticity.n == 12 and 0 <= report.nearest_record.value <= 1
    assert not (study / PRIVACY_PATIENTS).read_text(encoding="utf-8").strip().splitlines()[1:]  # no patients scored
    assert main(["report", "--study", str(study), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Three questions" in page and "records no checkpoint" in page
