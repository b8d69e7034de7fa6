"""Every page of the app on the committed demo study (Streamlit AppTest, no browser)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.common.devices import resolve_device
from core.study import jobs
from core.study.results import read_summary, write_summary
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
DEMO_2D = REPO / "studies" / "demo-2d"
needs_demo = pytest.mark.skipif(not (DEMO_2D / "summary.json").is_file(), reason="demo not built (make demo)")


def _app(study: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    if study:
        at.session_state["study"] = study
    return at.run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_without_studies_the_app_says_how_to_make_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    at = _app()
    _ok(at)
    assert any("make demo" in c.value for c in at.caption)
    assert "Open or create a study" in at.info[0].value


def test_sidebar_offers_the_new_study_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # AppTest reruns only the page script after the first run, so the form's submit handler
    # (core.study.store.create_study) is tested in test_study.py and in the browser test.
    monkeypatch.chdir(tmp_path)
    at = _app()
    assert {"new_name", "new_train", "new_val", "new_checkpoint", "new_synthetic"} <= {t.key for t in at.text_input}


@needs_demo
def test_overview_opens_the_demo_with_its_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    at = _app()
    _ok(at)
    assert at.selectbox(key="study_select").value == "demo-2d"
    assert not Path(at.session_state["study"]).is_relative_to(REPO)  # a per-user working copy, never the repo
    summary = read_summary(DEMO_2D)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Threshold"] == f"{summary.tau:.3f}"
    assert metrics["Copies"] == f"{summary.copies.value:.1%}"
    assert metrics["Memorized"] == f"{summary.memorized.value:.1%}"


@needs_demo
def test_calibrate_slider_moves_the_threshold_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    study = str(Path("studies") / "demo-2d")
    at = _app(study)
    at.switch_page("views/calibrate.py").run()
    _ok(at)
    summary = read_summary(DEMO_2D)
    metrics = {m.label: m.value for m in at.metric}
    # at the scan's own rule and percentile the live counts equal the scan's
    assert metrics["Threshold"] == f"{summary.tau:.3f}"
    assert metrics["Copies"] == f"{summary.copies.value:.1%}"  # percentages, as on the Overview
    assert metrics["Memorized"] == f"{summary.memorized.value:.1%}"
    at.slider(key=f"pct::{study}").set_value(60.0).run()
    _ok(at)
    lower = {m.label: m.value for m in at.metric}
    assert float(lower["Threshold"]) < summary.tau
    assert float(lower["Copies"].rstrip("%")) >= 100 * summary.copies.value - 0.05
    at.radio(key=f"rule::{study}").set_value("fixed").run()
    at.slider(key=f"fixed::{study}").set_value(1.0).run()
    _ok(at)
    assert {m.label: m.value for m in at.metric}["Copies"] == "0.0%"
    assert len(at.get("plotly_chart")) == 1  # distributions and curves on one shared threshold axis


@needs_demo
def test_review_worklist_navigation_window_and_compare_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    at = _app(str(Path("studies") / "demo-2d"))
    at.switch_page("views/review.py").run()
    _ok(at)
    at.toggle(key=f"only::{Path('studies') / 'demo-2d'}").set_value(False).run()
    first = [m.value for m in at.markdown if m.value.startswith("**1 /")]
    assert first and "verified score" in first[0] and "pixel r" in first[0]  # the demo uses the verified call
    images = len(at.get("image"))
    assert images >= 3  # synthetic | training | difference (+ neighbours)
    at.button(key="next").click().run()
    assert any(m.value.startswith("**2 /") for m in at.markdown)
    at.selectbox(key="window_preset").select("percentile full range").run()
    at.radio(key="compare_mode").set_value("flicker").run()
    _ok(at)
    at.radio(key="compare_mode").set_value("checkerboard").run()
    at.slider(key="tiles").set_value(4).run()
    _ok(at)


@needs_demo
def test_review_3d_has_three_synchronised_planes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    study = Path("studies") / "demo-3d"
    at = _app(str(study))
    at.switch_page("views/review.py").run()
    at.toggle(key=f"only::{study}").set_value(False).run()
    _ok(at)
    assert [s.label for s in at.slider] == ["axial slice"]  # one plane first: the pair fits the screen
    at.slider(key="slice_axial").set_value(3).run()
    at.selectbox(key="plane_3d").set_value("all three").run()
    assert [s.label for s in at.slider] == ["axial slice", "coronal slice", "sagittal slice"]
    assert at.slider(key="slice_axial").value == 3  # the position survives the change of view
    at.radio(key="compare_mode_3d").set_value("flicker").run()
    _ok(at)
    assert at.slider(key="slice_axial").value == 3
    # a plane's position survives being hidden (it once fell back to the middle)
    at.selectbox(key="plane_3d").set_value("coronal").run()
    at.slider(key="slice_coronal").set_value(4).run()
    at.selectbox(key="plane_3d").set_value("axial").run()
    at.selectbox(key="plane_3d").set_value("coronal").run()
    _ok(at)
    assert at.slider(key="slice_coronal").value == 4


@needs_demo
@pytest.mark.parametrize("study", ["demo-2d", "demo-3d"])
def test_compare_starts_with_the_studies_of_the_same_dimensions(study: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    at = _app(str(Path("studies") / study))
    at.switch_page("views/compare.py").run()
    _ok(at)
    chosen = at.multiselect[0].value
    dims = read_summary(REPO / "studies" / study).preprocessing.spatial_dims
    assert study in chosen and len(chosen) >= 2
    assert all(read_summary(REPO / "studies" / name).preprocessing.spatial_dims == dims for name in chosen)


@needs_demo
def test_detector_page_shows_the_loss_curve_and_refuses_a_bad_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    at = _app(str(Path("studies") / "demo-2d"))
    at.switch_page("views/detector.py").run()
    _ok(at)
    assert len(at.get("plotly_chart")) == 1
    assert at.selectbox[0].value == "convres" and at.number_input[0].value == 100  # the form starts from the study's
    at.text_input[0].input("no/such/detector")
    at.button[1].click().run()  # "Use this detector"
    assert "no/such/detector" in at.error[0].value


@pytest.mark.slow
@needs_demo
def test_generate_page_runs_a_job_into_a_new_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    study = tmp_path / "study"
    shutil.copytree(DEMO_2D, study, ignore=shutil.ignore_patterns("synthetic", "jobs"))
    (study / "study.json").write_text(
        json.dumps({"train": "data/demo/2d/manifest.csv", "val": "data/demo/2d/manifest.csv"})
    )
    at = _app(str(study))
    at.switch_page("views/generate.py").run()
    _ok(at)
    assert at.selectbox(key="generate_device").options[:2] == ["auto", "cpu"]
    # the checkpoint's provenance note is a note, not a warning (it was drawn as one)
    assert any("MemoScope demo" in i.value for i in at.info) and not any(
        "MemoScope demo" in w.value for w in at.warning
    )
    # fp16 is offered where the device runs it (a GPU), never on a CPU
    options = at.selectbox(key="generate_precision").options
    assert ("fp16" in options) == (resolve_device("auto").type != "cpu") and "fp32" in options
    at.selectbox[0].select("other path...").run()
    at.text_input[0].input("no/such/checkpoint").run()
    assert "no/such/checkpoint" in at.error[0].value
    at.selectbox[0].select_index(0).run()
    at.number_input[0].set_value(2)  # samples
    at.number_input[1].set_value(2)  # steps
    at.selectbox(key="generate_device").set_value("cpu")
    out = next(t for t in at.text_input if t.label == "Output folder")
    assert Path(out.value).parent == study / "generated"  # a new folder by default, not the study's own samples
    mine = study / "generated" / "mine"
    clock = iter(range(10**6))  # every rerun sees another time: the folder typed must survive the submitting rerun
    monkeypatch.setattr(time, "strftime", lambda *_: f"t{next(clock)}")
    out.input(str(mine))
    at.button[0].click().run()  # Start generation
    _ok(at)
    job = jobs.list_jobs(study)[0]
    wait_until(lambda: not jobs.read_job(jobs.job_file(study, job.id)).active, 120, "generate job", interval=0.3)
    assert jobs.read_job(jobs.job_file(study, job.id)).status == "done"
    at.run()
    written = list((study / "generated").rglob("*.png"))
    assert sorted(p.parent for p in written) == [mine, mine] and not (study / "synthetic").exists()
    assert next(t for t in at.text_input if t.label == "Output folder").value != str(mine)  # the next run: new
    record = json.loads((mine / "generation.json").read_text())
    assert record["device"] == "cpu" and record["compile"] is False  # the form's choice reaches the job
    assert any("2 samples in" in c.value for c in at.caption)


def _copy_demo(tmp_path: Path) -> Path:
    study = tmp_path / "study"
    shutil.copytree(DEMO_2D, study, ignore=shutil.ignore_patterns("jobs", "report.*"))
    return study


@pytest.mark.slow
@needs_demo
def test_verdicts_are_recorded_resumed_and_agreement_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.study import verdicts

    monkeypatch.chdir(REPO)
    study = _copy_demo(tmp_path)
    at = _app(str(study))
    at.switch_page("views/review.py").run()
    at.toggle(key=f"only::{study}").set_value(False).run()
    at.selectbox(key=f"reviewer_pick::{study}").set_value("+ add a reviewer").run()
    at.text_input(key="reviewer_input").input("rater one")
    at.button[[b.label for b in at.button].index("Add and review as this name")].click().run()
    assert at.session_state["reviewer"] == "rater one" and at.query_params["reviewer"] in ("rater one", ["rater one"])
    # the chooser shows who you are now, and the new-name form is gone
    assert at.selectbox(key=f"reviewer_pick::{study}").value == "rater one"
    assert "Add and review as this name" not in [b.label for b in at.button]
    for verdict in ("copy", "not_copy", "unsure"):
        at.button(key=f"verdict_{verdict}").click().run()
        _ok(at)
    assert sorted(d.verdict for d in verdicts.decisions(study, "rater one")) == ["copy", "not_copy", "unsure"]
    assert any(c.value.startswith("Recording as **rater one**: 3/") for c in at.caption)
    # a new session (a reload with the same URL) resumes as this reviewer, at the first pair not yet judged
    again = AppTest.from_file(APP, default_timeout=120)
    again.session_state["study"] = str(study)
    again.query_params["reviewer"] = "rater one"
    again.run()
    again.switch_page("views/review.py").run()
    assert again.selectbox(key=f"reviewer_pick::{study}").value == "rater one"
    again.toggle(key=f"only::{study}").set_value(False).run()
    assert any(m.value.startswith("**4 /") for m in again.markdown)
    at.switch_page("views/agreement.py").run()
    at.radio(key="agreement_mode").set_value("open").run()
    _ok(at)
    assert len(at.dataframe) >= 1 and len(at.get("plotly_chart")) == 1


@needs_demo
def test_blinded_mode_hides_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    study = _copy_demo(tmp_path)
    at = _app(str(study))
    at.session_state["reviewer"] = "rater two"
    at.switch_page("views/review.py").run()
    at.toggle(key=f"blind::{study}").set_value(True).run()
    _ok(at)
    header = next(m.value for m in at.markdown if m.value.startswith("**") and " / " in m.value)
    assert "similarity" not in header and "copy" not in header and "p-value" not in header
    assert "Top training neighbours" not in [s.value for s in at.subheader]
    at.button(key="verdict_copy").click().run()
    from core.study import verdicts

    assert verdicts.decisions(study, "rater two", "blinded")[0].verdict == "copy"


@needs_demo
def _release_button(at: AppTest):  # noqa: ANN202 - the form's submit button
    return next(b for b in at.button if b.label == "Write release")


@pytest.mark.slow
def test_report_page_builds_html_and_release_refuses_a_full_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    study = _copy_demo(tmp_path)
    at = _app(str(study))
    at.switch_page("views/report.py").run()
    at.button(key="build_html").click().run()
    _ok(at)
    assert (study / "report.html").is_file() and len(at.get("download_button")) >= 1
    at.text_input(key="release_out").input(str(tmp_path / "elsewhere"))  # a typed path may not write elsewhere
    _release_button(at).click().run()
    assert any("Release name" in e.value for e in at.error) and not (tmp_path / "elsewhere").exists()
    name = f"test-{uuid.uuid4().hex[:12]}"  # two runs on one checkout never share (or remove) each other's folder
    full = REPO / "releases" / name
    try:
        full.mkdir(parents=True)
        (full / "x.txt").write_text("keep me")
        at.text_input(key="release_out").input(name)
        _release_button(at).click().run()
        assert any("not empty" in e.value for e in at.error) and (full / "x.txt").read_text() == "keep me"
        shutil.rmtree(full)
        _release_button(at).click().run()
        assert at.success and (full / "release.json").is_file()
    finally:
        shutil.rmtree(full, ignore_errors=True)


@needs_demo
def test_a_saved_threshold_sticks_across_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibrate saves the study threshold (who, when); Review, Agreement and Report use it and say so."""
    from core.study import verdicts
    from core.study.results import ScanResults

    monkeypatch.chdir(REPO)
    study = _copy_demo(tmp_path)
    at = _app(str(study))
    at.switch_page("views/calibrate.py").run()
    at.slider(key=f"pct::{study}").set_value(85.0).run()
    tau = float({m.label: m.value for m in at.metric}["Threshold"])
    at.text_input(key=f"save_by::{study}").input("Dr Ada").run()
    at.button(key="save_threshold").click().run()
    _ok(at)
    saved = verdicts.study_threshold(study, ScanResults.open(study))
    assert saved.set_by == "Dr Ada" and f"{saved.value:.3f}" == f"{tau:.3f}" and saved.percentile == 85.0
    at.switch_page("views/review.py").run()
    _ok(at)
    assert any("saved by Dr Ada" in c.value for c in at.caption)
    at.switch_page("views/calibrate.py").run()
    assert {m.label: m.value for m in at.metric}["Threshold"] == f"{tau:.3f}"  # Calibrate starts from it
    # passing through "fixed" keeps the percentile (the slider once fell back to 50 when drawn again)
    at.radio(key=f"rule::{study}").set_value("fixed").run()
    at.radio(key=f"rule::{study}").set_value(saved.rule).run()
    assert at.slider(key=f"pct::{study}").value == 85.0
    assert {m.label: m.value for m in at.metric}["Threshold"] == f"{tau:.3f}"
    # ways back after trying thresholds (there was none): the scan's own threshold, then the saved one
    at.radio(key=f"rule::{study}").set_value("fixed").run()
    at.slider(key=f"fixed::{study}").set_value(0.2).run()
    at.button(key="reset::Reset to the scan's threshold").click().run()
    _ok(at)
    scanned = read_summary(study).threshold
    assert {m.label: m.value for m in at.metric}["Threshold"] == f"{scanned.value:.3f}"
    assert at.radio(key=f"rule::{study}").value == scanned.rule
    at.button(key="reset::Back to the saved threshold").click().run()
    assert {m.label: m.value for m in at.metric}["Threshold"] == f"{tau:.3f}"
    assert at.slider(key=f"pct::{study}").value == 85.0
    assert verdicts.study_threshold(study, ScanResults.open(study)).value == saved.value  # nothing saved by a reset
    at.switch_page("views/report.py").run()
    assert any("saved by Dr Ada" in c.value for c in at.caption)
    at.switch_page("views/overview.py").run()
    _ok(at)
    assert {m.label: m.value for m in at.metric}["Threshold"] == f"{tau:.3f}"
    assert any("saved by Dr Ada" in c.value for c in at.caption)


HEAVY = ("torch", "monai", "faiss", "scipy", "sklearn", "skimage", "ray")
FIRST_RENDER = """
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({app!r}, default_timeout=120)
at.session_state["study"] = {study!r}
at.run()
assert not at.exception, [e.value for e in at.exception]
assert [m.label for m in at.metric][:2] == ["Threshold", "Memorized"], [m.label for m in at.metric]
print(sorted({{name.split(".")[0] for name in sys.modules}} & set({heavy!r})))
"""


def test_first_page_imports_no_heavy_library(tmp_path: Path) -> None:
    """The Overview renders from the study files alone: torch, MONAI, faiss, SciPy and friends are imported only by
    the pages and jobs that compute (issue 13: the first page within 5 s of the server on 2 cores)."""
    study = tmp_path / "demo-2d"
    shutil.copytree(DEMO_2D, study, ignore=shutil.ignore_patterns("jobs"))
    code = FIRST_RENDER.format(app=str(APP), study=str(study), heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


@needs_demo
def test_a_conditional_study_shows_each_samples_values_and_copies_per_band(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committed 2D study, as if a conditional LDM had made its samples (an age value each)."""
    monkeypatch.chdir(REPO)
    study = tmp_path / "study"
    shutil.copytree(DEMO_2D, study, ignore=shutil.ignore_patterns("jobs"))
    samples = study / "synthetic"
    record = json.loads((samples / "generation.json").read_text())
    (samples / "generation.json").write_text(json.dumps({**record, "conditioning": {"names": ["age"]}}))
    lines = (samples / "manifest.csv").read_text().splitlines()
    rows = [f"{line},{(i % 4) / 4}" for i, line in enumerate(lines[1:])]
    (samples / "manifest.csv").write_text("\n".join([lines[0] + ",age", *rows]) + "\n")
    summary = read_summary(study)  # the study now reads its samples from the copy (recorded as a scan records it)
    write_summary(
        study,
        summary.replace(
            inputs={**summary.inputs, "synthetic": summary.inputs["synthetic"].replace(source=str(samples))}
        ),
    )

    at = _app(str(study))
    _ok(at)
    assert any(h.value == "Copies by conditioning" for h in at.subheader)
    bands = next(d.value for d in at.dataframe if "band" in d.value.columns)
    assert list(bands["band"]) == ["age = 0", "age = 0.25", "age = 0.5", "age = 0.75"]
    assert bands["copies"].sum() == read_summary(study).copies.count
    at.switch_page("views/review.py").run()
    _ok(at)
    assert any(c.value.startswith("generated with age ") for c in at.caption)


@needs_demo
def test_presentation_mode_shows_no_training_file_or_patient_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the switch on, the Review work list and the Agreement audit trail once showed `mni152/axial009.png` and
    `mni152`: tables are drawn on a canvas, so this reads every page's text and every data frame's cells."""
    from core.study import verdicts
    from core.study.results import ScanResults

    monkeypatch.chdir(REPO)
    study = _copy_demo(tmp_path)
    scan = ScanResults.open(study)
    pairs = scan.pairs()
    first = pairs[0]
    verdicts.record(study, "rater", scan.pair_ref(first.synthetic_id, first.train_id), "copy")
    names = {p.train_id for p in pairs} | {p.patient_id for p in pairs}
    at = _app(str(study))
    at.session_state["presentation"] = True
    at.session_state["reviewer"] = "rater"
    leaks: list[str] = []
    for page in ("views/overview.py", "views/review.py", "views/agreement.py", "views/calibrate.py"):
        at.switch_page(page).run()
        _ok(at)
        if page.endswith("review.py"):
            at.toggle(key=f"only::{study}").set_value(False).run()
        if page.endswith("agreement.py"):
            at.radio(key="agreement_mode").set_value("open").run()
        texts = [e.value for kind in ("markdown", "caption", "text", "warning", "info") for e in getattr(at, kind)]
        cells = [str(v) for frame in at.dataframe for v in frame.value.astype(str).to_numpy().ravel()]
        leaks += [f"{page}: {n}" for n in names if any(n in t for t in texts + cells)]
    assert not leaks, sorted(leaks)[:8]


@needs_demo
def test_the_to_do_list_follows_what_reviewers_did(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It once kept "Review the 127 flagged copies" after every copy was judged (and said "Review the 0 flagged
    copies" on a study without any), and "Check the threshold" after a reviewer had saved one."""
    from core.detect.metrics import Threshold, ThresholdRule
    from core.study import verdicts
    from core.study.results import ScanResults, copies

    monkeypatch.chdir(REPO)
    study = _copy_demo(tmp_path)
    scan = ScanResults.open(study)
    flagged = copies(scan.pairs(), scan.summary.tau)

    def todo() -> list[str]:
        at = _app(str(study))
        _ok(at)
        return [m.value for m in at.markdown if m.value.startswith(("Review the", "Check the threshold"))]

    assert todo() == [
        "Check the threshold against the null distributions.",
        f"Review the {len(flagged)} flagged copies no reviewer has judged yet.",
    ]
    for pair in flagged[:-1]:
        verdicts.record(study, "ana", scan.pair_ref(pair.synthetic_id, pair.train_id), "copy")
    assert todo()[-1] == "Review the 1 flagged copies no reviewer has judged yet."
    last = flagged[-1]
    verdicts.record(study, "ana", scan.pair_ref(last.synthetic_id, last.train_id), "not_copy")
    verdicts.save_threshold(study, "ana", scan, Threshold(ThresholdRule.FIXED, None, scan.summary.tau, 0))
    assert todo() == []


@needs_demo
def test_one_number_has_one_interval_on_every_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibrate once gave the memorized fraction a Wilson interval over 147 scans (97.5-100 %) while the Overview
    and the report gave 43.9-100 % over 3 patients: the same quantity now has the same interval and method."""
    from core.study.results import read_summary

    monkeypatch.chdir(REPO)
    summary = read_summary(DEMO_2D)
    mem, cop = summary.memorized, summary.copies
    at = _app()
    at.switch_page("views/calibrate.py").run()
    _ok(at)
    caption = next(c.value for c in at.caption if c.value.startswith("Memorized training"))
    for f in (mem, cop):
        assert f"95 % CI {f.low:.1%} to {f.high:.1%}, {f.method}" in caption, (f, caption)
